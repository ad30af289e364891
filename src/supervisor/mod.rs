//! Supervising server instances (DESIGN 4.3): processes, backoff, lifecycle.

pub mod backoff;
pub mod instance;
pub mod logs;
pub mod process;
