//! The repair step before each start: torn trailing checkpoint files are
//! quarantined and temp files removed (`checkpoint.repair`), or only
//! reported when repair is off.
//!
//! Invariant: runs only while no Spark process exists (the loop calls it
//! between attempts), off the async threads, as a `repair` step whose
//! scan beats liveness.

use std::path::PathBuf;
use std::time::SystemTime;

use tracing::{error, info, warn};

use crate::beat::StepKind;
use crate::checkpoint;
use crate::config::CheckpointConfig;
use crate::status::Shared;

/// Before a start: repairs torn trailing files (`checkpoint.repair`), or
/// reports what a repair would do. Returns the number of repairs made.
pub async fn prepare(shared: &Shared, cfg: &CheckpointConfig) -> u64 {
    let Some(root) = cfg.dir.clone() else {
        return 0;
    };
    // A scan of a large checkpoint takes a while: liveness follows it.
    let step = shared.begin(StepKind::Repair);
    let beat = step.beat();
    if !cfg.repair {
        let dir = root.clone();
        match tokio::task::spawn_blocking(move || checkpoint::plan_root_beating(&dir, &beat)).await
        {
            Ok(Ok(plan)) if !plan.is_empty() => {
                for action in &plan.actions {
                    warn!(
                        ?action,
                        "checkpoint.repair is off: leaving a torn or leftover checkpoint file as it is; Spark may fail on it"
                    );
                }
            }
            Ok(Err(e)) => warn!(dir = %root.display(), error = %e, "cannot check the checkpoint"),
            _ => {}
        }
        return 0;
    }
    let quarantine: Option<PathBuf> = cfg.quarantine_dir.clone();
    let dir = root.clone();
    let result = tokio::task::spawn_blocking(move || {
        checkpoint::repair_beating(&dir, quarantine.as_deref(), SystemTime::now(), &beat)
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            for path in &report.removed {
                info!(path = %path.display(), "removed a temp file of an interrupted checkpoint write");
            }
            for q in &report.quarantined {
                for f in &q.files {
                    warn!(
                        from = %f.from.display(),
                        to = %f.to.display(),
                        reason = %q.reason,
                        "quarantined a torn checkpoint file"
                    );
                }
            }
            let n = report.repairs();
            shared.metrics.checkpoint_repairs_total.inc_by(n);
            n
        }
        Ok(Err(e)) => {
            error!(dir = %root.display(), error = %e, "checkpoint repair failed; starting Spark on the checkpoint as it is");
            0
        }
        Err(_) => 0,
    }
}
