//! S3 around the attempt loop: restore the checkpoint and fetch remote
//! artifacts before the first start, replicate while the app runs, and a
//! last sync when sparkvisor exits; sync statistics into `/status` and the
//! `sparkvisor_s3_*` metrics.
//!
//! Invariants: Spark never starts on an undecided checkpoint — a restore
//! that fails is retried (phase `restoring`, `/ready` 503) until it
//! succeeds or a stop is requested; the app is never affected by sync
//! errors (they are counted and retried); the final sync runs after the
//! app's processes are gone and is bounded by `final_sync_timeout`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::artifacts::{Fetching, LocalArtifacts, fetch_remote_artifacts};
use crate::beat::StepKind;
use crate::config::Config;
use crate::replica::replicate::{Replicator, SyncStats};
use crate::replica::restore::{RestoreOutcome, restore_if_needed};
use crate::s3::S3Settings;
use crate::s3::download::Patience;
use crate::status::Shared;
use crate::tasks::{Essential, Tasks};

/// Longest pause between two tries of a failing restore or download.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The delay before try `n + 1` after `n` failures.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5).saturating_sub(1)).min(MAX_RETRY)
}

/// Restores the checkpoint when needed. Ok(()) once decided; a failure is
/// reported and the caller retries. A step for liveness while it runs.
pub async fn restore(shared: &Shared, cfg: &Config) -> Result<(), String> {
    let step = shared.begin(StepKind::Restore);
    let outcome = restore_if_needed(&cfg.checkpoint, &step.beat()).await;
    match outcome {
        Ok(RestoreOutcome::Disabled) => Ok(()),
        Ok(RestoreOutcome::NoManifest) => {
            info!(
                "the S3 replica has no manifest yet: Spark starts with the local checkpoint as it is"
            );
            record(shared, serde_json::json!({"outcome": "no_manifest"}));
            Ok(())
        }
        Ok(RestoreOutcome::KeptLocal { reason, skipped }) => {
            info!(reason = %reason, "kept the local checkpoint (not older than the replica)");
            for s in &skipped {
                warn!(manifest = %s.manifest, reason = %s.reason, "skipped an unusable manifest");
            }
            record(
                shared,
                serde_json::json!({"outcome": "kept_local", "reason": reason}),
            );
            Ok(())
        }
        Ok(RestoreOutcome::Restored(r)) => {
            info!(
                manifest = %r.manifest,
                files = r.files,
                bytes = r.bytes,
                seconds = r.seconds,
                "restored the checkpoint from S3"
            );
            for s in &r.skipped {
                warn!(manifest = %s.manifest, reason = %s.reason, "skipped an unusable manifest (fell back to an older one)");
            }
            shared.metrics.s3_restore_seconds.set(r.seconds);
            record(
                shared,
                serde_json::json!({
                    "outcome": "restored",
                    "manifest": r.manifest,
                    "files": r.files,
                    "bytes": r.bytes,
                    "reused_bytes": r.reused_bytes,
                    "seconds": r.seconds,
                    "skipped_manifests": r.skipped.len(),
                }),
            );
            Ok(())
        }
        Err(e) => {
            let msg = e.to_string();
            record(
                shared,
                serde_json::json!({"outcome": "failed", "error": msg}),
            );
            Err(msg)
        }
    }
}

fn record(shared: &Shared, restore: serde_json::Value) {
    shared.update(|s| {
        if !s.s3.is_object() {
            s.s3 = serde_json::json!({});
        }
        s.s3["restore"] = restore;
    });
}

/// Downloads `spark.app` / `spark.py_files` given as `s3://…` into
/// `spark.artifacts_dir` (disk, never the memory-backed runtime dir).
pub async fn artifacts(shared: &Shared, cfg: &Config) -> Result<LocalArtifacts, String> {
    let dest = cfg.artifacts_dir();
    let settings = S3Settings::from_config(&cfg.checkpoint.s3);
    let step = shared.begin(StepKind::Artifacts);
    let how = Fetching {
        patience: Patience::new(cfg.checkpoint.s3.read_stall_timeout.get()),
        beat: step.beat(),
    };
    fetch_remote_artifacts(&cfg.spark, &settings, Path::new(&dest), &how)
        .await
        .map_err(|e| e.to_string())
}

/// The running sync loop and the task copying its numbers (both essential).
pub struct Replica {
    stop: watch::Sender<bool>,
    sync: Essential,
    publish: Essential,
    stats: Arc<SyncStats>,
    shared: Arc<Shared>,
}

/// Starts replication when `checkpoint.s3.uri` is set.
pub async fn start(
    shared: Arc<Shared>,
    cfg: &Config,
    tasks: &Tasks,
) -> Result<Option<Replica>, String> {
    let s3 = &cfg.checkpoint.s3;
    let Some(replicator) = Replicator::from_config(&cfg.checkpoint)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let stats = replicator.stats();
    let (stop, stop_rx) = watch::channel(false);
    info!(uri = s3.uri.as_deref().unwrap_or(""), interval = %s3.sync_interval, "replicating the checkpoint to S3");
    let sync = tasks.spawn(
        "replication",
        replicator.run(s3.sync_interval.get(), stop_rx, s3.final_sync_timeout.get()),
    );
    let publish = tasks.spawn("replication-stats", publish(shared.clone(), stats.clone()));
    Ok(Some(Replica {
        stop,
        sync,
        publish,
        stats,
        shared,
    }))
}

impl Replica {
    /// The last sync (after the app is gone), then the final numbers.
    pub async fn finish(self) {
        self.sync.retire();
        let _ = self.stop.send(true);
        self.sync.join().await;
        self.publish.abort();
        publish_once(&self.shared, &self.stats, &mut Published::default());
    }

    /// Whether the sync loop still runs (it can do the final sync).
    pub fn is_alive(&self) -> bool {
        !self.sync.is_finished()
    }

    /// Ends both tasks without a final sync.
    pub fn abort(self) {
        self.sync.abort();
        self.publish.abort();
    }
}

#[derive(Default)]
struct Published {
    files: u64,
    bytes: u64,
    errors: u64,
}

async fn publish(shared: Arc<Shared>, stats: Arc<SyncStats>) {
    let mut seen = Published::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        publish_once(&shared, &stats, &mut seen);
    }
}

/// Copies the replicator's numbers into the metrics (counters by their
/// increase) and `/status`.
fn publish_once(shared: &Shared, stats: &SyncStats, seen: &mut Published) {
    let snap = stats.snapshot();
    let m = &shared.metrics;
    m.s3_sync_files_total
        .inc_by(snap.files_total.saturating_sub(seen.files));
    m.s3_sync_bytes_total
        .inc_by(snap.bytes_total.saturating_sub(seen.bytes));
    m.s3_sync_errors_total
        .inc_by(snap.errors_total.saturating_sub(seen.errors));
    seen.files = seen.files.max(snap.files_total);
    seen.bytes = seen.bytes.max(snap.bytes_total);
    seen.errors = seen.errors.max(snap.errors_total);
    if let Some(t) = snap.last_success_unix {
        m.s3_last_sync_timestamp_seconds.set(t);
    }
    let sync = serde_json::to_value(&snap).unwrap_or_default();
    shared.update(|s| {
        if !s.s3.is_object() {
            s.s3 = serde_json::json!({});
        }
        s.s3["sync"] = sync;
    });
}

/// Logs a failed try and how long until the next.
pub fn report_retry(what: &str, error: &str, failures: u32) -> Duration {
    let delay = retry_delay(failures);
    error!(
        error,
        retry_in_s = delay.as_secs(),
        "{what} failed; Spark waits for it"
    );
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap() {
        let d: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 16, 16, 16]);
        assert!(retry_delay(100) <= MAX_RETRY);
    }
}
