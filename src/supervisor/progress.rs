//! Watching the checkpoint while sparkvisor runs: per-query progress into
//! `/status` and the `sparkvisor_checkpoint_*` metrics, and stall events for
//! the supervisor loop. Also the repair step before each start.
//!
//! Invariants: a refresh lists only `offsets/` and `commits/` (never the
//! state store), off the async threads; stalls are judged only while the
//! app runs, from when Spark's REST API first answered in the current
//! attempt (a JVM still starting is not stalled), and each event names
//! its attempt so the loop can ignore stale ones; repair runs only while no
//! Spark process exists (the loop calls it between attempts).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::checkpoint::{self, Activity};
use crate::config::CheckpointConfig;
use crate::state::{Phase, Shared};

/// A batch planned but not committed for longer than `stall_timeout`.
#[derive(Clone, Debug)]
pub struct Stall {
    pub attempt: u32,
    pub query: String,
    pub batch: u64,
    pub age: Duration,
}

/// Refreshes progress every `poll_interval` until the runtime stops.
pub async fn watch(shared: Arc<Shared>, cfg: CheckpointConfig, stalls: mpsc::Sender<Stall>) {
    let Some(root) = cfg.dir.clone() else {
        return;
    };
    let stall_timeout = cfg.stall_timeout.get();
    let mut tick = tokio::time::interval(cfg.poll_interval.get().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let dir = root.clone();
        let result = tokio::task::spawn_blocking(move || checkpoint::refresh(&dir)).await;
        let queries = match result {
            Ok(Ok(q)) => {
                warned = false;
                q
            }
            Ok(Err(e)) => {
                if !warned {
                    warn!(dir = %root.display(), error = %e, "cannot read the checkpoint's progress");
                    warned = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        let now = SystemTime::now();
        let m = &shared.metrics;
        for q in &queries {
            let label = [q.name.as_str()];
            if let Some(b) = q.latest_committed_batch {
                m.checkpoint_last_committed_batch
                    .with_label_values(&label)
                    .set(b as i64);
            }
            if let Some(age) = q.last_commit_age(now) {
                m.checkpoint_last_commit_age_seconds
                    .with_label_values(&label)
                    .set(age.as_secs_f64());
            }
            m.checkpoint_inflight_batch_age_seconds
                .with_label_values(&label)
                .set(q.inflight_age(now).map_or(0.0, |a| a.as_secs_f64()));
        }
        let snapshot = shared.snapshot();
        let json: Vec<serde_json::Value> = queries.iter().map(|q| q.to_json(now)).collect();
        shared.update(|s| {
            s.checkpoint = serde_json::json!({
                "dir": root,
                "stall_timeout_seconds": stall_timeout.as_secs_f64(),
                "repairs_total": shared.metrics.checkpoint_repairs_total.get(),
                "queries": json,
            });
        });

        if snapshot.state != Phase::Running || stall_timeout.is_zero() {
            continue;
        }
        // A batch can only stall in a Spark that is up: the clock starts no
        // earlier than the first answer of its REST API in this attempt.
        let Some(up) = snapshot.spark_up_since_unix else {
            continue;
        };
        let since = UNIX_EPOCH + Duration::from_secs_f64(up);
        for q in &queries {
            if let Activity::Stalled { batch, age } =
                checkpoint::assess(q, now, since, stall_timeout)
            {
                let _ = stalls.try_send(Stall {
                    attempt: snapshot.attempt,
                    query: q.name.clone(),
                    batch,
                    age,
                });
            }
        }
    }
}

/// Before a start: repairs torn trailing files (`checkpoint.repair`), or
/// reports what a repair would do. Returns the number of repairs made.
pub async fn prepare(shared: &Shared, cfg: &CheckpointConfig) -> u64 {
    let Some(root) = cfg.dir.clone() else {
        return 0;
    };
    if !cfg.repair {
        let dir = root.clone();
        match tokio::task::spawn_blocking(move || checkpoint::plan_root(&dir)).await {
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
        checkpoint::repair(&dir, quarantine.as_deref(), SystemTime::now())
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
