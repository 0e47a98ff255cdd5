//! Checkpoint awareness: reading a Structured Streaming checkpoint, progress
//! and stall decisions, repair of torn trailing files, `inspect` reports.
//! Each submodule owns one job; see its own doc for the invariants.

pub mod inspect;
pub mod layout;
pub mod logfile;
pub mod progress;
pub mod repair;

pub use inspect::{Inspection, inspect};
pub use layout::LayoutError;
pub use progress::{Activity, QueryProgress, assess, refresh};
pub use repair::{
    RepairError, RepairPlan, RepairReport, default_quarantine_dir, plan_root, repair,
};
