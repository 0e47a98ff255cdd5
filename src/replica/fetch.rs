//! Downloading a manifest's files into a staging directory.
//!
//! [`plan`] (pure) decides what is left to do after staging was reconciled:
//! one download per distinct content not yet staged, contents above
//! [`MULTIPART_THRESHOLD`] as [`PART_SIZE`] ranges, and copies for the
//! other paths with that content. [`fetch`] runs it: every range is a
//! resumable download into `.sparkvisor-parts/` (`crate::s3::download`),
//! a content is verified as a whole (size and SHA-256) and only then
//! renamed to its path and copied to the others.
//!
//! Invariants: a content that fails its check is downloaded once more from
//! scratch; failing again, or missing, or of another size, the manifest is
//! broken ([`FetchError::Broken`]); a download that gives up is a request
//! failure (the caller retries later, keeping what is staged). Nothing is
//! held in memory beyond a chunk per request in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::manifest::{self, FileEntry, Manifest};
use super::staging::{Staging, hash_file, set_mtime};
use crate::beat::Beat;
use crate::s3::download::{Download, DownloadError, Patience, Span};
use crate::s3::{MULTIPART_THRESHOLD, PART_SIZE, Store};

/// One distinct content with something left to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub sha256: String,
    pub size: u64,
    /// A staged path already holding this content, verified.
    pub source: Option<String>,
    /// Paths with this content that are not staged yet (the first one
    /// receives the download when there is no `source`).
    pub missing: Vec<FileEntry>,
    /// Ranges to download (empty when `source` is set).
    pub parts: Vec<Span>,
}

/// What is left to do for `m` when `verified` paths are staged already.
pub fn plan(m: &Manifest, verified: &BTreeSet<String>) -> Vec<Object> {
    let mut by_content: BTreeMap<&str, Vec<&FileEntry>> = BTreeMap::new();
    for f in &m.files {
        by_content.entry(f.sha256.as_str()).or_default().push(f);
    }
    let mut out = Vec::new();
    for (sha, files) in by_content {
        let source = files
            .iter()
            .find(|f| verified.contains(&f.path))
            .map(|f| f.path.clone());
        let missing: Vec<FileEntry> = files
            .iter()
            .filter(|f| !verified.contains(&f.path))
            .map(|f| (*f).clone())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let size = files[0].size;
        let parts = if source.is_some() {
            vec![]
        } else if size <= MULTIPART_THRESHOLD {
            vec![Span {
                start: 0,
                end: Some(size),
            }]
        } else {
            (0..size.div_ceil(PART_SIZE))
                .map(|i| Span {
                    start: i * PART_SIZE,
                    end: Some(((i + 1) * PART_SIZE).min(size)),
                })
                .collect()
        };
        out.push(Object {
            sha256: sha.to_string(),
            size,
            source,
            missing,
            parts,
        });
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The replica does not hold what the manifest promises.
    #[error("{0}")]
    Broken(String),
    /// The server kept failing: worth trying again later.
    #[error(transparent)]
    Failed(DownloadError),
    #[error("writing {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// What every object's task needs.
struct Ctx {
    store: Store,
    prefix: String,
    staging: PathBuf,
    parts: PathBuf,
    patience: Patience,
    slots: Semaphore,
    /// One permit per file job running on the blocking pool (those cannot
    /// be aborted): [`fetch`] returns only when all are back.
    jobs: Arc<Semaphore>,
    beat: Beat,
}

/// More file jobs than can ever run at once.
const JOBS: u32 = 1 << 20;

/// Downloads, verifies and places everything [`plan`] lists for `m`.
pub async fn fetch(
    store: &Store,
    prefix: &str,
    m: &Manifest,
    staging: &Staging,
    verified: &BTreeSet<String>,
    transfer: (Patience, usize),
    beat: &Beat,
) -> Result<(), FetchError> {
    let (patience, concurrency) = transfer;
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        prefix: prefix.to_string(),
        staging: staging.dir.clone(),
        parts: staging.parts(),
        patience,
        slots: Semaphore::new(concurrency.max(1)),
        jobs: Arc::new(Semaphore::new(JOBS as usize)),
        beat: beat.clone(),
    });
    let mut set = JoinSet::new();
    for obj in plan(m, verified) {
        set.spawn(object(ctx.clone(), obj));
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let r = match joined {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => continue,
            Err(e) => Err(FetchError::Io(
                ctx.staging.clone(),
                io::Error::other(format!("download task: {e}")),
            )),
        };
        if let Err(e) = r {
            // A broken manifest outranks what the aborted tasks report.
            let replace = match (&first_error, &e) {
                (None, _) => true,
                (Some(FetchError::Broken(_)), _) => false,
                (Some(_), FetchError::Broken(_)) => true,
                _ => false,
            };
            if replace {
                first_error = Some(e);
            }
            set.abort_all();
        }
    }
    // Aborted tasks may have left file jobs running: nothing may write into
    // staging once this returns (the next try reconciles it).
    let _quiet = ctx.jobs.acquire_many(JOBS).await;
    first_error.map_or(Ok(()), Err)
}

/// One content: copies from a staged path, or download → verify → place.
async fn object(ctx: Arc<Ctx>, obj: Object) -> Result<(), FetchError> {
    let key = manifest::object_key(&ctx.prefix, &obj.sha256);
    if let Some(source) = obj.source.clone() {
        return blocking(&ctx, move |ctx| place_copies(ctx, &source, &obj.missing)).await;
    }
    let first = obj.missing[0].path.clone();
    let paths: Vec<PathBuf> = if obj.parts.len() == 1 {
        vec![ctx.parts.join(&obj.sha256)]
    } else {
        (0..obj.parts.len())
            .map(|i| ctx.parts.join(format!("{}.{i}", obj.sha256)))
            .collect()
    };
    let mut mismatch = String::new();
    for round in 0..2 {
        let mut set = JoinSet::new();
        for (span, part) in obj.parts.iter().zip(&paths) {
            let (ctx, key, span, part, size) =
                (ctx.clone(), key.clone(), *span, part.clone(), obj.size);
            set.spawn(async move {
                Download {
                    store: &ctx.store,
                    key: &key,
                    span,
                    part: &part,
                    expect_size: Some(size),
                    patience: ctx.patience,
                    slots: &ctx.slots,
                    beat: &ctx.beat,
                }
                .run()
                .await
            });
        }
        while let Some(joined) = set.join_next().await {
            let r = joined.map_err(|e| {
                FetchError::Io(
                    ctx.parts.clone(),
                    io::Error::other(format!("download task: {e}")),
                )
            })?;
            if let Err(e) = r {
                set.abort_all();
                return Err(match e {
                    DownloadError::NotFound { key, .. } => {
                        FetchError::Broken(format!("{first}: object {key} is missing"))
                    }
                    DownloadError::WrongSize { key, size, .. } => FetchError::Broken(format!(
                        "{first}: object {key} has {} bytes, the manifest says {}",
                        size.map_or("fewer".to_string(), |n| n.to_string()),
                        obj.size
                    )),
                    DownloadError::Io { path, source } => FetchError::Io(path, source),
                    e @ DownloadError::GaveUp { .. } => FetchError::Failed(e),
                });
            }
        }
        let (o, p, k) = (obj.clone(), paths.clone(), key.clone());
        match blocking(&ctx, move |ctx| verify_and_place(ctx, &o, &p, &k)).await? {
            Ok(()) => return Ok(()),
            Err(reason) => {
                if round == 0 {
                    tracing::warn!(%reason, "a downloaded file failed its check; downloading it once more");
                }
                mismatch = reason;
            }
        }
    }
    Err(FetchError::Broken(mismatch))
}

/// Runs `f` off the async threads.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    let c = ctx.clone();
    // The semaphore is never closed.
    let permit = ctx.jobs.clone().acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&c)
    })
    .await
    .map_err(|e| FetchError::Io(ctx.staging.clone(), io::Error::other(e)))?
}

/// Checks the downloaded content as a whole (merging ranges into one file
/// while hashing), then renames it to its first path and copies it to the
/// others. `Ok(Err(reason))`: the content is wrong (its parts are removed).
fn verify_and_place(
    ctx: &Ctx,
    obj: &Object,
    parts: &[PathBuf],
    key: &str,
) -> Result<Result<(), String>, FetchError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| FetchError::Io(p, e)
    };
    let (file, sha, len) = if parts.len() == 1 {
        let (sha, len) = hash_file(&parts[0], &ctx.beat).map_err(io(&parts[0]))?;
        (parts[0].clone(), sha, len)
    } else {
        let merged = ctx.parts.join(format!("{}.merged", obj.sha256));
        let (sha, len) = merge(parts, &merged, &ctx.beat).map_err(io(&merged))?;
        (merged, sha, len)
    };
    if len != obj.size || sha != obj.sha256 {
        for p in parts.iter().chain(std::iter::once(&file)) {
            let _ = std::fs::remove_file(p);
        }
        return Ok(Err(format!(
            "{}: checksum mismatch (object {key} has sha256 {sha}, {len} bytes)",
            obj.missing[0].path
        )));
    }
    let first = &obj.missing[0];
    let dst = ctx.staging.join(&first.path);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::rename(&file, &dst).map_err(io(&dst))?;
    set_mtime(&dst, first.mtime_unix_ms).map_err(io(&dst))?;
    if parts.len() > 1 {
        for p in parts {
            let _ = std::fs::remove_file(p);
        }
    }
    ctx.beat.items(1);
    place_copies(ctx, &first.path, &obj.missing[1..])?;
    Ok(Ok(()))
}

/// Concatenates `parts` into `out` while hashing; fsyncs `out`.
fn merge(parts: &[PathBuf], out: &Path, beat: &Beat) -> io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut w = std::fs::File::create(out)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for p in parts {
        let mut r = std::fs::File::open(p)?;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            total += n as u64;
            beat.worked();
        }
    }
    w.sync_all()?;
    Ok((hex::encode(h.finalize()), total))
}

/// Copies the staged `source` to each of `to` (same content), fsynced.
fn place_copies(ctx: &Ctx, source: &str, to: &[FileEntry]) -> Result<(), FetchError> {
    let src = ctx.staging.join(source);
    for f in to {
        let dst = ctx.staging.join(&f.path);
        let r = (|| {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Through a temporary name: a crash leaves no short file at a
            // path that reconciling would hash for nothing.
            let tmp = ctx.parts.join(format!("{}.copy", f.sha256));
            std::fs::copy(&src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            set_mtime(&dst, f.mtime_unix_ms)
        })();
        r.map_err(|e| FetchError::Io(dst.clone(), e))?;
        ctx.beat.bytes(f.size);
        ctx.beat.items(1);
    }
    Ok(())
}

/// Every manifest path is a file in staging (a last check before the move).
pub fn complete(staging: &Staging, m: &Manifest) -> Result<(), String> {
    let missing: Vec<&str> = m
        .files
        .iter()
        .filter(|f| !staging.dir.join(&f.path).is_file())
        .map(|f| f.path.as_str())
        .take(5)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not staged: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::manifest::FORMAT;

    fn entry(path: &str, sha: char, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            sha256: std::iter::repeat_n(sha, 64).collect(),
            mtime_unix_ms: 0,
        }
    }

    fn m(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            generation: 1,
            lease_generation: 0,
            writer: "w".into(),
            created_unix_ms: 0,
            queries: vec![],
            files,
        }
    }

    #[test]
    fn one_download_per_content_ranges_for_large_ones_nothing_for_staged() {
        let big = 2 * PART_SIZE + 3;
        let man = m(vec![
            entry("q/commits/0", 'a', 10),
            entry("q/commits/1", 'a', 10),
            entry("q/state/1.snapshot", 'b', big),
            entry("q/offsets/0", 'c', 5),
            entry("q/metadata", 'd', 7),
        ]);
        let verified = BTreeSet::from(["q/commits/1".to_string(), "q/metadata".to_string()]);
        let p = plan(&man, &verified);
        assert_eq!(p.len(), 3, "{p:?}");
        // Same content staged under another path: a copy, no download.
        assert_eq!(p[0].source.as_deref(), Some("q/commits/1"));
        assert_eq!(p[0].missing[0].path, "q/commits/0");
        assert!(p[0].parts.is_empty());
        // Large: three ranges, the last one short.
        let spans: Vec<(u64, Option<u64>)> = p[1].parts.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(
            spans,
            [
                (0, Some(PART_SIZE)),
                (PART_SIZE, Some(2 * PART_SIZE)),
                (2 * PART_SIZE, Some(big))
            ]
        );
        // Small: one whole-object span.
        assert_eq!(
            p[2].parts,
            [Span {
                start: 0,
                end: Some(5)
            }]
        );
        // Everything staged: nothing to do.
        let all: BTreeSet<String> = man.files.iter().map(|f| f.path.clone()).collect();
        assert!(plan(&man, &all).is_empty());
    }

    #[test]
    fn an_empty_file_is_one_empty_span() {
        let p = plan(&m(vec![entry("q/x", 'e', 0)]), &BTreeSet::new());
        assert_eq!(p[0].parts.len(), 1);
        assert!(p[0].parts[0].is_empty());
    }
}
