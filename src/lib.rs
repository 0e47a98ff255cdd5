//! sparkvisor: PID 1 for a Spark application in a Kubernetes pod.
//!
//! See ARCHITECTURE.md for the map of modules and the data flow.

pub mod cgroup;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod error;
pub mod http;
pub mod jvm;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod redact;
pub mod sizing;
pub mod state;
pub mod submit;
pub mod supervisor;

pub use error::{Error, Result};
