//! The Structured Streaming checkpoint on local disk: its file formats
//! (`logfile`), reading a root of one or more queries (`layout`),
//! per-query progress and the stall decision (`progress`), repair of torn
//! trailing files (`repair`) and the `checkpoint inspect` report
//! (`inspect`). Nothing here talks to S3 or knows about the supervisor;
//! the replica lives in `crate::replica`. Each submodule's doc states its
//! invariants.

pub mod inspect;
pub mod layout;
pub mod logfile;
pub mod progress;
pub mod repair;

pub use inspect::{Inspection, inspect};
pub use layout::LayoutError;
pub use progress::{Activity, QueryProgress, assess, refresh};
pub use repair::{
    RepairError, RepairPlan, RepairReport, default_quarantine_dir, plan_root, plan_root_beating,
    repair, repair_beating,
};
