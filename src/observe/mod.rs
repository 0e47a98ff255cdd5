//! Tasks that watch the running app from outside and report what they see:
//! Spark's REST API (`spark_api`) and the checkpoint's progress and stalls
//! (`progress`). They read the current attempt from the supervisor's
//! channel, publish typed values for the other tasks, and copy what people
//! and probes need into `crate::status`. They never start, signal or stop
//! anything.

pub mod progress;
pub mod spark_api;
