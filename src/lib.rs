//! sparkvisor: PID 1 for a Spark application in a Kubernetes pod.
//!
//! See ARCHITECTURE.md for the map of modules, the data flow and the
//! invariants each module keeps.

pub mod artifacts;
pub mod attempt;
pub mod beat;
pub mod cgroup;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod error;
pub mod eventlog;
pub mod exit;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod http;
pub mod httpclient;
pub mod jvm;
pub mod kube;
pub mod listeners;
pub mod logging;
pub mod observe;
pub mod preflight;
pub mod redact;
pub mod replica;
pub mod s3;
pub mod sizing;
pub mod spark_version;
pub mod status;
pub mod stop;
pub mod submit;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;

pub use error::{Error, Result};
