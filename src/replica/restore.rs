//! Restore: bring the checkpoint back from the replica before Spark starts.
//!
//! [`decide`] (pure) says whether the local checkpoint should be replaced;
//! [`restore_if_needed`] is what `run` calls before the first start;
//! [`restore_to`] is the operator command's unconditional restore into a
//! new or empty directory.
//!
//! Invariants:
//! - Manifests are tried newest first; a manifest that is unreadable, or
//!   whose objects are missing or fail their size/SHA-256 check, is skipped
//!   for the previous one. Request failures (server down) are errors, never
//!   a reason to fall back.
//! - Files are written into a staging directory beside the target and
//!   renamed into place only when every file is verified: the target is
//!   never half restored. When the target is a mount point (it cannot be
//!   renamed) the staging directory is inside it and a marker file makes an
//!   interrupted move visible, so the next restore redoes it.
//! - A non-empty local checkpoint that is replaced is moved aside
//!   (`<dir>.pre-restore`, or `.sparkvisor-pre-restore/` inside a mount
//!   point), never deleted.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;

use super::manifest::{self, FileEntry, Manifest, ManifestId, QueryEntry};
use super::snapshot::{self, OWN_PREFIX};
use crate::config::CheckpointConfig;
use crate::s3::{
    Location, MULTIPART_THRESHOLD, PART_SIZE, S3Settings, Store, StoreError, Throttle,
    sha256_bytes, sha256_file,
};

/// Marker of an in-place restore whose final move did not finish.
pub const INCOMPLETE_MARKER: &str = ".sparkvisor-restore-incomplete";
const INPLACE_STAGING: &str = ".sparkvisor-restore";
const INPLACE_ASIDE: &str = ".sparkvisor-pre-restore";

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
pub async fn restore_if_needed(cfg: &CheckpointConfig) -> Result<RestoreOutcome, RestoreError> {
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
    restore_if_needed_with(&store, &loc, dir, settings.concurrency).await
}

/// [`restore_if_needed`] with an explicit connection.
pub async fn restore_if_needed_with(
    store: &Store,
    loc: &Location,
    dir: &Path,
    concurrency: usize,
) -> Result<RestoreOutcome, RestoreError> {
    let started = Instant::now();
    let ids = list_manifests(store, loc).await?;
    if ids.is_empty() {
        tracing::info!(replica = %loc, "no checkpoint manifest in the replica: starting fresh");
        return Ok(RestoreOutcome::NoManifest);
    }
    let d = dir.to_path_buf();
    let (has_files, local) = tokio::task::spawn_blocking(move || {
        let interrupted = d.join(INCOMPLETE_MARKER).exists();
        snapshot::local_progress(&d).map(|(has, q)| (has && !interrupted, q))
    })
    .await
    .map_err(|e| local_err("scanning", dir)(io::Error::other(e)))?
    .map_err(local_err("scanning", dir))?;
    restore_from(
        store,
        loc,
        dir,
        concurrency,
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
    concurrency: usize,
) -> Result<RestoreOutcome, RestoreError> {
    let started = Instant::now();
    ensure_empty(dir)?;
    let ids = list_manifests(store, loc).await?;
    if ids.is_empty() {
        return Err(RestoreError::NothingToRestore {
            location: loc.to_string(),
        });
    }
    restore_from(store, loc, dir, concurrency, ids, None, started).await
}

/// Restores one given manifest into `dir`, which must be missing or
/// empty (tests, and operators picking an older copy).
pub async fn restore_manifest(
    store: &Store,
    loc: &Location,
    id: &ManifestId,
    dir: &Path,
    concurrency: usize,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    ensure_empty(dir)?;
    match restore_from(
        store,
        loc,
        dir,
        concurrency,
        vec![id.clone()],
        None,
        started,
    )
    .await?
    {
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

async fn restore_from(
    store: &Store,
    loc: &Location,
    dir: &Path,
    concurrency: usize,
    ids: Vec<ManifestId>,
    local: Option<(bool, Vec<QueryEntry>)>,
    started: Instant,
) -> Result<RestoreOutcome, RestoreError> {
    let throttle = Throttle::new(concurrency);
    let mut skipped = Vec::new();
    for id in ids {
        let key = id.key(&loc.prefix);
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
                    return Ok(RestoreOutcome::KeptLocal { reason, skipped });
                }
                Decision::Restore(reason) => {
                    tracing::info!(manifest = %key, %reason, "restoring the checkpoint from the replica");
                }
            }
        }
        let target = dir.to_path_buf();
        let staging = off_runtime(move || prepare_staging(&target))
            .await
            .map_err(local_err("preparing a staging directory for", dir))?;
        match download(store, &loc.prefix, &m, &staging.dir, &throttle).await {
            Ok(()) => {}
            Err(DownloadError::Broken(reason)) => {
                tracing::warn!(manifest = %key, %reason, "checkpoint manifest is broken; trying the previous one");
                remove_tree_off_runtime(&staging.dir).await;
                skipped.push(Skipped {
                    manifest: key,
                    reason,
                });
                continue;
            }
            Err(e) => {
                remove_tree_off_runtime(&staging.dir).await;
                return Err(match e {
                    DownloadError::Store(e) => e.into(),
                    DownloadError::Io(path, source) => RestoreError::Local {
                        context: "writing",
                        path,
                        source,
                    },
                    DownloadError::Broken(_) => unreachable!("handled above"),
                });
            }
        }
        let target = dir.to_path_buf();
        let moved_aside = off_runtime(move || staging.commit(&target))
            .await
            .map_err(local_err("moving the restored checkpoint into", dir))?;
        let report = RestoreReport {
            manifest: key,
            generation: m.generation,
            files: m.files.len(),
            bytes: m.total_bytes(),
            queries: m.queries,
            seconds: started.elapsed().as_secs_f64(),
            skipped,
            moved_aside,
        };
        tracing::info!(
            manifest = %report.manifest,
            batches = ?report.queries.iter().map(|q| (q.path.as_str(), q.latest_committed_batch)).collect::<Vec<_>>(),
            files = report.files,
            bytes = report.bytes,
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

/// Runs file-tree work (walks, renames, `remove_dir_all` of a staging tree
/// of thousands of files) on a blocking thread, off the async runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Removes a staging tree, off the async runtime; a failure leaves it for
/// the next restore's `prepare_staging`.
async fn remove_tree_off_runtime(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = off_runtime(move || std::fs::remove_dir_all(dir)).await;
}

/// Where files are written before they are moved into place.
struct Staging {
    dir: PathBuf,
    /// The target is a mount point: staging lives inside it.
    in_place: bool,
}

fn prepare_staging(target: &Path) -> io::Result<Staging> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the target has no name"))?
        .to_string_lossy()
        .into_owned();
    let in_place = match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => m.dev() != std::fs::metadata(&parent)?.dev(),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the target exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let dir = if in_place {
        target.join(INPLACE_STAGING)
    } else {
        parent.join(format!(".{name}.sparkvisor-restore"))
    };
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    Ok(Staging { dir, in_place })
}

impl Staging {
    /// Moves the verified copy into `target`; returns where a replaced
    /// non-empty local checkpoint went.
    fn commit(self, target: &Path) -> io::Result<Option<PathBuf>> {
        if self.in_place {
            return self.commit_in_place(target);
        }
        let mut aside = None;
        match std::fs::read_dir(target) {
            Ok(mut it) => {
                if it.next().is_none() {
                    std::fs::remove_dir(target)?;
                } else {
                    let mut name = target.file_name().unwrap_or_default().to_os_string();
                    name.push(".pre-restore");
                    let to = target.with_file_name(name);
                    remove_if_exists(&to)?;
                    std::fs::rename(target, &to)?;
                    aside = Some(to);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::rename(&self.dir, target)?;
        Ok(aside)
    }

    fn commit_in_place(self, target: &Path) -> io::Result<Option<PathBuf>> {
        let marker = target.join(INCOMPLETE_MARKER);
        std::fs::write(&marker, b"a restore is moving files into this directory\n")?;
        let aside = target.join(INPLACE_ASIDE);
        remove_if_exists(&aside)?;
        let mut moved_any = false;
        for entry in std::fs::read_dir(target)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(OWN_PREFIX) {
                continue;
            }
            if !moved_any {
                std::fs::create_dir(&aside)?;
                moved_any = true;
            }
            std::fs::rename(entry.path(), aside.join(entry.file_name()))?;
        }
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            std::fs::rename(entry.path(), target.join(entry.file_name()))?;
        }
        std::fs::remove_dir(&self.dir)?;
        std::fs::remove_file(&marker)?;
        Ok(moved_any.then_some(aside))
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

enum DownloadError {
    /// The replica does not hold what the manifest promises.
    Broken(String),
    Store(StoreError),
    Io(PathBuf, io::Error),
}

enum Job {
    Whole(FileEntry),
    Part {
        file: FileEntry,
        /// Which large file (for completion tracking).
        index: usize,
        start: u64,
        len: u64,
    },
}

/// A file downloaded by ranges is checked as a whole.
async fn verify_large(path: &Path, f: &FileEntry, key: &str) -> Result<(), DownloadError> {
    let (sha, n) = sha256_file(path)
        .await
        .map_err(|e| DownloadError::Io(path.to_path_buf(), e))?;
    if n != f.size || sha != f.sha256 {
        return Err(DownloadError::Broken(format!(
            "{}: checksum mismatch (object {key} has sha256 {sha})",
            f.path
        )));
    }
    set_mtime(path, f.mtime_unix_ms).map_err(|e| DownloadError::Io(path.to_path_buf(), e))
}

/// Downloads and verifies every file of `m` into `dir`.
async fn download(
    store: &Store,
    prefix: &str,
    m: &Manifest,
    dir: &Path,
    throttle: &Throttle,
) -> Result<(), DownloadError> {
    // One download per distinct content; the other paths are copies.
    let mut by_content: BTreeMap<&str, Vec<&FileEntry>> = BTreeMap::new();
    for f in &m.files {
        by_content.entry(f.sha256.as_str()).or_default().push(f);
    }
    let dirs: std::collections::BTreeSet<PathBuf> = m
        .files
        .iter()
        .filter_map(|f| dir.join(&f.path).parent().map(Path::to_path_buf))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| DownloadError::Io(d.clone(), e))?;
    }
    let mut jobs = Vec::new();
    // Per large file: its entry and how many of its parts are still running.
    let mut large: Vec<(FileEntry, usize)> = Vec::new();
    for files in by_content.values() {
        let f = files[0].clone();
        if f.size <= MULTIPART_THRESHOLD {
            jobs.push(Job::Whole(f));
        } else {
            let path = dir.join(&f.path);
            std::fs::File::create(&path)
                .and_then(|h| h.set_len(f.size))
                .map_err(|e| DownloadError::Io(path.clone(), e))?;
            let mut start = 0;
            let mut parts = 0;
            while start < f.size {
                let len = PART_SIZE.min(f.size - start);
                jobs.push(Job::Part {
                    file: f.clone(),
                    index: large.len(),
                    start,
                    len,
                });
                start += len;
                parts += 1;
            }
            large.push((f, parts));
        }
    }
    // Each job reports the large file whose part it wrote; when a file's
    // last part is in, its verification joins the running downloads.
    let mut set: JoinSet<Result<Option<usize>, DownloadError>> = JoinSet::new();
    for job in jobs {
        let store = store.clone();
        let throttle = throttle.clone();
        let prefix = prefix.to_string();
        let dir = dir.to_path_buf();
        set.spawn(async move { run_job(&store, &throttle, &prefix, &dir, job).await });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let r = joined.unwrap_or_else(|e| {
            Err(DownloadError::Io(
                dir.to_path_buf(),
                io::Error::other(format!("download task: {e}")),
            ))
        });
        match r {
            Ok(Some(index)) => {
                large[index].1 -= 1;
                if large[index].1 == 0 {
                    let f = large[index].0.clone();
                    let path = dir.join(&f.path);
                    let key = manifest::object_key(prefix, &f.sha256);
                    set.spawn(async move {
                        verify_large(&path, &f, &key).await?;
                        Ok(None)
                    });
                }
            }
            Ok(None) => {}
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
                set.abort_all();
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Copies of identical contents.
    let dir = dir.to_path_buf();
    let copies: Vec<(FileEntry, FileEntry)> = by_content
        .values()
        .flat_map(|files| files[1..].iter().map(|f| (files[0].clone(), (*f).clone())))
        .collect();
    tokio::task::spawn_blocking(move || {
        for (from, to) in copies {
            let dst = dir.join(&to.path);
            std::fs::copy(dir.join(&from.path), &dst)
                .and_then(|_| set_mtime(&dst, to.mtime_unix_ms))
                .map_err(|e| DownloadError::Io(dst.clone(), e))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| DownloadError::Io(PathBuf::new(), io::Error::other(e)))?
}

async fn run_job(
    store: &Store,
    throttle: &Throttle,
    prefix: &str,
    dir: &Path,
    job: Job,
) -> Result<Option<usize>, DownloadError> {
    let missing = |f: &FileEntry, e: StoreError| match e {
        StoreError::NotFound { key, .. } => {
            DownloadError::Broken(format!("{}: object {key} is missing", f.path))
        }
        e => DownloadError::Store(e),
    };
    match job {
        Job::Whole(f) => {
            let key = manifest::object_key(prefix, &f.sha256);
            // Held until the bytes are on disk: the memory budget covers them.
            let _permit = throttle.acquire(f.size).await;
            let bytes = store.get(&key).await.map_err(|e| missing(&f, e))?;
            if bytes.len() as u64 != f.size {
                return Err(DownloadError::Broken(format!(
                    "{}: object {key} has {} bytes, the manifest says {}",
                    f.path,
                    bytes.len(),
                    f.size
                )));
            }
            let sha = sha256_bytes(&bytes);
            if sha != f.sha256 {
                return Err(DownloadError::Broken(format!(
                    "{}: checksum mismatch (object {key} has sha256 {sha})",
                    f.path
                )));
            }
            let path = dir.join(&f.path);
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut h = std::fs::File::create(&path)?;
                h.write_all(&bytes)?;
                h.set_modified(UNIX_EPOCH + Duration::from_millis(f.mtime_unix_ms.max(0) as u64))
            })
            .await
            .map_err(|e| DownloadError::Io(dir.to_path_buf(), io::Error::other(e)))?
            .map_err(|e| DownloadError::Io(dir.join(&f.path), e))?;
            Ok(None)
        }
        Job::Part {
            file,
            index,
            start,
            len,
        } => {
            let key = manifest::object_key(prefix, &file.sha256);
            let _permit = throttle.acquire(len).await;
            let bytes = store
                .get_range(&key, start, len)
                .await
                .map_err(|e| missing(&file, e))?;
            if bytes.len() as u64 != len {
                return Err(DownloadError::Broken(format!(
                    "{}: object {key} is shorter than the manifest says",
                    file.path
                )));
            }
            let path = dir.join(&file.path);
            tokio::task::spawn_blocking(move || {
                let h = std::fs::OpenOptions::new().write(true).open(&path)?;
                h.write_all_at(&bytes, start)
            })
            .await
            .map_err(|e| DownloadError::Io(dir.to_path_buf(), io::Error::other(e)))?
            .map_err(|e| DownloadError::Io(dir.join(&file.path), e))?;
            Ok(Some(index))
        }
    }
}

fn set_mtime(path: &Path, unix_ms: i64) -> io::Result<()> {
    let h = std::fs::OpenOptions::new().write(true).open(path)?;
    h.set_modified(UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64))
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

    #[test]
    fn staging_beside_the_target_and_commit_moves_old_copy_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        std::fs::create_dir_all(target.join("q")).unwrap();
        std::fs::write(target.join("q/old"), b"old").unwrap();
        let st = prepare_staging(&target).unwrap();
        assert!(!st.in_place);
        assert_eq!(st.dir, tmp.path().join(".ckpt.sparkvisor-restore"));
        std::fs::write(st.dir.join("new"), b"new").unwrap();
        let aside = st.commit(&target).unwrap();
        assert_eq!(aside, Some(tmp.path().join("ckpt.pre-restore")));
        assert_eq!(std::fs::read(target.join("new")).unwrap(), b"new");
        assert_eq!(
            std::fs::read(tmp.path().join("ckpt.pre-restore/q/old")).unwrap(),
            b"old"
        );
        assert!(!tmp.path().join(".ckpt.sparkvisor-restore").exists());

        // An empty target is simply replaced.
        let t2 = tmp.path().join("empty");
        std::fs::create_dir(&t2).unwrap();
        let st = prepare_staging(&t2).unwrap();
        std::fs::write(st.dir.join("x"), b"x").unwrap();
        assert_eq!(st.commit(&t2).unwrap(), None);
        assert!(t2.join("x").is_file());
    }

    #[test]
    fn in_place_commit_keeps_the_old_copy_and_clears_the_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("mnt");
        std::fs::create_dir_all(target.join("q")).unwrap();
        std::fs::write(target.join("q/old"), b"old").unwrap();
        let dir = target.join(INPLACE_STAGING);
        std::fs::create_dir_all(dir.join("q")).unwrap();
        std::fs::write(dir.join("q/new"), b"new").unwrap();
        let st = Staging {
            dir,
            in_place: true,
        };
        let aside = st.commit(&target).unwrap();
        assert_eq!(aside, Some(target.join(INPLACE_ASIDE)));
        assert!(target.join("q/new").is_file());
        assert!(!target.join("q/old").exists());
        assert!(target.join(INPLACE_ASIDE).join("q/old").is_file());
        assert!(!target.join(INCOMPLETE_MARKER).exists());
        assert!(!target.join(INPLACE_STAGING).exists());
    }
}
