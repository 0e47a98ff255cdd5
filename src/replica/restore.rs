//! Restore: bring the checkpoint back from the replica before Spark starts.
//!
//! [`decide`] (pure) says whether the local checkpoint should be replaced;
//! [`restore_if_needed`] is what `run` calls before the first start;
//! [`restore_to`] is the operator command's unconditional restore into a
//! new or empty directory. The work is done by `staging` (where files are
//! written, how they take the target's place) and `fetch` (downloading a
//! manifest's contents, resumably).
//!
//! Invariants:
//! - Manifests are tried newest first; a manifest that is unreadable, or
//!   whose objects are missing, of another size or fail their SHA-256
//!   check, is skipped for the previous one. Request failures (server down,
//!   a download that gives up) are errors, never a reason to fall back.
//! - Files are written into a staging directory and moved into place only
//!   when every file is verified and on disk: the target is never half
//!   restored. What a failed try (or an earlier sparkvisor) staged is kept
//!   and reused when it matches, so a retry resumes instead of starting
//!   over.
//! - A non-empty local checkpoint that is replaced is moved aside
//!   (`<dir>.pre-restore/<UTC time>/`, or `.sparkvisor-pre-restore/<UTC
//!   time>/` inside a mount point), never deleted by that restore; at most
//!   `checkpoint.s3.keep_moved_aside` copies are kept.
//! - Progress (bytes staged, files placed, each stage) goes to the caller's
//!   [`Beat`], so liveness can follow it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::fetch::{self, FetchError};
use super::manifest::{self, Manifest, ManifestId, QueryEntry};
use super::snapshot;
use super::staging::{self, Interrupted, Staging};
use crate::beat::Beat;
use crate::config::{CheckpointConfig, S3Config};
use crate::s3::download::{DownloadError, Patience};
use crate::s3::{Location, S3Settings, Store, StoreError};

pub use super::staging::INCOMPLETE_MARKER;

/// How a restore transfers and what it keeps.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Requests in flight.
    pub concurrency: usize,
    pub patience: Patience,
    /// Replaced local copies kept aside (at least 1).
    pub keep_moved_aside: usize,
    pub beat: Beat,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions::from_config(&S3Config::default(), Beat::none())
    }
}

impl RestoreOptions {
    pub fn from_config(c: &S3Config, beat: Beat) -> RestoreOptions {
        RestoreOptions {
            concurrency: c.concurrency.max(1),
            patience: Patience::new(c.read_stall_timeout.get()),
            keep_moved_aside: c.keep_moved_aside.max(1) as usize,
            beat,
        }
    }
}

/// A concurrency alone: the defaults for everything else.
impl From<usize> for RestoreOptions {
    fn from(concurrency: usize) -> Self {
        RestoreOptions {
            concurrency: concurrency.max(1),
            ..RestoreOptions::default()
        }
    }
}

/// Whether to replace the local checkpoint with a manifest's copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Restore(String),
    KeepLocal(String),
}

fn show(b: Option<u64>) -> String {
    b.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn label(q: &str) -> String {
    if q.is_empty() {
        "(root)".to_string()
    } else {
        q.to_string()
    }
}

/// Restore when the local checkpoint is missing or empty, or when the
/// replica is ahead for some query and behind for none. A local copy that
/// is ahead anywhere is kept (the replica only lags the local disk).
pub fn decide(local_has_files: bool, local: &[QueryEntry], remote: &[QueryEntry]) -> Decision {
    if !local_has_files {
        return Decision::Restore("the local checkpoint is missing or empty".into());
    }
    let local_of = |p: &str| {
        local
            .iter()
            .find(|q| q.path == p)
            .and_then(|q| q.latest_committed_batch)
    };
    let remote_of = |p: &str| {
        remote
            .iter()
            .find(|q| q.path == p)
            .and_then(|q| q.latest_committed_batch)
    };
    let behind: Vec<String> = remote
        .iter()
        .filter(|r| r.latest_committed_batch > local_of(&r.path))
        .map(|r| {
            format!(
                "{}: local batch {} < replica batch {}",
                label(&r.path),
                show(local_of(&r.path)),
                show(r.latest_committed_batch)
            )
        })
        .collect();
    let ahead: Vec<String> = local
        .iter()
        .filter(|l| l.latest_committed_batch > remote_of(&l.path))
        .map(|l| {
            format!(
                "{}: local batch {} > replica batch {}",
                label(&l.path),
                show(l.latest_committed_batch),
                show(remote_of(&l.path))
            )
        })
        .collect();
    match (behind.is_empty(), ahead.is_empty()) {
        (true, true) => Decision::KeepLocal("the local checkpoint matches the replica".into()),
        (true, false) => Decision::KeepLocal(format!(
            "the local checkpoint is newer ({})",
            ahead.join("; ")
        )),
        (false, true) => Decision::Restore(format!(
            "the local checkpoint is older ({})",
            behind.join("; ")
        )),
        (false, false) => Decision::KeepLocal(format!(
            "the local checkpoint is newer for some queries and older for others; keeping it ({}; {})",
            ahead.join("; "),
            behind.join("; ")
        )),
    }
}

/// A manifest that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub manifest: String,
    pub reason: String,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The manifest's object key.
    pub manifest: String,
    pub generation: u64,
    pub queries: Vec<QueryEntry>,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Newer manifests that could not be used.
    pub skipped: Vec<Skipped>,
    /// Where the replaced local checkpoint was moved.
    pub moved_aside: Option<PathBuf>,
    /// Bytes earlier tries (or an earlier sparkvisor) had staged already.
    pub reused_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// Replication is off or `restore_on_start = false`.
    Disabled,
    /// The replica has no manifest: Spark starts fresh.
    NoManifest,
    KeptLocal {
        reason: String,
        skipped: Vec<Skipped>,
    },
    Restored(RestoreReport),
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("checkpoint.s3.uri = {uri:?}: {message}")]
    Config { uri: String, message: String },
    #[error("`checkpoint.dir` must be set when checkpoint.s3.uri is set")]
    NoDir,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Download(DownloadError),
    #[error("{context} {path}: {source}")]
    Local {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not empty: restore into a new or empty directory")]
    TargetNotEmpty(PathBuf),
    #[error("{location}: no manifest to restore")]
    NothingToRestore { location: String },
    #[error("{location}: no usable manifest ({})", .tried.iter().map(|s| format!("{}: {}", s.manifest, s.reason)).collect::<Vec<_>>().join("; "))]
    NoUsableManifest {
        location: String,
        tried: Vec<Skipped>,
    },
}

fn local_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RestoreError + use<> {
    let path = path.to_path_buf();
    move |source| RestoreError::Local {
        context,
        path,
        source,
    }
}

/// Manifests in the replica, newest first (one listing).
pub async fn list_manifests(store: &Store, loc: &Location) -> Result<Vec<ManifestId>, StoreError> {
    let keys = store.list(&manifest::manifests_prefix(&loc.prefix)).await?;
    Ok(manifest::newest_first(
        keys.iter()
            .filter_map(|k| ManifestId::parse_key(&loc.prefix, k))
            .collect(),
    ))
}

/// Reads one manifest: `Ok(Err(reason))` when it exists but is unusable
/// (missing since the listing, unparsable, invalid).
pub async fn load_manifest(
    store: &Store,
    loc: &Location,
    id: &ManifestId,
) -> Result<Result<Manifest, String>, StoreError> {
    match store.get(&id.key(&loc.prefix)).await {
        Ok(bytes) => Ok(Manifest::from_json(&bytes, id).map_err(|e| e.to_string())),
        Err(StoreError::NotFound { .. }) => Ok(Err("the manifest disappeared".into())),
        Err(e) => Err(e),
    }
}

/// `run`'s entry point: restores `[checkpoint] dir` from `[checkpoint.s3]`
/// when replication and `restore_on_start` are on and [`decide`] says so.
pub async fn restore_if_needed(
    cfg: &CheckpointConfig,
    beat: &Beat,
) -> Result<RestoreOutcome, RestoreError> {
    let Some(uri) = &cfg.s3.uri else {
        return Ok(RestoreOutcome::Disabled);
    };
    if !cfg.s3.restore_on_start {
        return Ok(RestoreOutcome::Disabled);
    }
    let dir = cfg.dir.as_ref().ok_or(RestoreError::NoDir)?;
    let loc = Location::parse(uri).map_err(|message| RestoreError::Config {
        uri: uri.clone(),
        message,
    })?;
    let settings = S3Settings::from_config(&cfg.s3);
    let store = Store::connect(&settings, &loc.bucket).await;
    let opts = RestoreOptions::from_config(&cfg.s3, beat.clone());
    restore_if_needed_with(&store, &loc, dir, opts).await
}

/// [`restore_if_needed`] with an explicit connection.
pub async fn restore_if_needed_with(
    store: &Store,
    loc: &Location,
    dir: &Path,
    opts: impl Into<RestoreOptions>,
) -> Result<RestoreOutcome, RestoreError> {
    let opts = opts.into();
    let started = Instant::now();
    // An in-place move a crash interrupted is finished first: its staging
    // copy was complete.
    let d = dir.to_path_buf();
    let interrupted = blocking("finishing an interrupted restore of", dir, move || {
        staging::finish_interrupted(&d)
    })
    .await?;
    opts.beat.doing("listing manifests");
    let ids = list_manifests(store, loc).await?;
    if ids.is_empty() {
        tracing::info!(replica = %loc, "no checkpoint manifest in the replica: starting fresh");
        return Ok(RestoreOutcome::NoManifest);
    }
    opts.beat.doing("reading the local checkpoint");
    let d = dir.to_path_buf();
    let (has_files, local) =
        blocking("scanning", dir, move || snapshot::local_progress(&d)).await?;
    let has_files = has_files && interrupted != Interrupted::Unknown;
    restore_from(
        store,
        loc,
        dir,
        &opts,
        ids,
        Some((has_files, local)),
        started,
    )
    .await
}

/// Restores the newest usable manifest into `dir`, which must be missing
/// or empty (the operator command).
pub async fn restore_to(
    store: &Store,
    loc: &Location,
    dir: &Path,
    opts: impl Into<RestoreOptions>,
) -> Result<RestoreOutcome, RestoreError> {
    let opts = opts.into();
    let started = Instant::now();
    ensure_empty(dir)?;
    let ids = list_manifests(store, loc).await?;
    if ids.is_empty() {
        return Err(RestoreError::NothingToRestore {
            location: loc.to_string(),
        });
    }
    restore_from(store, loc, dir, &opts, ids, None, started).await
}

/// Restores one given manifest into `dir`, which must be missing or
/// empty (tests, and operators picking an older copy).
pub async fn restore_manifest(
    store: &Store,
    loc: &Location,
    id: &ManifestId,
    dir: &Path,
    opts: impl Into<RestoreOptions>,
) -> Result<RestoreReport, RestoreError> {
    let opts = opts.into();
    let started = Instant::now();
    ensure_empty(dir)?;
    match restore_from(store, loc, dir, &opts, vec![id.clone()], None, started).await? {
        RestoreOutcome::Restored(r) => Ok(r),
        other => Err(RestoreError::NoUsableManifest {
            location: loc.to_string(),
            tried: match other {
                RestoreOutcome::KeptLocal { skipped, .. } => skipped,
                _ => vec![],
            },
        }),
    }
}

fn ensure_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(RestoreError::TargetNotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(local_err("reading", dir)(e)),
    }
}

/// Runs file work off the async threads; errors name `context` and `path`.
async fn blocking<T: Send + 'static>(
    context: &'static str,
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| local_err(context, path)(io::Error::other(e)))?
        .map_err(local_err(context, path))
}

async fn restore_from(
    store: &Store,
    loc: &Location,
    dir: &Path,
    opts: &RestoreOptions,
    ids: Vec<ManifestId>,
    local: Option<(bool, Vec<QueryEntry>)>,
    started: Instant,
) -> Result<RestoreOutcome, RestoreError> {
    let mut skipped = Vec::new();
    for id in ids {
        let key = id.key(&loc.prefix);
        opts.beat.doing("reading a manifest");
        let m = match load_manifest(store, loc, &id).await? {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(manifest = %key, %reason, "skipping an unusable checkpoint manifest");
                skipped.push(Skipped {
                    manifest: key,
                    reason,
                });
                continue;
            }
        };
        if let Some((has_files, queries)) = &local {
            match decide(*has_files, queries, &m.queries) {
                Decision::KeepLocal(reason) => {
                    tracing::info!(manifest = %key, %reason, "keeping the local checkpoint");
                    tidy_after_keeping(dir, opts).await?;
                    return Ok(RestoreOutcome::KeptLocal { reason, skipped });
                }
                Decision::Restore(reason) => {
                    tracing::info!(manifest = %key, %reason, "restoring the checkpoint from the replica");
                }
            }
        }
        let (moved_aside, reused_bytes) = match restore_one(store, &loc.prefix, &m, dir, opts).await
        {
            Ok(r) => r,
            Err(Attempt::Broken(reason)) => {
                tracing::warn!(manifest = %key, %reason, "checkpoint manifest is broken; trying the previous one");
                skipped.push(Skipped {
                    manifest: key,
                    reason,
                });
                continue;
            }
            Err(Attempt::Failed(e)) => return Err(e),
        };
        let report = RestoreReport {
            manifest: key,
            generation: m.generation,
            files: m.files.len(),
            bytes: m.total_bytes(),
            queries: m.queries,
            seconds: started.elapsed().as_secs_f64(),
            skipped,
            moved_aside,
            reused_bytes,
        };
        tracing::info!(
            manifest = %report.manifest,
            batches = ?report.queries.iter().map(|q| (q.path.as_str(), q.latest_committed_batch)).collect::<Vec<_>>(),
            files = report.files,
            bytes = report.bytes,
            reused_bytes = report.reused_bytes,
            seconds = report.seconds,
            "checkpoint restored"
        );
        return Ok(RestoreOutcome::Restored(report));
    }
    Err(RestoreError::NoUsableManifest {
        location: loc.to_string(),
        tried: skipped,
    })
}

/// The local copy stays: an earlier restore's staging is not needed, and
/// copies moved aside beyond the bound go (a crash may have left one more).
async fn tidy_after_keeping(dir: &Path, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let (d, keep) = (dir.to_path_buf(), opts.keep_moved_aside);
    let removed = blocking("removing an unused staging copy beside", dir, move || {
        staging::prune_moved_aside(&d, keep)?;
        staging::discard(&d)
    })
    .await?;
    if removed {
        tracing::info!(dir = %dir.display(), "removed the staging copy of an earlier restore");
    }
    Ok(())
}

/// How restoring one manifest went wrong.
enum Attempt {
    /// The manifest cannot be restored: try the previous one.
    Broken(String),
    Failed(RestoreError),
}

/// Stages `m` (reusing what is staged), then moves it into `dir`.
/// Returns where the replaced local copy went and the bytes reused.
async fn restore_one(
    store: &Store,
    prefix: &str,
    m: &Manifest,
    dir: &Path,
    opts: &RestoreOptions,
) -> Result<(Option<PathBuf>, u64), Attempt> {
    let beat = &opts.beat;
    beat.doing("checking staged files");
    beat.expect(m.total_bytes(), m.files.len() as u64);
    let (d, man, b) = (dir.to_path_buf(), m.clone(), beat.clone());
    let (staging, kept) = blocking("preparing a staging directory for", dir, move || {
        let s = Staging::open(&d)?;
        let r = s.reconcile(&man, &b)?;
        Ok((s, r))
    })
    .await
    .map_err(Attempt::Failed)?;
    let reused = kept.verified_bytes + kept.partial_bytes;
    if reused > 0 {
        tracing::info!(
            staged_files = kept.verified.len(),
            staged_bytes = kept.verified_bytes,
            partial_bytes = kept.partial_bytes,
            "resuming a restore: keeping what earlier tries staged"
        );
    }
    beat.doing("downloading");
    fetch::fetch(
        store,
        prefix,
        m,
        &staging,
        &kept.verified,
        (opts.patience, opts.concurrency),
        beat,
    )
    .await
    .map_err(|e| match e {
        FetchError::Broken(reason) => Attempt::Broken(reason),
        FetchError::Failed(e) => Attempt::Failed(RestoreError::Download(e)),
        FetchError::Io(path, source) => Attempt::Failed(RestoreError::Local {
            context: "writing",
            path,
            source,
        }),
    })?;
    beat.doing("moving into place");
    let keep = opts.keep_moved_aside;
    let (st, man) = (staging, m.clone());
    let moved_aside = blocking("moving the restored checkpoint into", dir, move || {
        fetch::complete(&st, &man).map_err(io::Error::other)?;
        st.commit(keep, SystemTime::now())
    })
    .await
    .map_err(Attempt::Failed)?;
    Ok((moved_aside, reused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(path: &str, batch: Option<u64>) -> QueryEntry {
        QueryEntry {
            path: path.into(),
            id: None,
            latest_committed_batch: batch,
            latest_offsets_batch: batch,
            last_commit_unix_ms: None,
            inflight_batch: None,
            inflight_since_unix_ms: None,
        }
    }

    fn restores(d: &Decision) -> bool {
        matches!(d, Decision::Restore(_))
    }

    #[test]
    fn missing_or_empty_local_restores() {
        assert!(restores(&decide(false, &[], &[q("", Some(3))])));
    }

    #[test]
    fn older_local_restores_and_newer_or_equal_keeps() {
        assert!(restores(&decide(
            true,
            &[q("", Some(2))],
            &[q("", Some(3))]
        )));
        assert!(!restores(&decide(
            true,
            &[q("", Some(3))],
            &[q("", Some(3))]
        )));
        assert!(!restores(&decide(
            true,
            &[q("", Some(5))],
            &[q("", Some(3))]
        )));
        // Local files but nothing committed yet: the replica is ahead.
        assert!(restores(&decide(true, &[q("", None)], &[q("", Some(0))])));
    }

    #[test]
    fn multi_query_roots_compare_per_query() {
        let remote = [q("a", Some(5)), q("b", Some(7))];
        // One query behind, none ahead: restore.
        let d = decide(true, &[q("a", Some(5)), q("b", Some(6))], &remote);
        assert!(restores(&d), "{d:?}");
        // A query missing locally is behind.
        assert!(restores(&decide(true, &[q("a", Some(5))], &remote)));
        // Mixed: keep local, never discard progress.
        let d = decide(true, &[q("a", Some(6)), q("b", Some(6))], &remote);
        assert!(!restores(&d));
        let Decision::KeepLocal(reason) = d else {
            unreachable!()
        };
        assert!(
            reason.contains("a: local batch 6 > replica batch 5"),
            "{reason}"
        );
        // A local-only query counts as ahead.
        assert!(!restores(&decide(
            true,
            &[q("a", Some(5)), q("b", Some(7)), q("c", Some(0))],
            &remote
        )));
    }
}
