//! Which local checkpoint files make a consistent copy, and the progress
//! they represent.
//!
//! [`scan`] lists the files under the checkpoint root (the only side effect
//! here); [`select`] decides, purely, which of them belong to the copy of
//! each query's latest committed batch N:
//!
//! - `metadata` and other non-batch files: always;
//! - `sources/<i>/<n>` (and `<n>.compact`) of a source that records a log
//!   offset in `offsets/` (the file source's `{"logOffset": n}`; `<i>` is
//!   the source's position in offset log v1, its id in v2): only up to
//!   the offset in the newest kept `offsets/` entry ([`trim_sources`]);
//!   other `sources/**` files always. Entries beyond it belong to batches
//!   the copy does not hold; kept, they would make a restored query plan
//!   those files differently while a file sink ahead of the copy skips the
//!   batch ids as already written;
//! - `commits/K` for K ≤ N; `offsets/K` for K ≤ N + 1 (the batch in flight
//!   is kept planned, exactly as Spark left it: on restart Spark replays it
//!   with the same offsets, which sinks that are idempotent per batch id
//!   rely on);
//! - `state/<op>/<part>/[<store>/]<V>.{delta,snapshot,zip,changelog}`
//!   (also `<V>_<id>.zip|changelog` of state checkpoint format v2, Spark
//!   4.0+, and their `<file>.crc` file checksums, Spark 4.1+) for V ≤ N + 1:
//!   batch N commits state version N + 1, so later versions belong to the
//!   batch in flight and are left out;
//! - transformWithState's operator metadata `state/<op>/_metadata/v2/<K>`
//!   and state schemas `state/<op>/_stateSchema/<family>/<K>_<id>` (Spark
//!   4.0+) for K ≤ N + 1: each is written by batch K (the first of a run),
//!   and Spark reads the newest at or below the batch it runs, so one from
//!   a batch the copy does not hold must not come back with it;
//! - other state files (`_metadata/metadata`, `_metadata/schema`, RocksDB
//!   `SSTs/…`) always;
//! - a file sink's commit log inside the query folder
//!   (`<sink>/_spark_metadata/<n>`, `<n>.compact`) for n ≤ N: the sink's
//!   batch n is the query's batch n, so sink and checkpoint are restored at
//!   the same batch and the replayed batches rewrite the sink's entries (its
//!   data files are kept; readers ignore files the log does not list);
//! - a `.NAME.crc` checksum file follows its `NAME`.
//!
//! Left out everywhere: empty (torn) `offsets`/`commits` files, temporary
//! files (`*.tmp`), non-numeric names inside `offsets/` and `commits/`, and
//! sparkvisor's own `.sparkvisor*` entries.
//!
//! A query is a folder holding `metadata`, `offsets/` or `commits/`: the
//! root itself, or each first-level subfolder (multi-query roots).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

pub use super::manifest::OWN_PREFIX;
use super::manifest::QueryEntry;
use crate::checkpoint::logfile;

/// A regular file under the checkpoint root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub size: u64,
    pub mtime_unix_ns: i128,
}

impl LocalFile {
    pub fn mtime_unix_ms(&self) -> i64 {
        (self.mtime_unix_ns / 1_000_000) as i64
    }
}

/// Lists every regular file under `root` (symlinks are not followed).
/// A missing root is an empty list. Files that disappear while walking are
/// skipped (Spark deletes old files concurrently).
pub fn scan(root: &Path) -> io::Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    walk(root, String::new(), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, rel: String, out: &mut Vec<LocalFile>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            // Spark never writes non-UTF-8 names; skip rather than mangle.
            continue;
        };
        if rel.is_empty() && name.starts_with(OWN_PREFIX) {
            continue;
        }
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            walk(&entry.path(), path, out)?;
        } else if meta.is_file() {
            let mtime_unix_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            out.push(LocalFile {
                path,
                size: meta.len(),
                mtime_unix_ns,
            });
        }
    }
    Ok(())
}

/// What a file is, as far as the copy of a batch is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Always,
    Offsets(u64),
    Commit(u64),
    State(u64),
    /// transformWithState's operator metadata or state schema of batch K.
    StateMeta(u64),
    /// `…/_spark_metadata/<n>` of a file sink inside the query folder.
    SinkLog(u64),
    Skip,
}

const QUERY_MARKERS: [&str; 3] = ["metadata", "offsets", "commits"];

fn is_temp(name: &str) -> bool {
    name.ends_with(".tmp") || name.ends_with(".tmp.crc")
}

/// `.NAME.crc` → `NAME`.
fn crc_target(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(".crc")
}

fn batch_number(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// `12.delta`, `12.snapshot`, `12.zip`, `12.changelog`, `12_<id>.zip`,
/// and a file checksum `12_<id>.changelog.crc` (Spark 4.1+) → 12.
fn state_version(name: &str) -> Option<u64> {
    let name = name.strip_suffix(".crc").unwrap_or(name);
    let (stem, ext) = name.rsplit_once('.')?;
    if !matches!(ext, "delta" | "snapshot" | "zip" | "changelog") {
        return None;
    }
    let digits = stem.split_once('_').map_or(stem, |(v, _)| v);
    batch_number(digits)
}

/// Classifies a path relative to its query folder.
fn classify(rel: &str) -> Kind {
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((&file, dirs)) = parts.split_last() else {
        return Kind::Skip;
    };
    if is_temp(file) {
        return Kind::Skip;
    }
    let name = crc_target(file).unwrap_or(file);
    match dirs {
        ["offsets"] => batch_number(name).map_or(Kind::Skip, Kind::Offsets),
        ["commits"] => batch_number(name).map_or(Kind::Skip, Kind::Commit),
        ["state", _op, "_metadata", "v2"] => {
            batch_number(name).map_or(Kind::Always, Kind::StateMeta)
        }
        ["state", _op, "_stateSchema", _family] => name
            .split_once('_')
            .and_then(|(k, _)| batch_number(k))
            .map_or(Kind::Always, Kind::StateMeta),
        ["state", _op, part, ..] if batch_number(part).is_some() => {
            state_version(name).map_or(Kind::Always, Kind::State)
        }
        [.., "_spark_metadata"] => batch_number(name.strip_suffix(".compact").unwrap_or(name))
            .map_or(Kind::Always, Kind::SinkLog),
        _ => Kind::Always,
    }
}

/// The copy of one query's latest committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Files to copy, sorted by path (indices into the scanned list are
    /// not kept: the list may be rescanned).
    pub files: Vec<LocalFile>,
    /// One entry per query; `id` is filled by the caller (it needs a read).
    pub queries: Vec<QueryEntry>,
}

/// The query folders in a scanned root: `[""]` when the root is a query,
/// else the first-level folders that are queries.
pub fn query_roots(files: &[LocalFile]) -> Vec<String> {
    if files.iter().any(|f| {
        let mut it = f.path.split('/');
        let (a, b) = (it.next().unwrap_or(""), it.next());
        QUERY_MARKERS.contains(&a) && (a == "metadata") == b.is_none()
    }) {
        return vec![String::new()];
    }
    let mut roots = BTreeSet::new();
    for f in files {
        let mut it = f.path.split('/');
        if let (Some(dir), Some(second), next) = (it.next(), it.next(), it.next())
            && QUERY_MARKERS.contains(&second)
            && (second == "metadata") == next.is_none()
        {
            roots.insert(dir.to_string());
        }
    }
    roots.into_iter().collect()
}

/// Splits `path` into (query folder, path inside it), or `None` when the
/// file belongs to no query.
fn owner<'a>(roots: &'a [String], path: &'a str) -> Option<(&'a str, &'a str)> {
    if roots.len() == 1 && roots[0].is_empty() {
        return Some(("", path));
    }
    let (dir, rest) = path.split_once('/')?;
    roots
        .iter()
        .find(|r| r.as_str() == dir)
        .map(|r| (r.as_str(), rest))
}

/// Decides the files of a consistent copy (see the module docs), taking
/// each query's latest commit from `files` itself (a checkpoint at rest).
pub fn select(files: &[LocalFile]) -> Selection {
    select_capped(files, None)
}

/// The latest non-empty `commits/N` of each query folder (the root: `""`),
/// read on its own. Read it *before* [`scan`] and pass it to
/// [`select_capped`]: Spark writes a batch's state, offsets and sources
/// before its commit, so every file batch N needs is already there when a
/// later walk runs, whereas a commit seen by the walk may belong to a
/// batch whose state files the walk had already passed.
pub fn commit_caps(root: &Path) -> io::Result<BTreeMap<String, u64>> {
    let mut caps = BTreeMap::new();
    let mut dirs = vec![(String::new(), root.join("commits"))];
    match std::fs::read_dir(root) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(OWN_PREFIX) && e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push((name, e.path().join("commits")));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(caps),
        Err(e) => return Err(e),
    }
    for (query, dir) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let latest = entries
            .flatten()
            .filter_map(|e| {
                let n = batch_number(e.file_name().to_str()?)?;
                (e.metadata().ok()?.len() > 0).then_some(n)
            })
            .max();
        if let Some(n) = latest {
            caps.insert(query, n);
        }
    }
    Ok(caps)
}

/// Per query and source (its folder name under `sources/`): the source's
/// log offset in the newest kept `offsets/` entry, for sources that record
/// one (`{"logOffset": n}`).
pub type SourceCaps = BTreeMap<(String, String), u64>;

/// Reads the newest kept `offsets/` entry of each query of `sel`.
pub fn source_caps(root: &Path, sel: &Selection) -> SourceCaps {
    let mut caps = SourceCaps::new();
    for q in &sel.queries {
        let Some(batch) = q.latest_offsets_batch else {
            continue;
        };
        let dir = if q.path.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&q.path)
        };
        let Ok(text) = std::fs::read_to_string(dir.join("offsets").join(batch.to_string())) else {
            continue;
        };
        for (i, off) in parse_log_offsets(&text) {
            caps.insert((q.path.clone(), i), off);
        }
    }
    caps
}

/// `(source folder, logOffset)` from an `offsets/N` file (offset log v1:
/// the source's position; v2: its id).
pub fn parse_log_offsets(text: &str) -> Vec<(String, u64)> {
    logfile::source_offsets(text)
        .into_iter()
        .filter_map(|(key, offset)| {
            let v: serde_json::Value = serde_json::from_str(offset?).ok()?;
            Some((key, v.get("logOffset")?.as_u64()?))
        })
        .collect()
}

/// Drops `sources/<i>/<n>[.compact]` (and checksums) beyond `caps`.
pub fn trim_sources(sel: &mut Selection, caps: &SourceCaps) {
    let roots: Vec<String> = sel.queries.iter().map(|q| q.path.clone()).collect();
    sel.files.retain(|f| {
        let Some((q, rel)) = owner(&roots, &f.path) else {
            return true;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let ["sources", idx, file] = parts.as_slice() else {
            return true;
        };
        let name = crc_target(file).unwrap_or(file);
        let Some(cap) = caps.get(&(q.to_string(), idx.to_string())) else {
            return true;
        };
        let n = batch_number(name.strip_suffix(".compact").unwrap_or(name));
        n.is_none_or(|n| n <= *cap)
    });
}

/// [`select`], counting as committed only batches up to `caps[query]`
/// (from [`commit_caps`]); a query without a cap counts none.
pub fn select_capped(files: &[LocalFile], caps: Option<&BTreeMap<String, u64>>) -> Selection {
    let roots = query_roots(files);
    // Per query: committed and planned batches (non-empty files only).
    let mut commits: BTreeMap<&str, BTreeMap<u64, &LocalFile>> = BTreeMap::new();
    let mut offsets: BTreeMap<&str, BTreeMap<u64, &LocalFile>> = BTreeMap::new();
    for f in files {
        let Some((q, rel)) = owner(&roots, &f.path) else {
            continue;
        };
        let is_crc = rel.rsplit('/').next().and_then(crc_target).is_some();
        if is_crc || f.size == 0 {
            continue;
        }
        match classify(rel) {
            Kind::Commit(n) => {
                commits.entry(q).or_default().insert(n, f);
            }
            Kind::Offsets(n) => {
                offsets.entry(q).or_default().insert(n, f);
            }
            _ => {}
        }
    }
    let committed = |q: &str| {
        let log = commits.get(q)?;
        match caps {
            None => log.last_key_value().map(|(n, _)| *n),
            Some(caps) => log.range(..=*caps.get(q)?).next_back().map(|(n, _)| *n),
        }
    };
    // The highest batch whose offsets/state may be kept: N + 1, or 0 when
    // nothing is committed yet (offsets/0 only; no state version 0 exists).
    let limit = |q: &str| committed(q).map_or(0, |n| n + 1);

    let mut selected = Vec::new();
    for f in files {
        let Some((q, rel)) = owner(&roots, &f.path) else {
            // Files beside the queries of a multi-query root: kept as they are.
            let file = f.path.rsplit('/').next().unwrap_or("");
            if !is_temp(file) {
                selected.push(f.clone());
            }
            continue;
        };
        let keep = match classify(rel) {
            Kind::Skip => false,
            Kind::Always => true,
            Kind::Commit(n) => committed(q).is_some_and(|c| n <= c) && present(&commits, q, n, f),
            Kind::Offsets(n) => n <= limit(q) && present(&offsets, q, n, f),
            Kind::State(v) => committed(q).is_some() && v <= limit(q),
            Kind::StateMeta(k) => k <= limit(q),
            Kind::SinkLog(n) => committed(q).is_some_and(|c| n <= c),
        };
        if keep {
            selected.push(f.clone());
        }
    }

    let queries = roots
        .iter()
        .map(|q| {
            let n = committed(q);
            let planned = offsets
                .get(q.as_str())
                .and_then(|m| m.range(..=limit(q)).next_back())
                .map(|(k, f)| (*k, *f));
            let inflight = planned.filter(|(k, _)| n.is_none_or(|n| *k > n));
            QueryEntry {
                path: q.clone(),
                id: None,
                latest_committed_batch: n,
                latest_offsets_batch: planned.map(|(k, _)| k),
                last_commit_unix_ms: n
                    .and_then(|n| commits.get(q.as_str())?.get(&n))
                    .map(|f| f.mtime_unix_ms()),
                inflight_batch: inflight.map(|(k, _)| k),
                inflight_since_unix_ms: inflight.map(|(_, f)| f.mtime_unix_ms()),
            }
        })
        .collect();
    Selection {
        files: selected,
        queries,
    }
}

/// A batch file (or its `.crc`) is kept only when the batch file itself is
/// a non-empty member of the log.
fn present(
    log: &BTreeMap<&str, BTreeMap<u64, &LocalFile>>,
    q: &str,
    n: u64,
    f: &LocalFile,
) -> bool {
    let Some(main) = log.get(q).and_then(|m| m.get(&n)) else {
        return false;
    };
    main.path == f.path || crc_target(f.path.rsplit('/').next().unwrap_or("")).is_some()
}

/// Reads the query id from `<query>/metadata` (`{"id":"…"}`); `None` when
/// missing or unreadable.
pub fn read_query_id(root: &Path, query: &str) -> Option<String> {
    let path = if query.is_empty() {
        root.join("metadata")
    } else {
        root.join(query).join("metadata")
    };
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
    v.get("id")?.as_str().map(str::to_string)
}

/// The latest committed batch per query of the checkpoint at `root`, and
/// whether the root holds any file at all.
pub fn local_progress(root: &Path) -> io::Result<(bool, Vec<QueryEntry>)> {
    let files = scan(root)?;
    let sel = select(&files);
    Ok((!files.is_empty(), sel.queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> LocalFile {
        LocalFile {
            path: path.into(),
            size: 10,
            mtime_unix_ns: 1_000_000 * path.len() as i128,
        }
    }

    fn paths(sel: &Selection) -> Vec<&str> {
        sel.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// A query that committed batch 2 while batch 3 is in flight (offsets/3
    /// and state version 4 written, commits/3 not yet).
    fn query(prefix: &str) -> Vec<LocalFile> {
        let mut v = vec![];
        for p in [
            "metadata",
            ".metadata.crc",
            "sources/0/0",
            "sources/0/.0.crc",
            "state/0/_metadata/metadata",
            "state/0/0/_metadata/schema",
            "state/0/0/SSTs/abc-1.sst",
        ] {
            v.push(f(&format!("{prefix}{p}")));
        }
        for n in 0..=3 {
            v.push(f(&format!("{prefix}offsets/{n}")));
            v.push(f(&format!("{prefix}offsets/.{n}.crc")));
        }
        for n in 0..=2 {
            v.push(f(&format!("{prefix}commits/{n}")));
            v.push(f(&format!("{prefix}commits/.{n}.crc")));
        }
        for ver in 1..=4 {
            v.push(f(&format!("{prefix}state/0/0/{ver}.delta")));
            v.push(f(&format!("{prefix}state/0/0/.{ver}.delta.crc")));
        }
        v.push(f(&format!("{prefix}state/0/1/2.snapshot")));
        v.push(f(&format!("{prefix}state/0/1/4_3f2a.zip")));
        v.push(f(&format!("{prefix}state/0/1/3.changelog")));
        // Temp files of a write in progress.
        v.push(f(&format!("{prefix}commits/.3.8c1e.tmp")));
        v.push(f(&format!("{prefix}commits/..3.8c1e.tmp.crc")));
        v
    }

    #[test]
    fn a_file_sink_log_inside_the_query_is_cut_at_the_commit() {
        let files = vec![
            f("metadata"),
            f("offsets/0"),
            f("offsets/1"),
            f("offsets/2"),
            f("commits/0"),
            f("commits/1"),
            f("out/_spark_metadata/0"),
            f("out/_spark_metadata/1"),
            f("out/_spark_metadata/.1.crc"),
            f("out/_spark_metadata/2"),
            f("out/part-0001.parquet"),
        ];
        let sel = select(&files);
        let kept = paths(&sel);
        assert!(
            kept.contains(&"out/_spark_metadata/1") && kept.contains(&"out/_spark_metadata/.1.crc")
        );
        assert!(
            !kept.contains(&"out/_spark_metadata/2"),
            "batch 2 is not committed"
        );
        assert!(kept.contains(&"out/part-0001.parquet"));
    }

    #[test]
    fn file_source_logs_are_trimmed_to_the_kept_offsets() {
        let files = vec![
            f("metadata"),
            f("offsets/0"),
            f("offsets/1"),
            f("commits/0"),
            f("sources/0/0"),
            f("sources/0/1"),
            f("sources/0/.1.crc"),
            f("sources/0/2"),
            f("sources/0/.2.crc"),
            f("sources/0/9.compact"),
            f("sources/1/0"),
        ];
        let mut sel = select(&files);
        let mut caps = SourceCaps::new();
        caps.insert((String::new(), "0".into()), 1);
        trim_sources(&mut sel, &caps);
        let kept: Vec<&str> = sel.files.iter().map(|f| f.path.as_str()).collect();
        assert!(kept.contains(&"sources/0/1") && kept.contains(&"sources/0/.1.crc"));
        assert!(!kept.contains(&"sources/0/2") && !kept.contains(&"sources/0/.2.crc"));
        assert!(!kept.contains(&"sources/0/9.compact"));
        assert!(kept.contains(&"sources/1/0"), "no cap for source 1: kept");
        assert_eq!(
            parse_log_offsets("v1\n{\"batchWatermarkMs\":0}\n{\"logOffset\":7}\n42\n-\n"),
            vec![("0".to_string(), 7)]
        );
        // Offset log v2 (Spark 4.1+): `<source id>:<offset>`.
        assert_eq!(
            parse_log_offsets("v2\n{\"batchWatermarkMs\":0}\n1:-\n0:{\"logOffset\":3}\n"),
            vec![("0".to_string(), 3)]
        );
    }

    #[test]
    fn single_query_keeps_committed_batch_and_planned_offsets() {
        let sel = select(&query(""));
        let p = paths(&sel);
        for want in [
            "metadata",
            ".metadata.crc",
            "sources/0/0",
            "state/0/_metadata/metadata",
            "state/0/0/SSTs/abc-1.sst",
            "offsets/3",
            "offsets/.3.crc",
            "commits/2",
            "commits/.2.crc",
            "state/0/0/3.delta",
            "state/0/0/.3.delta.crc",
            "state/0/1/2.snapshot",
            "state/0/1/3.changelog",
        ] {
            assert!(p.contains(&want), "{want} missing from {p:?}");
        }
        for not in [
            "state/0/0/4.delta",
            "state/0/0/.4.delta.crc",
            "state/0/1/4_3f2a.zip",
            "commits/.3.8c1e.tmp",
            "commits/..3.8c1e.tmp.crc",
        ] {
            assert!(!p.contains(&not), "{not} must be left out");
        }
        assert_eq!(sel.queries.len(), 1);
        let q = &sel.queries[0];
        assert_eq!(q.path, "");
        assert_eq!(q.latest_committed_batch, Some(2));
        assert_eq!(q.latest_offsets_batch, Some(3));
        assert_eq!(q.inflight_batch, Some(3));
        assert_eq!(q.last_commit_unix_ms, Some("commits/2".len() as i64));
    }

    #[test]
    fn multi_query_root_selects_per_query() {
        let mut files = query("a/");
        // Query b committed batch 0 and nothing is in flight.
        files.extend(
            [
                "b/metadata",
                "b/offsets/0",
                "b/commits/0",
                "b/state/0/0/1.delta",
            ]
            .map(f),
        );
        files.push(f("README.txt"));
        files.push(f("scratch.tmp"));
        files.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(query_roots(&files), ["a", "b"]);
        let sel = select(&files);
        let p = paths(&sel);
        assert!(p.contains(&"b/state/0/0/1.delta"));
        assert!(p.contains(&"a/state/0/0/3.delta"));
        assert!(!p.contains(&"a/state/0/0/4.delta"));
        assert!(p.contains(&"README.txt"));
        assert!(!p.contains(&"scratch.tmp"));
        let b = sel.queries.iter().find(|q| q.path == "b").unwrap();
        assert_eq!(b.latest_committed_batch, Some(0));
        assert_eq!(b.inflight_batch, None);
    }

    #[test]
    fn a_query_named_like_a_log_folder_is_still_a_subfolder() {
        let files = ["state/metadata", "state/offsets/0", "state/commits/0"].map(f);
        assert_eq!(query_roots(&files), ["state"]);
        let sel = select(&files);
        assert_eq!(sel.queries[0].latest_committed_batch, Some(0));
    }

    #[test]
    fn empty_trailing_commit_is_not_a_committed_batch() {
        let mut files = query("");
        files.push(LocalFile {
            path: "commits/3".into(),
            size: 0,
            mtime_unix_ns: 0,
        });
        files.push(f("commits/.3.crc"));
        let sel = select(&files);
        let p = paths(&sel);
        assert!(!p.contains(&"commits/3"));
        assert!(!p.contains(&"commits/.3.crc"));
        assert_eq!(sel.queries[0].latest_committed_batch, Some(2));
    }

    #[test]
    fn nothing_committed_keeps_only_the_first_plan() {
        let files = [
            "metadata",
            "offsets/0",
            "sources/0/0",
            "state/0/0/1.delta",
            "offsets/1",
        ]
        .map(f);
        let sel = select(&files);
        assert_eq!(paths(&sel), ["metadata", "offsets/0", "sources/0/0"]);
        assert_eq!(sel.queries[0].latest_committed_batch, None);
        assert_eq!(sel.queries[0].inflight_batch, Some(0));
    }

    #[test]
    fn caps_keep_a_commit_seen_late_out_of_the_copy() {
        // The walk saw commits/3 but the state walk happened before batch 3
        // wrote version 4: with the cap read first (2), batch 3 is out.
        let mut files = query("");
        files.push(f("commits/3"));
        let caps = BTreeMap::from([(String::new(), 2)]);
        let sel = select_capped(&files, Some(&caps));
        let p = paths(&sel);
        assert!(!p.contains(&"commits/3"));
        assert!(p.contains(&"commits/2"));
        assert_eq!(sel.queries[0].latest_committed_batch, Some(2));
        // Without caps the same listing would claim batch 3.
        assert_eq!(select(&files).queries[0].latest_committed_batch, Some(3));
        // A query without a cap has nothing committed.
        let sel = select_capped(&files, Some(&BTreeMap::new()));
        assert_eq!(sel.queries[0].latest_committed_batch, None);
    }

    #[test]
    fn commit_caps_read_each_query_log() {
        let dir = tempfile::tempdir().unwrap();
        for (p, body) in [
            ("a/commits/0", "v1"),
            ("a/commits/7", "v1"),
            ("a/commits/8", ""),
            ("a/commits/.7.crc", "x"),
            ("b/offsets/0", "v1"),
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        }
        let caps = commit_caps(dir.path()).unwrap();
        assert_eq!(caps, BTreeMap::from([("a".to_string(), 7)]));
        assert!(commit_caps(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn format_v2_state_files_and_transform_with_state_metadata() {
        // Spark 4.3.0, state checkpoint format v2: committed batch 3, batch
        // 4 in flight (state version 5 written with its file checksums).
        let id = |v: u64| format!("{v}_0852d809-f0ae-4422-bec1-b066dde9c5c{v}");
        let mut files: Vec<LocalFile> = [
            "metadata",
            "offsets/3",
            "offsets/4",
            "commits/3",
            "state/0/_metadata/v2/0",
            "state/0/_metadata/v2/.0.crc",
            "state/0/_metadata/v2/5",
            "state/0/_stateSchema/default/0_8f6dd52b-4b46-4f86-b777-bb941eb4286e",
            "state/0/_stateSchema/default/.0_8f6dd52b-4b46-4f86-b777-bb941eb4286e.crc",
            "state/0/_stateSchema/default/5_1f6dd52b-4b46-4f86-b777-bb941eb4286e",
            "state/0/0/SSTs/000008-435a376a-b0aa-40bc-8032-ebf51f73e5f3.sst",
            "state/0/0/_metadata/schema",
        ]
        .map(f)
        .to_vec();
        for v in [4, 5] {
            for ext in ["changelog", "zip"] {
                let n = format!("{}.{ext}", id(v));
                for p in [
                    n.clone(),
                    format!("{n}.crc"),
                    format!(".{n}.crc"),
                    format!(".{n}.crc.crc"),
                ] {
                    files.push(f(&format!("state/0/0/{p}")));
                }
            }
        }
        // A stream-stream join keeps one store per side in a subfolder.
        files.push(f("state/1/0/left-keyToNumValues/4.delta"));
        files.push(f("state/1/0/left-keyToNumValues/5.delta"));
        let sel = select(&files);
        let p = paths(&sel);
        for v4 in files.iter().filter(|f| f.path.contains(&id(4))) {
            assert!(p.contains(&v4.path.as_str()), "{} missing", v4.path);
        }
        for not in files.iter().filter(|f| f.path.contains(&id(5))) {
            assert!(!p.contains(&not.path.as_str()), "{} kept", not.path);
        }
        for want in [
            "state/0/_metadata/v2/0",
            "state/0/_metadata/v2/.0.crc",
            "state/0/_stateSchema/default/0_8f6dd52b-4b46-4f86-b777-bb941eb4286e",
            "state/0/_stateSchema/default/.0_8f6dd52b-4b46-4f86-b777-bb941eb4286e.crc",
            "state/0/0/SSTs/000008-435a376a-b0aa-40bc-8032-ebf51f73e5f3.sst",
            "state/0/0/_metadata/schema",
            "state/1/0/left-keyToNumValues/4.delta",
        ] {
            assert!(p.contains(&want), "{want} missing from {p:?}");
        }
        for not in [
            "state/0/_metadata/v2/5",
            "state/0/_stateSchema/default/5_1f6dd52b-4b46-4f86-b777-bb941eb4286e",
            "state/1/0/left-keyToNumValues/5.delta",
        ] {
            assert!(!p.contains(&not), "{not} must be left out");
        }
    }

    #[test]
    fn state_versions_and_crc_names() {
        assert_eq!(state_version("12.delta"), Some(12));
        assert_eq!(state_version("12_ab-cd.zip"), Some(12));
        assert_eq!(state_version("12_ab-cd.changelog.crc"), Some(12));
        assert_eq!(state_version("schema.crc"), None);
        assert_eq!(state_version("12.sst"), None);
        assert_eq!(state_version("x.delta"), None);
        assert_eq!(crc_target(".12.delta.crc"), Some("12.delta"));
        assert_eq!(classify("offsets/quarantine"), Kind::Skip);
        assert_eq!(classify("offsets/.7.crc"), Kind::Offsets(7));
    }

    #[test]
    fn scan_walks_real_files_and_skips_own_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("q/offsets")).unwrap();
        std::fs::create_dir_all(dir.path().join(".sparkvisor-restore")).unwrap();
        std::fs::write(dir.path().join("q/offsets/0"), b"v1\n{}").unwrap();
        std::fs::write(dir.path().join("q/metadata"), b"{\"id\":\"abc\"}\n").unwrap();
        std::fs::write(dir.path().join(".sparkvisor-restore/x"), b"x").unwrap();
        let files = scan(dir.path()).unwrap();
        let p: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(p, ["q/metadata", "q/offsets/0"]);
        assert_eq!(files[1].size, 5);
        assert_eq!(read_query_id(dir.path(), "q").as_deref(), Some("abc"));
        assert!(scan(&dir.path().join("missing")).unwrap().is_empty());
    }
}
