//! Checkpoint awareness: the local Structured Streaming checkpoint (reading,
//! progress and stall decisions, repair of torn trailing files, `inspect`)
//! and its replica in S3 (snapshot, manifests, replication, restore).
//! Each submodule owns one job; see its own doc for the invariants.

pub mod artifacts;
pub mod inspect;
pub mod layout;
pub mod logfile;
pub mod manifest;
pub mod progress;
pub mod repair;
pub mod replicate;
pub mod restore;
pub mod s3client;
pub mod s3inspect;
pub mod snapshot;

pub use inspect::{Inspection, inspect};
pub use layout::LayoutError;
pub use progress::{Activity, QueryProgress, assess, refresh};
pub use repair::{
    RepairError, RepairPlan, RepairReport, default_quarantine_dir, plan_root, repair,
};
