//! All integration tests in one binary: one link step, faster CI.

mod task_runner;
