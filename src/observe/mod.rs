//! Tasks that watch the running app from outside and report what they see:
//! Spark's REST API (`spark_api`), the checkpoint's progress and stalls
//! (`progress`), and each streaming query's progress as Spark writes it to
//! its event log (`telemetry`). They read the current attempt from the supervisor's
//! channel, publish typed values for the other tasks, and copy what people
//! and probes need into `crate::status`. They never start, signal or stop
//! anything.

pub mod progress;
pub mod spark_api;
pub mod telemetry;
