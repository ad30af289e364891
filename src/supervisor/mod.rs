//! Supervising server instances (DESIGN 4.3): processes, their output, and the actor that owns each instance.

pub mod instance;
pub mod logs;
pub mod process;
