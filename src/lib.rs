//! sparkvisor: PID 1 for a Spark application in a Kubernetes pod.
//!
//! See ARCHITECTURE.md for the map of modules, the data flow and the
//! invariants each module keeps.

pub mod artifacts;
pub mod attempt;
pub mod cgroup;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod error;
pub mod eventlog;
pub mod exit;
pub mod http;
pub mod httpclient;
pub mod jvm;
pub mod kube;
pub mod logging;
pub mod observe;
pub mod preflight;
pub mod redact;
pub mod replica;
pub mod s3;
pub mod sizing;
pub mod status;
pub mod submit;
pub mod supervisor;
pub mod telemetry;

pub use error::{Error, Result};
