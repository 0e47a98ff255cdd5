//! Streaming query telemetry as data: Spark's `StreamingQueryProgress`
//! read into typed values (`progress`) and the "falling behind" decision
//! (`behind`).
//!
//! Invariants: pure — no I/O, no clock (times come from the progress
//! events themselves); whatever Spark writes that these parsers do not
//! understand becomes `None`, never a panic. The task that feeds them
//! lives in `crate::observe::telemetry`.

pub mod behind;
pub mod progress;

pub use behind::{Sample, Verdict};
pub use progress::{Event, Progress};
