//! All integration tests in one binary: one link step, faster CI.

mod bridge;
mod call;
mod chaos;
mod cli;
mod client_conformance;
mod config_input;
mod conformance;
mod first_run;
mod fuzz_config;
mod gateway;
mod header_proxy;
mod kube_fake;
mod kubernetes;
mod loader;
mod naming;
mod oauth;
mod plan;
mod remote;
mod render;
mod service;
mod supervision;
mod support;
mod task_runner;
