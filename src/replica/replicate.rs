//! The sync engine: copies the local checkpoint to S3 and publishes a
//! manifest for its latest committed batch.
//!
//! One [`Replicator`] per checkpoint root. Each [`Replicator::sync_once`]:
//! scans the root, selects a consistent copy ([`snapshot::select`]),
//! uploads contents the replica does not have yet — state, sources and
//! metadata first, then offsets, then commits, with bounded parallelism —
//! publishes the manifest, then deletes objects only superseded manifests
//! reference (beyond `retain_batches`).
//!
//! With a [`Fence`] (the lease, `replica::fence`) every cycle starts with a
//! check of the lease, the manifest is published only after another, and
//! deletions are sent only within [`lease::GC_WINDOW`] of a third; a
//! process that took the replica over lists the objects only after
//! [`lease::SETTLE`]. Manifests carry the lease generation.
//!
//! Invariants:
//! - The manifest is written (`If-None-Match: *`) after every object it
//!   references; a cycle that fails or is cancelled before that leaves the
//!   replica as it was.
//! - A fenced replicator writes and deletes nothing more: every later
//!   cycle fails with [`SyncError::Fenced`] before any request, and the
//!   final sync is skipped. An unanswered lease check (S3 down) fails the
//!   cycle like any other request; it is not a lost lease.
//! - Garbage collection re-reads the manifests it is about to supersede,
//!   deletes only under a lease it holds, and never while it knows a
//!   manifest of a newer lease generation.
//! - What the replica holds is remembered (manifests this process read or
//!   wrote), so a steady-state cycle lists nothing: the manifests listing
//!   and one objects listing happen once, on the first cycle.
//! - A file whose size or content changes between the scan and the end of
//!   its upload is never recorded with the wrong checksum: the cycle
//!   rescans (a few times) instead.
//! - Errors never escape as panics; they are counted in [`SyncStats`] and
//!   the next cycle retries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;

use super::fence::{self, CheckError, Fence};
use super::lease;
use super::manifest::{self, FORMAT, FileEntry, Manifest, ManifestId};
use super::snapshot::{self, LocalFile, Selection};
use crate::config::{CheckpointConfig, ConfigError};
use crate::s3::{
    Condition, Location, MULTIPART_THRESHOLD, PART_SIZE, S3Settings, Store, StoreError, Throttle,
    sha256_bytes, sha256_file,
};
use crate::stop::Takeover;

/// How often a cycle rescans when files change under it.
const MAX_SCANS: usize = 5;

/// What to replicate where.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The local checkpoint root.
    pub dir: PathBuf,
    pub location: Location,
    /// Manifests kept (at least 1).
    pub retain: usize,
    pub concurrency: usize,
}

/// Counters and lag, shared with whoever reports them (metrics, /status).
#[derive(Debug, Default)]
pub struct SyncStats {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    errors_total: AtomicU64,
    cycles_total: AtomicU64,
    manifests_total: AtomicU64,
    objects_deleted_total: AtomicU64,
    consecutive_failures: AtomicU64,
    /// 0 = never.
    last_success_unix_ms: AtomicI64,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    last_error: Option<String>,
    last_manifest: Option<String>,
    local: BTreeMap<String, Option<u64>>,
    replicated: BTreeMap<String, Option<u64>>,
}

/// A point-in-time copy of [`SyncStats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncStatsSnapshot {
    /// Files uploaded (contents the replica did not have).
    pub files_total: u64,
    pub bytes_total: u64,
    /// Failed cycles (and failed deletions of superseded objects).
    pub errors_total: u64,
    pub cycles_total: u64,
    pub manifests_total: u64,
    pub objects_deleted_total: u64,
    pub consecutive_failures: u64,
    /// When the replica last matched the local checkpoint.
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
    pub last_manifest: Option<String>,
    pub queries: Vec<QueryLag>,
}

/// How far the replica is behind, per query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryLag {
    pub query: String,
    pub local_committed_batch: Option<u64>,
    pub replicated_batch: Option<u64>,
    /// `local - replicated` when both are known (all of local when nothing
    /// is replicated yet).
    pub batches_behind: Option<u64>,
}

impl SyncStats {
    pub fn snapshot(&self) -> SyncStatsSnapshot {
        let d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
        let ms = self.last_success_unix_ms.load(Ordering::Relaxed);
        let mut names: Vec<&String> = d.local.keys().chain(d.replicated.keys()).collect();
        names.sort();
        names.dedup();
        let queries = names
            .into_iter()
            .map(|q| {
                let local = d.local.get(q).copied().flatten();
                let replicated = d.replicated.get(q).copied().flatten();
                QueryLag {
                    query: q.clone(),
                    local_committed_batch: local,
                    replicated_batch: replicated,
                    batches_behind: match (local, replicated) {
                        (Some(l), Some(r)) => Some(l.saturating_sub(r)),
                        (Some(l), None) => Some(l + 1),
                        _ => None,
                    },
                }
            })
            .collect();
        SyncStatsSnapshot {
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            errors_total: self.errors_total.load(Ordering::Relaxed),
            cycles_total: self.cycles_total.load(Ordering::Relaxed),
            manifests_total: self.manifests_total.load(Ordering::Relaxed),
            objects_deleted_total: self.objects_deleted_total.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            last_success_unix: (ms > 0).then(|| ms as f64 / 1000.0),
            last_error: d.last_error.clone(),
            last_manifest: d.last_manifest.clone(),
            queries,
        }
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one cycle did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub outcome: SyncOutcome,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub objects_deleted: u64,
    /// Per query: the latest committed batch now in the replica.
    pub batches: Vec<(String, Option<u64>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A new manifest was published.
    Published(ManifestId),
    /// The replica already matched the local checkpoint.
    Unchanged,
    /// The local checkpoint has no files yet.
    NothingToSync,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read the local checkpoint {dir}: {source}")]
    Local {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{manifest}: {message}")]
    Manifest { manifest: String, message: String },
    #[error("local files kept changing during {MAX_SCANS} scans (last: {path})")]
    Unstable { path: String },
    /// Another writer took the replica over: nothing more is written.
    #[error("fenced: {0}")]
    Fenced(Takeover),
    #[error("internal: {0}")]
    Internal(String),
}

/// The replica as this process knows it.
#[derive(Debug)]
struct Remote {
    next_generation: u64,
    /// The newest lease generation a listed manifest carries.
    listed_lease: u64,
    /// Newest first; `None` when a retained manifest could not be read.
    retained: Vec<(ManifestId, Option<Manifest>)>,
    /// Superseded manifests whose deletion is pending (with their content
    /// when this process has it).
    superseded: Vec<(ManifestId, Option<Manifest>)>,
    /// Contents known to be in the replica.
    present: HashSet<String>,
}

/// Replicates one checkpoint root.
#[derive(Debug)]
pub struct Replicator {
    store: Store,
    cfg: ReplicaConfig,
    writer: String,
    throttle: Throttle,
    remote: Option<Remote>,
    /// path → (size, mtime, sha256) of files already hashed.
    hashes: HashMap<String, (u64, i128, String)>,
    stats: Arc<SyncStats>,
    /// The lease (`None`: `fencing = "off"`).
    fence: Option<Fence>,
}

/// Upload order: state, sources, metadata and the rest (0), offsets (1),
/// commits (2).
fn phase(path: &str) -> usize {
    let mut parts = path.rsplit('/');
    let _file = parts.next();
    match parts.next() {
        Some("offsets") => 1,
        Some("commits") => 2,
        _ => 0,
    }
}

/// Delay before retrying after `failures` consecutive failed cycles:
/// 1 s, 2 s, 4 s … never more than the normal interval.
pub fn retry_delay(failures: u64, interval: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20) as u32;
    Duration::from_secs(1u64 << exp).min(interval)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Result of uploading (or skipping) one file.
enum FileResult {
    Done {
        path: String,
        size: u64,
        mtime: i128,
        sha: String,
        uploaded: bool,
    },
    /// Vanished or changed since the scan: rescan.
    Moved(String),
}

impl ReplicaConfig {
    /// The replication settings of `[checkpoint]`; `None` when `uri` is
    /// unset (replication off).
    pub fn from_config(cfg: &CheckpointConfig) -> Result<Option<ReplicaConfig>, ConfigError> {
        let Some(uri) = &cfg.s3.uri else {
            return Ok(None);
        };
        let location = Location::parse(uri)
            .map_err(|why| ConfigError::new(format!("`checkpoint.s3.uri` = {uri:?}: {why}")))?;
        let dir = cfg.dir.clone().ok_or_else(|| {
            ConfigError::new(
                "`checkpoint.dir` must be set when checkpoint.s3.uri is set (the local copy that is replicated)",
            )
        })?;
        Ok(Some(ReplicaConfig {
            dir,
            location,
            retain: (cfg.s3.retain_batches as usize).max(1),
            concurrency: cfg.s3.concurrency.max(1),
        }))
    }
}

impl Replicator {
    /// A replicator for `[checkpoint]`, connected with the SDK's default
    /// credential chain; `None` when replication is off.
    pub async fn from_config(cfg: &CheckpointConfig) -> Result<Option<Replicator>, ConfigError> {
        let Some(rc) = ReplicaConfig::from_config(cfg)? else {
            return Ok(None);
        };
        let store = Store::connect(&S3Settings::from_config(&cfg.s3), &rc.location.bucket).await;
        Ok(Some(Replicator::new(store, rc)))
    }

    pub fn new(store: Store, cfg: ReplicaConfig) -> Replicator {
        let throttle = Throttle::new(cfg.concurrency);
        Replicator {
            store,
            cfg,
            writer: fence::new_writer_id(),
            throttle,
            remote: None,
            hashes: HashMap::new(),
            stats: Arc::new(SyncStats::default()),
            fence: None,
        }
    }

    /// Replicates under `fence` (its writer id names the manifests).
    pub fn with_fence(mut self, fence: Fence) -> Replicator {
        self.writer = fence.writer().to_string();
        self.fence = Some(fence);
        self
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// This replicator's writer id (in its manifests' names).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Who took the replica over, once this replicator knows.
    pub fn fenced(&self) -> Option<&Takeover> {
        self.fence.as_ref().and_then(Fence::lost)
    }

    /// Checks the lease (no-op without one): Err(Fenced) once lost.
    async fn check_lease(&mut self) -> Result<(), SyncError> {
        let Some(f) = self.fence.as_mut() else {
            return Ok(());
        };
        match f.check().await {
            Ok(()) => Ok(()),
            Err(CheckError::Fenced(t)) => Err(SyncError::Fenced(t)),
            Err(CheckError::Store(e)) => Err(SyncError::Store(e)),
        }
    }

    /// The lease generation new manifests carry: the one held, or without
    /// a lease the newest listed (so they still sort after older ones).
    fn lease_generation(&self) -> u64 {
        match (&self.fence, &self.remote) {
            (Some(f), _) => f.generation(),
            (None, Some(r)) => r.listed_lease,
            (None, None) => 0,
        }
    }

    pub fn stats(&self) -> Arc<SyncStats> {
        self.stats.clone()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// One cycle. Never panics on remote or local trouble: the error is
    /// returned and counted.
    pub async fn sync_once(&mut self) -> Result<SyncReport, SyncError> {
        self.stats.cycles_total.fetch_add(1, Ordering::Relaxed);
        let result = self.cycle().await;
        match &result {
            Ok(report) => {
                self.stats.consecutive_failures.store(0, Ordering::Relaxed);
                self.stats
                    .last_success_unix_ms
                    .store(now_ms(), Ordering::Relaxed);
                let mut d = self.stats.detail();
                d.last_error = None;
                if report.outcome != SyncOutcome::NothingToSync {
                    d.replicated = report.batches.iter().cloned().collect();
                }
            }
            Err(SyncError::Fenced(_)) => {
                self.stats.detail().last_error = result.as_ref().err().map(|e| e.to_string());
            }
            Err(e) => {
                self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.detail().last_error = Some(e.to_string());
                tracing::warn!(dir = %self.cfg.dir.display(), replica = %self.cfg.location, error = %e, "checkpoint sync failed");
            }
        }
        result
    }

    /// Runs cycles every `interval` (sooner, with backoff, after a failure)
    /// until `stop` turns true, then one last cycle bounded by
    /// `final_timeout`. A cycle in progress when `stop` turns true is
    /// abandoned (harmless: the manifest is written last). Once fenced it
    /// runs no more cycles and waits for `stop`, then returns without a
    /// final cycle.
    pub async fn run(
        mut self,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
        final_timeout: Duration,
    ) {
        loop {
            let failures = self.stats.consecutive_failures.load(Ordering::Relaxed);
            let delay = if failures == 0 {
                interval
            } else {
                retry_delay(failures, interval).mul_f64(0.8 + 0.4 * fastrand::f64())
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            tokio::select! {
                _ = self.sync_once() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if self.fenced().is_some() {
                // Nothing more is written; the task lives on until the
                // supervisor ends replication (an essential task that
                // returned on its own would count as sparkvisor failing).
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
        }
        if self.fenced().is_some() {
            return;
        }
        match tokio::time::timeout(final_timeout, self.sync_once()).await {
            Ok(Ok(r)) => {
                tracing::info!(outcome = ?r.outcome, batches = ?r.batches, "final checkpoint sync done")
            }
            Ok(Err(_)) => {} // logged and counted by sync_once
            Err(_) => {
                self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                self.stats.detail().last_error = Some(format!(
                    "final sync did not finish within {final_timeout:?}"
                ));
                tracing::warn!(timeout = ?final_timeout, "final checkpoint sync timed out");
            }
        }
    }

    /// The local checkpoint's committed batches, for the lag in the stats.
    fn note_local(&self, selection: &Selection) {
        self.stats.detail().local = selection
            .queries
            .iter()
            .map(|q| (q.path.clone(), q.latest_committed_batch))
            .collect();
    }

    async fn cycle(&mut self) -> Result<SyncReport, SyncError> {
        // Stop uploading at once when the replica is no longer ours.
        if let Err(e) = self.check_lease().await {
            // S3 unreachable: the lag (`/status`) still follows the local
            // checkpoint while the cycles fail.
            if !matches!(e, SyncError::Fenced(_))
                && let Ok(selection) = self.scan().await
            {
                self.note_local(&selection);
            }
            return Err(e);
        }
        let mut uploaded_files = 0u64;
        let mut uploaded_bytes = 0u64;
        let mut last_moved = String::new();
        let mut done: Option<(Selection, Vec<FileEntry>)> = None;
        for _ in 0..MAX_SCANS {
            let selection = self.scan().await?;
            self.note_local(&selection);
            if selection.files.is_empty() {
                return Ok(SyncReport {
                    outcome: SyncOutcome::NothingToSync,
                    files_uploaded: 0,
                    bytes_uploaded: 0,
                    objects_deleted: 0,
                    batches: vec![],
                });
            }
            if self.remote.is_none()
                && let Some(until) = self.fence.as_ref().and_then(Fence::settle_until)
                && until > std::time::Instant::now()
            {
                tracing::info!(
                    wait_ms = (until - std::time::Instant::now()).as_millis() as u64,
                    "took the replica over from another writer: waiting until its deletions in flight are over before reading the replica"
                );
                tokio::time::sleep_until(until.into()).await;
            }
            self.ensure_remote().await?;
            let (entries, moved, files, bytes) = self.upload(&selection).await?;
            uploaded_files += files;
            uploaded_bytes += bytes;
            match moved {
                None => {
                    done = Some((selection, entries));
                    break;
                }
                Some(p) => {
                    tracing::debug!(path = %p, "checkpoint file changed during sync; rescanning");
                    last_moved = p;
                }
            }
        }
        let Some((selection, files)) = done else {
            return Err(SyncError::Unstable { path: last_moved });
        };
        let batches: Vec<(String, Option<u64>)> = selection
            .queries
            .iter()
            .map(|q| (q.path.clone(), q.latest_committed_batch))
            .collect();
        let writer = self.writer.clone();
        let lease_generation = self.lease_generation();
        let remote = self.remote_mut()?;
        let mut m = Manifest {
            format: FORMAT.to_string(),
            lease_generation,
            generation: remote.next_generation,
            writer,
            created_unix_ms: now_ms(),
            queries: selection.queries,
            files,
        };
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        let unchanged = remote
            .retained
            .first()
            .and_then(|(_, m)| m.as_ref())
            .is_some_and(|last| last.same_state(&m));
        if unchanged {
            return Ok(SyncReport {
                outcome: SyncOutcome::Unchanged,
                files_uploaded: uploaded_files,
                bytes_uploaded: uploaded_bytes,
                objects_deleted: 0,
                batches,
            });
        }
        let id = m.id();
        let key = id.key(&self.cfg.location.prefix);
        // Published only under a lease this process still holds.
        self.check_lease().await?;
        self.publish(&key, m.to_json()).await?;
        tracing::info!(manifest = %key, batches = ?batches, files = m.files.len(), uploaded = uploaded_files, "checkpoint replica published");
        self.stats.manifests_total.fetch_add(1, Ordering::Relaxed);
        self.stats.detail().last_manifest = Some(key);
        let keep = self.cfg.retain.max(1);
        let remote = self.remote_mut()?;
        remote.next_generation += 1;
        remote.retained.insert(0, (id.clone(), Some(m)));
        if remote.retained.len() > keep {
            let old = remote.retained.split_off(keep);
            remote.superseded.extend(old);
        }
        let objects_deleted = self.collect_garbage().await?;
        Ok(SyncReport {
            outcome: SyncOutcome::Published(id),
            files_uploaded: uploaded_files,
            bytes_uploaded: uploaded_bytes,
            objects_deleted,
            batches,
        })
    }

    /// Writes a new manifest with `If-None-Match: *`. A refusal means the
    /// key exists: only this writer writes its keys, so that is its own
    /// earlier attempt (the SDK retried after a lost answer) when the
    /// content is the same.
    async fn publish(&self, key: &str, body: Vec<u8>) -> Result<(), SyncError> {
        match self
            .store
            .put_if(key, body.clone(), Condition::Absent)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::PreconditionFailed { .. }) => {
                if self.store.get(key).await? == body {
                    Ok(())
                } else {
                    Err(SyncError::Manifest {
                        manifest: key.to_string(),
                        message: "another manifest already has this name".into(),
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remote_mut(&mut self) -> Result<&mut Remote, SyncError> {
        self.remote
            .as_mut()
            .ok_or_else(|| SyncError::Internal("replica state not loaded".into()))
    }

    async fn scan(&self) -> Result<Selection, SyncError> {
        let dir = self.cfg.dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let caps = snapshot::commit_caps(&dir)?;
            let files = snapshot::scan(&dir)?;
            let mut sel = snapshot::select_capped(&files, Some(&caps));
            let source_caps = snapshot::source_caps(&dir, &sel);
            snapshot::trim_sources(&mut sel, &source_caps);
            for q in &mut sel.queries {
                q.id = snapshot::read_query_id(&dir, &q.path);
            }
            Ok::<_, std::io::Error>(sel)
        })
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?;
        res.map_err(|source| SyncError::Local {
            dir: self.cfg.dir.clone(),
            source,
        })
    }

    /// Learns what the replica holds: one listing of the manifests, the
    /// retained ones read, one listing of the objects. Only on the first
    /// successful cycle of this process.
    async fn ensure_remote(&mut self) -> Result<(), SyncError> {
        if self.remote.is_some() {
            return Ok(());
        }
        let prefix = &self.cfg.location.prefix;
        let keys = self.store.list(&manifest::manifests_prefix(prefix)).await?;
        let ids: Vec<ManifestId> = keys
            .iter()
            .filter_map(|k| ManifestId::parse_key(prefix, k))
            .collect();
        let next_generation = manifest::next_generation(&ids);
        let listed_lease = manifest::newest_lease(&ids);
        let (keep, old) = manifest::split_retained(ids, self.cfg.retain);
        let mut retained = Vec::new();
        let mut referenced: HashMap<String, u64> = HashMap::new();
        for id in keep {
            let m = match self.store.get(&id.key(prefix)).await {
                Ok(bytes) => match Manifest::from_json(&bytes, &id) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(manifest = %id, error = %e, "ignoring an unreadable manifest");
                        None
                    }
                },
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(m) = &m {
                for f in &m.files {
                    referenced.insert(f.sha256.clone(), f.size);
                }
            }
            retained.push((id, m));
        }
        // Trust only objects that exist with the size their manifests say:
        // a damaged replica is repaired by uploading again.
        let listed = self
            .store
            .list_sizes(&format!("{}objects/", prefix_slash(prefix)))
            .await?;
        let present: HashSet<String> = listed
            .into_iter()
            .filter_map(|(key, size)| {
                let sha = key.rsplit('/').next()?.to_string();
                (referenced.get(&sha) == Some(&size)).then_some(sha)
            })
            .collect();
        tracing::info!(
            replica = %self.cfg.location,
            manifests = retained.len() + old.len(),
            objects = present.len(),
            next_generation,
            "checkpoint replica state loaded"
        );
        self.remote = Some(Remote {
            next_generation,
            listed_lease,
            retained,
            superseded: old.into_iter().map(|id| (id, None)).collect(),
            present,
        });
        Ok(())
    }

    /// Uploads what the replica lacks. Returns the manifest entries, the
    /// first file that moved under us (then the entries are incomplete),
    /// and what was uploaded.
    async fn upload(
        &mut self,
        sel: &Selection,
    ) -> Result<(Vec<FileEntry>, Option<String>, u64, u64), SyncError> {
        let mut entries = Vec::with_capacity(sel.files.len());
        let mut moved = None;
        let mut files_up = 0u64;
        let mut bytes_up = 0u64;
        let present: Arc<HashSet<String>> = Arc::new(
            self.remote
                .as_ref()
                .map(|r| r.present.clone())
                .unwrap_or_default(),
        );
        let mut phases: [Vec<&LocalFile>; 3] = [vec![], vec![], vec![]];
        for f in &sel.files {
            phases[phase(&f.path)].push(f);
        }
        let mut new_present = Vec::new();
        for files in phases {
            let mut set: JoinSet<Result<FileResult, StoreError>> = JoinSet::new();
            for f in files {
                if let Some((size, mtime, sha)) = self.hashes.get(&f.path)
                    && *size == f.size
                    && *mtime == f.mtime_unix_ns
                    && present.contains(sha)
                {
                    entries.push(FileEntry {
                        path: f.path.clone(),
                        size: f.size,
                        sha256: sha.clone(),
                        mtime_unix_ms: f.mtime_unix_ms(),
                    });
                    continue;
                }
                set.spawn(upload_file(
                    self.store.clone(),
                    self.throttle.clone(),
                    self.cfg.location.prefix.clone(),
                    self.cfg.dir.clone(),
                    f.clone(),
                    present.clone(),
                ));
            }
            let mut error = None;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(FileResult::Done {
                        path,
                        size,
                        mtime,
                        sha,
                        uploaded,
                    })) => {
                        if uploaded {
                            files_up += 1;
                            bytes_up += size;
                            self.stats.files_total.fetch_add(1, Ordering::Relaxed);
                            self.stats.bytes_total.fetch_add(size, Ordering::Relaxed);
                        }
                        new_present.push(sha.clone());
                        entries.push(FileEntry {
                            path: path.clone(),
                            size,
                            sha256: sha.clone(),
                            mtime_unix_ms: (mtime / 1_000_000) as i64,
                        });
                        self.hashes.insert(path, (size, mtime, sha));
                    }
                    Ok(Ok(FileResult::Moved(p))) => {
                        moved.get_or_insert(p);
                    }
                    Ok(Err(e)) => {
                        error.get_or_insert(SyncError::Store(e));
                        set.abort_all();
                    }
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => {
                        error.get_or_insert(SyncError::Internal(format!("upload task: {e}")));
                        set.abort_all();
                    }
                }
            }
            if let Some(remote) = self.remote.as_mut() {
                remote.present.extend(new_present.drain(..));
            }
            if let Some(e) = error {
                return Err(e);
            }
            if moved.is_some() {
                break;
            }
        }
        // Forget hashes of files that are gone.
        let live: HashSet<&str> = sel.files.iter().map(|f| f.path.as_str()).collect();
        self.hashes.retain(|p, _| live.contains(p.as_str()));
        Ok((entries, moved, files_up, bytes_up))
    }

    /// Deletes superseded manifests, then the objects only they reference.
    /// The superseded manifests are re-read first (what they reference now,
    /// whoever wrote them); nothing is deleted while a manifest of a newer
    /// lease generation is known; under a lease, deletions start right
    /// after a check and are sent only within [`lease::GC_WINDOW`] of one.
    /// Failures are counted and retried on the next cycle; a lost lease is
    /// [`SyncError::Fenced`].
    async fn collect_garbage(&mut self) -> Result<u64, SyncError> {
        let prefix = self.cfg.location.prefix.clone();
        let ours = self.lease_generation();
        let Some(remote) = self.remote.as_mut() else {
            return Ok(0);
        };
        if remote.superseded.is_empty() {
            return Ok(0);
        }
        let superseded = std::mem::take(&mut remote.superseded);
        let mut old = Vec::new();
        let mut failed = Vec::new();
        for (id, _remembered) in superseded {
            match self.store.get(&id.key(&prefix)).await {
                Ok(bytes) => match Manifest::from_json(&bytes, &id) {
                    Ok(m) => old.push((id, Some(m))),
                    Err(_) => old.push((id, None)),
                },
                Err(StoreError::NotFound { .. }) => old.push((id, None)),
                Err(e) => {
                    tracing::warn!(manifest = %id, error = %e, "cannot read a superseded manifest; retrying later");
                    failed.push((id, None));
                }
            }
        }
        let known = remote
            .retained
            .iter()
            .chain(old.iter())
            .chain(failed.iter())
            .map(|(id, _)| id);
        if !manifest::may_collect(ours, known) {
            tracing::warn!(
                lease_generation = ours,
                "a manifest of a newer lease generation is in the replica: deleting nothing"
            );
            remote.superseded = old.into_iter().chain(failed).collect();
            return Ok(0);
        }
        // Only under a lease this process holds, checked right before.
        if let Err(e) = self.check_lease().await {
            if let Some(remote) = self.remote.as_mut() {
                remote.superseded = old.into_iter().chain(failed).collect();
            }
            return match e {
                SyncError::Fenced(_) => Err(e),
                e => {
                    tracing::warn!(error = %e, "cannot check the lease before deleting; retrying later");
                    self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    Ok(0)
                }
            };
        }
        let mut errors = 0u64;
        // Manifests first: a crash between the two steps leaks objects
        // instead of leaving a manifest that points at deleted ones.
        let mut gone = Vec::new();
        let mut pending = old.into_iter();
        while let Some((id, m)) = pending.next() {
            if let Err(e) = self.fresh_lease().await {
                failed.push((id, m));
                failed.extend(pending);
                if let Some(remote) = self.remote.as_mut() {
                    remote.superseded = failed;
                }
                return self.gc_interrupted(e, errors);
            }
            match self
                .store
                .delete_within(&id.key(&prefix), lease::DELETE_TIMEOUT)
                .await
            {
                Ok(()) => gone.push(m),
                Err(e) => {
                    tracing::warn!(manifest = %id, error = %e, "cannot delete a superseded manifest");
                    failed.push((id, m));
                    errors += 1;
                }
            }
        }
        let Some(remote) = self.remote.as_ref() else {
            return Ok(0);
        };
        // Manifests that could not be deleted still exist: keep theirs too.
        let doomed: Vec<String> = manifest::gc_objects(
            remote
                .retained
                .iter()
                .chain(failed.iter())
                .filter_map(|(_, m)| m.as_ref()),
            gone.iter().flatten(),
        )
        .into_iter()
        .collect();
        if let Some(remote) = self.remote.as_mut() {
            remote.superseded = failed;
        }
        let mut deleted = 0u64;
        for chunk in doomed.chunks(self.cfg.concurrency.max(1)) {
            if let Err(e) = self.fresh_lease().await {
                self.stats
                    .objects_deleted_total
                    .fetch_add(deleted, Ordering::Relaxed);
                return self.gc_interrupted(e, errors).map(|_| deleted);
            }
            // Sent only before the window of the last check closes.
            let until = self
                .fence
                .as_ref()
                .and_then(|f| f.checked_until(lease::GC_WINDOW));
            let mut set = JoinSet::new();
            for sha in chunk {
                let store = self.store.clone();
                let throttle = self.throttle.clone();
                let key = manifest::object_key(&prefix, sha);
                let sha = sha.clone();
                set.spawn(async move {
                    let _permit = throttle.acquire(0).await;
                    if until.is_some_and(|u| std::time::Instant::now() >= u) {
                        return (sha, None);
                    }
                    let r = store.delete_within(&key, lease::DELETE_TIMEOUT).await;
                    (sha, Some(r))
                });
            }
            while let Some(joined) = set.join_next().await {
                let Some(remote) = self.remote.as_mut() else {
                    continue;
                };
                match joined {
                    Ok((sha, Some(Ok(())))) => {
                        remote.present.remove(&sha);
                        deleted += 1;
                    }
                    Ok((sha, Some(Err(e)))) => {
                        // Leaked, not lost; forgotten so it is uploaded again if needed.
                        remote.present.remove(&sha);
                        tracing::warn!(object = %sha, error = %e, "cannot delete a superseded object");
                        errors += 1;
                    }
                    Ok((sha, None)) => {
                        tracing::warn!(object = %sha, "not deleted: the lease check is too old (left behind)");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "delete task failed");
                        errors += 1;
                    }
                }
            }
        }
        if errors > 0 {
            self.stats.errors_total.fetch_add(errors, Ordering::Relaxed);
        }
        self.stats
            .objects_deleted_total
            .fetch_add(deleted, Ordering::Relaxed);
        if deleted > 0 {
            tracing::info!(objects = deleted, "superseded checkpoint objects deleted");
        }
        Ok(deleted)
    }

    /// Checks the lease again when the last check is older than
    /// [`lease::GC_WINDOW`] (no-op without a lease).
    async fn fresh_lease(&mut self) -> Result<(), SyncError> {
        match &self.fence {
            Some(f) if !f.checked_within(lease::GC_WINDOW) => self.check_lease().await,
            _ => Ok(()),
        }
    }

    /// Garbage collection stopped by a failed lease check: a lost lease is
    /// the cycle's error, anything else is counted and retried later.
    fn gc_interrupted(&self, e: SyncError, errors: u64) -> Result<u64, SyncError> {
        self.stats.errors_total.fetch_add(
            errors + u64::from(!matches!(e, SyncError::Fenced(_))),
            Ordering::Relaxed,
        );
        match e {
            SyncError::Fenced(_) => Err(e),
            e => {
                tracing::warn!(error = %e, "cannot check the lease while deleting; retrying later");
                Ok(0)
            }
        }
    }
}

fn prefix_slash(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Hashes one file and uploads its content unless the replica has it.
async fn upload_file(
    store: Store,
    throttle: Throttle,
    prefix: String,
    root: PathBuf,
    f: LocalFile,
    present: Arc<HashSet<String>>,
) -> Result<FileResult, StoreError> {
    let path = root.join(&f.path);
    let io = |source: std::io::Error| StoreError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    if f.size <= MULTIPART_THRESHOLD {
        let _permit = throttle.acquire(f.size).await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileResult::Moved(f.path));
            }
            Err(e) => return Err(io(e)),
        };
        if bytes.len() as u64 != f.size || !unchanged(&path, &f).await {
            return Ok(FileResult::Moved(f.path));
        }
        let sha = sha256_bytes(&bytes);
        let uploaded = !present.contains(&sha);
        if uploaded {
            store
                .put(&manifest::object_key(&prefix, &sha), bytes)
                .await?;
        }
        return Ok(FileResult::Done {
            path: f.path,
            size: f.size,
            mtime: f.mtime_unix_ns,
            sha,
            uploaded,
        });
    }
    let (sha, n) = match sha256_file(&path).await {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileResult::Moved(f.path)),
        Err(e) => return Err(io(e)),
    };
    if n != f.size || !unchanged(&path, &f).await {
        return Ok(FileResult::Moved(f.path));
    }
    let uploaded = !present.contains(&sha);
    if uploaded {
        let _permit = throttle.acquire(PART_SIZE).await;
        match store
            .put_file_multipart(&manifest::object_key(&prefix, &sha), &path, &sha)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Changed { .. }) => return Ok(FileResult::Moved(f.path)),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileResult::Moved(f.path));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(FileResult::Done {
        path: f.path,
        size: f.size,
        mtime: f.mtime_unix_ns,
        sha,
        uploaded,
    })
}

/// The file still has the size and mtime the scan saw.
async fn unchanged(path: &Path, f: &LocalFile) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            m.len() == f.size && mtime == f.mtime_unix_ns
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_phases_follow_dependency_order() {
        assert_eq!(phase("q/state/0/1/3.delta"), 0);
        assert_eq!(phase("q/sources/0/0"), 0);
        assert_eq!(phase("q/metadata"), 0);
        assert_eq!(phase("metadata"), 0);
        assert_eq!(phase("q/offsets/3"), 1);
        assert_eq!(phase("offsets/.3.crc"), 1);
        assert_eq!(phase("q/commits/2"), 2);
    }

    #[test]
    fn retry_delay_grows_and_is_capped_by_the_interval() {
        let i = Duration::from_secs(30);
        let d: Vec<u64> = (1..=7).map(|n| retry_delay(n, i).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(1000, i), i);
        assert_eq!(
            retry_delay(3, Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn stats_snapshot_reports_lag() {
        let s = SyncStats::default();
        {
            let mut d = s.detail();
            d.local = BTreeMap::from([("a".into(), Some(9)), ("b".into(), Some(3))]);
            d.replicated = BTreeMap::from([("a".into(), Some(7))]);
        }
        let snap = s.snapshot();
        assert_eq!(snap.last_success_unix, None);
        assert_eq!(
            snap.queries,
            [
                QueryLag {
                    query: "a".into(),
                    local_committed_batch: Some(9),
                    replicated_batch: Some(7),
                    batches_behind: Some(2),
                },
                QueryLag {
                    query: "b".into(),
                    local_committed_batch: Some(3),
                    replicated_batch: None,
                    batches_behind: Some(4),
                },
            ]
        );
    }
}
