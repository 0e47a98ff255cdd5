//! Reads a Structured Streaming checkpoint from the local file system:
//! finds the queries under a root (the root itself, or one per subfolder),
//! lists and parses their `offsets/` and `commits/` logs and the `metadata`
//! file, and (for a full scan) walks `sources/` and `state/` for leftovers.
//!
//! Invariants: read-only; never trusts a name alone (every log entry that is
//! used is parsed); every problem with one file becomes data in the scan
//! (malformed, unreadable, unexpected name), never a panic or an error for
//! the whole scan. A `Latest` scan reads only the newest entries of each log
//! and never walks `state/`, so it is cheap enough to repeat every few seconds.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::logfile::{self, CommitEntry, LogName, Malformed, OffsetsEntry};
use crate::beat::Beat;

pub const METADATA: &str = "metadata";
pub const OFFSETS: &str = "offsets";
pub const COMMITS: &str = "commits";
pub const SOURCES: &str = "sources";
pub const STATE: &str = "state";

/// Log files larger than this are not read (no real one comes close).
const MAX_LOG_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{0} is not a Structured Streaming checkpoint: neither it nor any subfolder has metadata, offsets/ or commits/"
    )]
    NotACheckpoint(PathBuf),
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One query's checkpoint folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryDir {
    /// The subfolder name, or the root's own name when the root is the query.
    pub name: String,
    pub path: PathBuf,
}

fn is_query_dir(p: &Path) -> bool {
    p.join(METADATA).is_file() || p.join(OFFSETS).is_dir() || p.join(COMMITS).is_dir()
}

/// The queries under `root`: the root itself when it holds `metadata`,
/// `offsets/` or `commits/`, else each such (non-hidden) subfolder, by name.
/// An empty list means "no query yet" (or not a checkpoint).
pub fn discover(root: &Path) -> Result<Vec<QueryDir>, LayoutError> {
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LayoutError::NotFound(root.to_path_buf()));
        }
        Err(source) => {
            return Err(LayoutError::Unreadable {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(LayoutError::NotADirectory(root.to_path_buf()));
    }
    if is_query_dir(root) {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into());
        return Ok(vec![QueryDir {
            name,
            path: root.to_path_buf(),
        }]);
    }
    let entries = fs::read_dir(root).map_err(|source| LayoutError::Unreadable {
        path: root.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if is_query_dir(&path) {
            out.push(QueryDir { name, path });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Offsets,
    Commits,
}

impl LogKind {
    pub fn dir_name(self) -> &'static str {
        match self {
            LogKind::Offsets => OFFSETS,
            LogKind::Commits => COMMITS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Offsets(OffsetsEntry),
    Commit(CommitEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Listed, not read (a `Latest` scan stops at the first valid entry).
    NotRead,
    Valid {
        modified: Option<SystemTime>,
        content: Content,
    },
    /// Read, and Spark could not read it back either.
    Malformed(Malformed),
    /// Could not be read (permissions, I/O error, absurd size).
    Unreadable(String),
}

/// `offsets/N` or `commits/N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub batch: u64,
    pub path: PathBuf,
    /// `.N.crc`, when present.
    pub checksum: Option<PathBuf>,
    pub state: EntryState,
}

impl LogEntry {
    pub fn is_valid(&self) -> bool {
        matches!(self.state, EntryState::Valid { .. })
    }

    pub fn modified(&self) -> Option<SystemTime> {
        match &self.state {
            EntryState::Valid { modified, .. } => *modified,
            _ => None,
        }
    }

    pub fn offsets(&self) -> Option<&OffsetsEntry> {
        match &self.state {
            EntryState::Valid {
                content: Content::Offsets(o),
                ..
            } => Some(o),
            _ => None,
        }
    }
}

/// The content of one `offsets/` or `commits/` folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogListing {
    pub kind: LogKind,
    pub dir: PathBuf,
    /// Ascending by batch.
    pub entries: Vec<LogEntry>,
    /// `.N.crc` whose `N` is missing.
    pub orphan_checksums: Vec<(u64, PathBuf)>,
    pub temp_files: Vec<PathBuf>,
    /// Names Spark does not use here (it ignores them); reported only.
    pub unexpected: Vec<PathBuf>,
    /// The folder itself could not be listed.
    pub error: Option<String>,
}

impl LogListing {
    /// Lists `dir` (names only; nothing is read yet). A missing folder is an
    /// empty listing: Spark creates it with the first batch.
    pub fn list(dir: &Path, kind: LogKind) -> LogListing {
        let mut listing = LogListing {
            kind,
            dir: dir.to_path_buf(),
            entries: Vec::new(),
            orphan_checksums: Vec::new(),
            temp_files: Vec::new(),
            unexpected: Vec::new(),
            error: None,
        };
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return listing,
            Err(e) => {
                listing.error = Some(e.to_string());
                return listing;
            }
        };
        let mut checksums = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // Symlinks count as files (Spark follows them); folders never do.
            let is_file = entry.file_type().is_ok_and(|t| !t.is_dir());
            match logfile::classify_log_name(&name) {
                LogName::Batch(batch) if is_file => listing.entries.push(LogEntry {
                    batch,
                    path,
                    checksum: None,
                    state: EntryState::NotRead,
                }),
                LogName::Checksum(batch) if is_file => checksums.push((batch, path)),
                LogName::Temp if is_file => listing.temp_files.push(path),
                _ => listing.unexpected.push(path),
            }
        }
        listing.entries.sort_by_key(|e| e.batch);
        for (batch, path) in checksums {
            match listing.entries.binary_search_by_key(&batch, |e| e.batch) {
                Ok(i) => listing.entries[i].checksum = Some(path),
                Err(_) => listing.orphan_checksums.push((batch, path)),
            }
        }
        listing.orphan_checksums.sort();
        listing.temp_files.sort();
        listing.unexpected.sort();
        listing
    }

    /// Reads and parses every entry.
    pub fn read_all(&mut self) {
        let kind = self.kind;
        for e in &mut self.entries {
            e.state = read_entry(&e.path, kind);
        }
    }

    /// Reads entries from the newest down until one is valid: normally a
    /// single small file.
    pub fn read_latest(&mut self) {
        let kind = self.kind;
        for e in self.entries.iter_mut().rev() {
            e.state = read_entry(&e.path, kind);
            if e.is_valid() {
                break;
            }
        }
    }

    /// The newest entry that parsed.
    pub fn latest_valid(&self) -> Option<&LogEntry> {
        self.entries.iter().rev().find(|e| e.is_valid())
    }
}

fn read_entry(path: &Path, kind: LogKind) -> EntryState {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return EntryState::Unreadable(e.to_string()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return EntryState::Unreadable(e.to_string()),
    };
    if meta.len() > MAX_LOG_FILE {
        return EntryState::Unreadable(format!(
            "{} bytes, larger than any log file Spark writes",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = (&mut file).take(MAX_LOG_FILE).read_to_end(&mut bytes) {
        return EntryState::Unreadable(e.to_string());
    }
    let parsed = match kind {
        LogKind::Offsets => logfile::parse_offsets(&bytes).map(Content::Offsets),
        LogKind::Commits => logfile::parse_commit(&bytes).map(Content::Commit),
    };
    match parsed {
        Ok(content) => EntryState::Valid {
            modified: meta.modified().ok(),
            content,
        },
        Err(m) => EntryState::Malformed(m),
    }
}

/// The query's `metadata` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataState {
    Missing,
    Valid(String),
    Malformed(Malformed),
    Unreadable(String),
}

impl MetadataState {
    pub fn id(&self) -> Option<&str> {
        match self {
            MetadataState::Valid(id) => Some(id),
            _ => None,
        }
    }
}

fn read_metadata(path: &Path) -> MetadataState {
    match fs::read(path) {
        Ok(bytes) => match logfile::parse_metadata(&bytes) {
            Ok(id) => MetadataState::Valid(id),
            Err(m) => MetadataState::Malformed(m),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => MetadataState::Missing,
        Err(e) => MetadataState::Unreadable(e.to_string()),
    }
}

/// Something found outside the two logs by a full scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeFinding {
    /// A temp file of an interrupted write (anywhere in the query folder).
    Temp(PathBuf),
    /// A zero-length data file under `sources/` or `state/` (other folders,
    /// such as a sink's output kept in the query folder, are not judged).
    Empty(PathBuf),
    /// A folder that could not be listed.
    Unreadable(PathBuf, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The newest valid entry of each log; nothing else is walked.
    Latest,
    /// Every log entry parsed, `sources/` and `state/` walked.
    Full,
}

/// Everything read from one query folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryScan {
    pub query: QueryDir,
    pub metadata: MetadataState,
    pub offsets: LogListing,
    pub commits: LogListing,
    /// Empty for a `Latest` scan.
    pub tree: Vec<TreeFinding>,
}

pub fn scan_query(query: &QueryDir, depth: Depth) -> QueryScan {
    scan_query_beating(query, depth, &Beat::none())
}

/// [`scan_query`], beating `beat` for each folder a full scan walks.
pub fn scan_query_beating(query: &QueryDir, depth: Depth, beat: &Beat) -> QueryScan {
    let dir = &query.path;
    let mut offsets = LogListing::list(&dir.join(OFFSETS), LogKind::Offsets);
    let mut commits = LogListing::list(&dir.join(COMMITS), LogKind::Commits);
    let mut tree = Vec::new();
    match depth {
        Depth::Latest => {
            offsets.read_latest();
            commits.read_latest();
        }
        Depth::Full => {
            offsets.read_all();
            commits.read_all();
            walk_tree(dir, &mut tree, beat);
        }
    }
    QueryScan {
        query: query.clone(),
        metadata: read_metadata(&dir.join(METADATA)),
        offsets,
        commits,
        tree,
    }
}

/// Walks the query folder except the two logs (listed separately), without
/// following symlinks.
fn walk_tree(dir: &Path, out: &mut Vec<TreeFinding>, beat: &Beat) {
    // (folder, depth below the query, under `sources/` or `state/`)
    let mut stack = vec![(dir.to_path_buf(), 0usize, false)];
    while let Some((d, depth, data)) = stack.pop() {
        beat.worked();
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                out.push(TreeFinding::Unreadable(d, e.to_string()));
                continue;
            }
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if !(depth == 0 && (name == OFFSETS || name == COMMITS)) {
                    let data = data || (depth == 0 && (name == SOURCES || name == STATE));
                    stack.push((path, depth + 1, data));
                }
            } else if ft.is_file() {
                if logfile::is_temp_name(&name) {
                    out.push(TreeFinding::Temp(path));
                } else if data
                    && !name.ends_with(".crc")
                    && entry.metadata().is_ok_and(|m| m.len() == 0)
                {
                    out.push(TreeFinding::Empty(path));
                }
            }
        }
    }
    out.sort_by(|a, b| finding_path(a).cmp(finding_path(b)));
}

fn finding_path(f: &TreeFinding) -> &Path {
    match f {
        TreeFinding::Temp(p) | TreeFinding::Empty(p) | TreeFinding::Unreadable(p, _) => p,
    }
}

/// Discovers and scans every query under `root`.
pub fn scan_root(root: &Path, depth: Depth) -> Result<Vec<QueryScan>, LayoutError> {
    scan_root_beating(root, depth, &Beat::none())
}

/// [`scan_root`], beating `beat` per query scanned and folder walked.
pub fn scan_root_beating(
    root: &Path,
    depth: Depth,
    beat: &Beat,
) -> Result<Vec<QueryScan>, LayoutError> {
    Ok(discover(root)?
        .iter()
        .map(|q| {
            let scan = scan_query_beating(q, depth, beat);
            beat.items(1);
            scan
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Builds checkpoint trees shaped like the ones Spark 4.0.1 writes.
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    pub const ID: &str = "a0b9a9ca-301a-409e-9851-a46e6e2fd037";
    pub const UUID: &str = "c05413d0-b6a1-46a4-b1f6-d0d1f21e5703";

    pub fn put(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub fn offsets_text(batch_ms: u64, log_offset: u64) -> String {
        format!(
            "v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{batch_ms},\"conf\":{{\"spark.sql.shuffle.partitions\":\"4\"}}}}\n{{\"logOffset\":{log_offset}}}"
        )
    }

    pub const COMMIT: &str = "v1\n{\"nextBatchWatermarkMs\":0}";

    /// A query with offsets 0..=planned and commits 0..=committed, each with
    /// its `.crc`, `metadata`, a file-source log and one state partition.
    pub fn query(dir: &Path, planned: Option<u64>, committed: Option<u64>, t0: SystemTime) {
        put(
            &dir.join("metadata"),
            format!("{{\"id\":\"{ID}\"}}\n").as_bytes(),
        );
        put(&dir.join(".metadata.crc"), b"crc\0\0\0\x02\0abcd");
        let ms = |n: u64| {
            (t0 + Duration::from_secs(10 * n))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let count = |last: Option<u64>| last.map_or(0, |l| l + 1);
        for n in 0..count(planned) {
            put(
                &dir.join(format!("offsets/{n}")),
                offsets_text(ms(n), n).as_bytes(),
            );
            put(
                &dir.join(format!("offsets/.{n}.crc")),
                b"crc\0\0\0\x02\0abcd",
            );
            put(
                &dir.join(format!("sources/0/{n}")),
                b"v1\n{\"path\":\"file:///in/a.json\",\"timestamp\":1,\"batchId\":0}",
            );
            put(
                &dir.join(format!("state/0/0/{}.delta", n + 1)),
                b"\x04\x22\x4d\x18delta",
            );
        }
        for n in 0..count(committed) {
            put(&dir.join(format!("commits/{n}")), COMMIT.as_bytes());
            put(
                &dir.join(format!("commits/.{n}.crc")),
                b"crc\0\0\0\x02\0abcd",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000)
    }

    #[test]
    fn discovers_single_and_multi_query_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let single = tmp.path().join("single");
        query(&single, Some(2), Some(2), t0());
        let q = discover(&single).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].path, single);
        assert_eq!(q[0].name, "single");

        let multi = tmp.path().join("multi");
        query(&multi.join("b"), Some(1), Some(1), t0());
        query(&multi.join("a"), Some(1), None, t0());
        std::fs::create_dir_all(multi.join("not-a-query/x")).unwrap();
        std::fs::create_dir_all(multi.join(".hidden/offsets")).unwrap();
        put(&multi.join("README"), b"hello");
        let q = discover(&multi).unwrap();
        let names: Vec<_> = q.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn discover_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            discover(&tmp.path().join("nope")),
            Err(LayoutError::NotFound(_))
        ));
        put(&tmp.path().join("file"), b"x");
        assert!(matches!(
            discover(&tmp.path().join("file")),
            Err(LayoutError::NotADirectory(_))
        ));
        // An empty folder, or one with unrelated content, holds no query.
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        assert!(discover(&tmp.path().join("empty")).unwrap().is_empty());
    }

    #[test]
    fn lists_and_parses_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(3), Some(2), t0());
        put(&q.join(format!("offsets/.4.{UUID}.tmp")), b"v1\n");
        put(&q.join(format!("offsets/..4.{UUID}.tmp.crc")), b"crc\0");
        put(&q.join("offsets/.9.crc"), b"crc\0");
        put(&q.join("offsets/notes.txt"), b"mine");
        std::fs::create_dir_all(q.join("offsets/5")).unwrap();

        let mut l = LogListing::list(&q.join("offsets"), LogKind::Offsets);
        assert_eq!(
            l.entries.iter().map(|e| e.batch).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(l.entries.iter().all(|e| e.checksum.is_some()));
        assert!(l.entries.iter().all(|e| e.state == EntryState::NotRead));
        assert_eq!(l.orphan_checksums, [(9, q.join("offsets/.9.crc"))]);
        assert_eq!(l.temp_files.len(), 2);
        // A folder named like a batch is not a batch.
        assert_eq!(
            l.unexpected,
            [q.join("offsets/5"), q.join("offsets/notes.txt")]
        );

        l.read_latest();
        assert!(l.entries[3].is_valid());
        assert!(
            l.entries[..3]
                .iter()
                .all(|e| e.state == EntryState::NotRead)
        );
        assert_eq!(l.latest_valid().unwrap().batch, 3);
        assert_eq!(
            l.latest_valid()
                .unwrap()
                .offsets()
                .unwrap()
                .batch_timestamp_ms,
            Some(1_795_219_030_000)
        );
    }

    #[test]
    fn latest_skips_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(2), Some(2), t0());
        put(&q.join("commits/3"), b"");
        put(&q.join("commits/4"), b"v1\n{\"nextBatch");
        let mut l = LogListing::list(&q.join("commits"), LogKind::Commits);
        l.read_latest();
        assert!(matches!(
            l.entries[4].state,
            EntryState::Malformed(Malformed::BadJson { line: 2, .. })
        ));
        assert_eq!(l.entries[3].state, EntryState::Malformed(Malformed::Empty));
        assert_eq!(l.latest_valid().unwrap().batch, 2);
        assert_eq!(l.entries[1].state, EntryState::NotRead);
    }

    #[test]
    fn missing_log_folder_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let l = LogListing::list(&tmp.path().join("commits"), LogKind::Commits);
        assert!(l.entries.is_empty() && l.error.is_none());
    }

    #[test]
    fn unreadable_entry_is_data_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(0), None, t0());
        // A batch entry that cannot be opened (a dangling symlink) is
        // reported as unreadable; the others are still read.
        std::os::unix::fs::symlink(tmp.path().join("gone"), q.join("offsets/1")).unwrap();
        let mut l = LogListing::list(&q.join("offsets"), LogKind::Offsets);
        l.read_all();
        assert!(l.entries[0].is_valid());
        assert!(matches!(l.entries[1].state, EntryState::Unreadable(_)));
        assert_eq!(l.latest_valid().unwrap().batch, 0);
    }

    #[test]
    fn full_scan_finds_leftovers_outside_the_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(2), Some(1), t0());
        let delta_tmp = q.join(format!("state/0/0/.3.delta.{UUID}.TID7.tmp"));
        put(&delta_tmp, b"partial");
        let meta_tmp = q.join(format!("..metadata.{UUID}.tmp.crc"));
        put(&meta_tmp, b"crc");
        let empty = q.join("state/0/1/2.delta");
        put(&empty, b"");
        put(&q.join("state/0/1/.2.delta.crc"), b"");
        // A sink inside the query folder: its empty `_SUCCESS` is no finding.
        put(&q.join("output/batch=1/_SUCCESS"), b"");

        let scan = scan_query(
            &QueryDir {
                name: "q".into(),
                path: q.clone(),
            },
            Depth::Full,
        );
        assert_eq!(scan.metadata.id(), Some(ID));
        assert!(scan.offsets.entries.iter().all(|e| e.is_valid()));
        assert_eq!(
            scan.tree,
            [
                TreeFinding::Temp(meta_tmp),
                TreeFinding::Temp(delta_tmp),
                TreeFinding::Empty(empty),
            ]
        );

        let light = scan_query(&scan.query, Depth::Latest);
        assert!(light.tree.is_empty());
        assert_eq!(light.offsets.entries[0].state, EntryState::NotRead);
    }

    #[test]
    fn metadata_states() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_metadata(&tmp.path().join("m")), MetadataState::Missing);
        put(&tmp.path().join("m"), b"");
        assert_eq!(
            read_metadata(&tmp.path().join("m")),
            MetadataState::Malformed(Malformed::Empty)
        );
    }
}
