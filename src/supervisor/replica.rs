//! S3 around the attempt loop: take the replica's lease, restore the
//! checkpoint and fetch remote artifacts before the first start, replicate
//! while the app runs, and a last sync when sparkvisor exits; sync
//! statistics and the lease into `/status` and the `sparkvisor_s3_*`
//! metrics; the fenced marker in the checkpoint directory.
//!
//! Invariants: Spark never starts on an undecided checkpoint — a lease
//! claim or restore that fails is retried (phase `restoring`, `/ready` 503)
//! until it succeeds or a stop is requested; the lease is taken before the
//! restore (so the old holder stops publishing and deleting while the copy
//! is read); a pod that was fenced never claims the replica again (its
//! marker); the app is never affected by sync errors (they are counted and
//! retried); the final sync runs after the app's processes are gone and is
//! bounded by `final_sync_timeout`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::artifacts::{Fetching, LocalArtifacts, fetch_remote_artifacts};
use crate::beat::StepKind;
use crate::config::{Config, FencingMode};
use crate::replica::fence::{self, ClaimError, Fence, LeaseView};
use crate::replica::lease::{self, Marker, Plan, Support};
use crate::replica::replicate::{Replicator, SyncStats};
use crate::replica::restore::{RestoreOutcome, restore_if_needed};
use crate::s3::download::Patience;
use crate::s3::{Location, S3Settings, Store};
use crate::status::{Phase, Shared};
use crate::stop::{FENCED_EXIT_CODE, StopSender, Takeover};
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
    set_s3(shared, "restore", restore);
}

fn set_s3(shared: &Shared, field: &str, value: serde_json::Value) {
    shared.update(|s| {
        if !s.s3.is_object() {
            s.s3 = serde_json::json!({});
        }
        s.s3[field] = value;
    });
}

/// Why the lease was not taken.
#[derive(Debug)]
pub enum LeaseError {
    /// S3 did not answer as needed: try again.
    Retry(String),
    /// Do not start; exit with this code (already logged, phase set).
    Exit(i32),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `<checkpoint.dir>/.sparkvisor-fenced`.
fn marker_path(cfg: &Config) -> Option<std::path::PathBuf> {
    cfg.checkpoint.dir.as_ref().map(|d| d.join(lease::MARKER))
}

/// Records in the checkpoint directory that this pod was fenced, so a
/// restart of its container does not claim the replica back.
pub fn write_marker(cfg: &Config, pod: Option<&str>, writer: &str, t: &Takeover) {
    let Some(path) = marker_path(cfg) else {
        return;
    };
    let m = Marker::new(pod, writer, t, now_ms());
    let body = serde_json::to_vec_pretty(&m).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => {
            info!(path = %path.display(), "recorded that this pod was fenced: a restart of its container will not take the replica back")
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot record that this pod was fenced")
        }
    }
}

/// A marker of this pod, if one is there (a stale one of another pod is
/// removed).
fn read_marker(cfg: &Config, pod: Option<&str>) -> Option<Marker> {
    let path = marker_path(cfg)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the fenced marker; treating this pod as fenced");
            return Some(Marker::new(
                pod,
                "unknown",
                &lease::takeover(None, 0),
                now_ms(),
            ));
        }
    };
    match serde_json::from_slice::<Marker>(&bytes) {
        Ok(m) if lease::marker_applies(&m, pod) => Some(m),
        Ok(m) => {
            info!(path = %path.display(), fenced_pod = m.pod.as_deref().unwrap_or("unknown"), "removing the fenced marker of another pod");
            let _ = std::fs::remove_file(&path);
            None
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable fenced marker; treating this pod as fenced");
            Some(Marker::new(
                pod,
                "unknown",
                &lease::takeover(None, 0),
                now_ms(),
            ))
        }
    }
}

/// `/status` `s3.lease` when no lease is used.
fn lease_off(shared: &Shared, fencing: FencingMode) {
    set_s3(
        shared,
        "lease",
        serde_json::json!({"fencing": fencing.to_string(), "fenced": false}),
    );
}

/// Takes the replica's lease before the restore: the fenced marker, the
/// probe of conditional writes (`checkpoint.s3.fencing` decides what a
/// server without them means), then the claim. `None` when no lease is
/// used (replication or fencing off).
pub async fn take_lease(
    shared: &Shared,
    cfg: &Config,
    writer: &str,
    stop: &StopSender,
) -> Result<Option<Fence>, LeaseError> {
    let s3 = &cfg.checkpoint.s3;
    let Some(uri) = &s3.uri else {
        return Ok(None);
    };
    if s3.fencing == FencingMode::Off {
        lease_off(shared, s3.fencing);
        return Ok(None);
    }
    let me = fence::identity(writer.to_string());
    if let Some(m) = read_marker(cfg, me.pod.as_deref()) {
        let t = m.takeover();
        error!(
            holder = %t.holder,
            generation = t.generation,
            "this pod was fenced before ({t}); it never takes the checkpoint replica back. Delete the pod (or {}) to let it run again",
            marker_path(cfg).map(|p| p.display().to_string()).unwrap_or_default()
        );
        fenced_view(shared, s3.fencing, writer, &t);
        shared.update(|s| s.state = Phase::Fenced);
        return Err(LeaseError::Exit(FENCED_EXIT_CODE));
    }
    let loc = Location::parse(uri).map_err(|why| LeaseError::Retry(format!("{uri}: {why}")))?;
    let store = Store::connect(&S3Settings::from_config(s3), &loc.bucket).await;
    let probe = fence::probe(&store, &loc, writer)
        .await
        .map_err(|e| LeaseError::Retry(format!("probing conditional writes: {e}")))?;
    let support = lease::support(&probe);
    let finding = match &support {
        Support::Atomic => "atomic".to_string(),
        Support::NotEnforced(why) => format!("not enforced: {why}"),
    };
    let atomic = match lease::plan(s3.fencing, Some(&support)) {
        Plan::Off => {
            lease_off(shared, s3.fencing);
            return Ok(None);
        }
        Plan::Refuse(why) => {
            error!(
                replica = %loc,
                "checkpoint.s3.fencing = \"required\", but {loc} cannot carry the lease: {why}. Use a server that enforces conditional writes (If-None-Match, If-Match) atomically, or set checkpoint.s3.fencing = \"best-effort\""
            );
            set_s3(
                shared,
                "lease",
                serde_json::json!({"fencing": s3.fencing.to_string(), "conditional_writes": finding, "fenced": false}),
            );
            shared.update(|s| s.state = Phase::Exited);
            return Err(LeaseError::Exit(2));
        }
        Plan::Lease { atomic, warning } => {
            if let Some(why) = warning {
                warn!(
                    replica = %loc,
                    "{loc} does not enforce conditional writes: {why}. Fencing is best effort: a takeover is still seen at the next check, but two writers racing could both write (checkpoint.s3.fencing = \"best-effort\")"
                );
            }
            atomic
        }
    };
    match Fence::claim(store, loc, me.clone(), atomic).await {
        Ok(f) => {
            f.describe(&s3.fencing.to_string(), &finding);
            let f = f.notify(stop.clone());
            publish_lease(shared, &f.view_handle());
            Ok(Some(f))
        }
        Err(ClaimError::Lost(t)) => {
            error!(
                holder = %t.holder,
                generation = t.generation,
                "{t}: it took the checkpoint replica over at the same time as this process; not starting"
            );
            write_marker(cfg, me.pod.as_deref(), writer, &t);
            fenced_view(shared, s3.fencing, writer, &t);
            shared.update(|s| s.state = Phase::Fenced);
            Err(LeaseError::Exit(FENCED_EXIT_CODE))
        }
        Err(e) => Err(LeaseError::Retry(format!(
            "taking the replica's lease: {e}"
        ))),
    }
}

/// `/status` `s3.lease` and the metric of a fenced process.
pub fn fenced_view(shared: &Shared, fencing: FencingMode, writer: &str, t: &Takeover) {
    shared.metrics.s3_fenced.set(1);
    let view = LeaseView {
        fencing: fencing.to_string(),
        writer: writer.to_string(),
        holder: Some(t.holder.clone()),
        generation: Some(t.generation),
        pod: t.pod.clone(),
        node: t.node.clone(),
        ours: false,
        fenced: true,
        our_generation: (t.ours > 0).then_some(t.ours),
        ..LeaseView::default()
    };
    set_s3(
        shared,
        "lease",
        serde_json::to_value(&view).unwrap_or_default(),
    );
}

fn publish_lease(shared: &Shared, view: &Mutex<LeaseView>) {
    let v = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    shared.metrics.s3_fenced.set(i64::from(v.fenced));
    set_s3(
        shared,
        "lease",
        serde_json::to_value(&v).unwrap_or_default(),
    );
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
    lease: Option<Arc<Mutex<LeaseView>>>,
    shared: Arc<Shared>,
}

/// Starts replication when `checkpoint.s3.uri` is set, under `fence` when
/// a lease was taken.
pub async fn start(
    shared: Arc<Shared>,
    cfg: &Config,
    tasks: &Tasks,
    fence: Option<Fence>,
) -> Result<Option<Replica>, String> {
    let s3 = &cfg.checkpoint.s3;
    let Some(mut replicator) = Replicator::from_config(&cfg.checkpoint)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let lease = fence.as_ref().map(Fence::view_handle);
    if let Some(f) = fence {
        replicator = replicator.with_fence(f);
    }
    let stats = replicator.stats();
    let (stop, stop_rx) = watch::channel(false);
    info!(uri = s3.uri.as_deref().unwrap_or(""), interval = %s3.sync_interval, "replicating the checkpoint to S3");
    let sync = tasks.spawn(
        "replication",
        replicator.run(s3.sync_interval.get(), stop_rx, s3.final_sync_timeout.get()),
    );
    let publish = tasks.spawn(
        "replication-stats",
        publish(shared.clone(), stats.clone(), lease.clone()),
    );
    Ok(Some(Replica {
        stop,
        sync,
        publish,
        stats,
        lease,
        shared,
    }))
}

impl Replica {
    /// The last sync (after the app is gone; none once fenced), then the
    /// final numbers.
    pub async fn finish(self) {
        self.sync.retire();
        let _ = self.stop.send(true);
        self.sync.join().await;
        self.publish.abort();
        publish_once(&self.shared, &self.stats, &mut Published::default());
        if let Some(l) = &self.lease {
            publish_lease(&self.shared, l);
        }
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

async fn publish(shared: Arc<Shared>, stats: Arc<SyncStats>, lease: Option<Arc<Mutex<LeaseView>>>) {
    let mut seen = Published::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        publish_once(&shared, &stats, &mut seen);
        if let Some(l) = &lease {
            publish_lease(&shared, l);
        }
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
