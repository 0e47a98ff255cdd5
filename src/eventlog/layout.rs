//! Spark's event log directory, as Spark writes it and the History Server
//! reads it: one entry per application attempt in `spark.eventLog.dir`,
//! either a rolling directory (`spark.eventLog.rolling.enabled`)
//!
//! ```text
//! eventlog_v2_<appId>[_<attemptId>]/
//!     events_<N>_<appId>[_<attemptId>][.<codec>]     N = 1, 2, …; the highest is being written
//!     appstatus_<appId>[_<attemptId>][.inprogress]   renamed when the app ends cleanly
//! ```
//!
//! or a single file `<appId>[_<attemptId>][.<codec>][.inprogress]`. Names
//! carry the application id as Spark sanitizes it (lower case, `[ :/]` →
//! `-`, `[.${}'"]` → `_`), so a dot in a name starts the codec or the
//! `.inprogress` suffix.
//!
//! Invariants: pure (the listing is read by [`scan`], the only I/O here);
//! paths are relative to the event log directory with `/` separators, the
//! same below an S3 prefix; names that do not belong to an event log are
//! ignored, never an error.

use std::path::Path;
use std::time::UNIX_EPOCH;

/// The suffix of files Spark is still writing.
pub const IN_PROGRESS: &str = ".inprogress";
/// The prefix of rolling event log directories.
pub const ROLLING_PREFIX: &str = "eventlog_v2_";

/// What a file of an event log is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `events_<N>_…` in a rolling directory.
    Events { index: u64 },
    /// `appstatus_…`: its name says whether the app is still running.
    AppStatus { in_progress: bool },
    /// A single-file event log.
    Single { in_progress: bool },
}

/// One file of an event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFile {
    /// The log this file belongs to (the rolling directory's name, or the
    /// single file's name without `.inprogress`).
    pub log: String,
    /// Path relative to the event log directory.
    pub rel: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime_ms: u64,
    /// The compression codec in the name (`zstd`, `lz4`, …), if any.
    pub codec: Option<String>,
}

impl LogFile {
    /// True for files Spark may still append to: the newest events file of
    /// a log and in-progress names.
    pub fn may_grow(&self, newest_index: Option<u64>) -> bool {
        match self.kind {
            Kind::Events { index } => Some(index) == newest_index,
            Kind::AppStatus { .. } => false,
            Kind::Single { in_progress } => in_progress,
        }
    }
}

/// One application attempt's event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub name: String,
    pub rolling: bool,
    /// Oldest first: events files by index, then the app status file.
    pub files: Vec<LogFile>,
}

impl Log {
    /// The index of the events file being written (rolling logs).
    pub fn newest_index(&self) -> Option<u64> {
        self.files
            .iter()
            .filter_map(|f| match f.kind {
                Kind::Events { index } => Some(index),
                _ => None,
            })
            .max()
    }

    /// The latest modification among the files.
    pub fn mtime_ms(&self) -> u64 {
        self.files.iter().map(|f| f.mtime_ms).max().unwrap_or(0)
    }

    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// True when Spark marked the app as ended (completed app status, or a
    /// single file without `.inprogress`).
    pub fn completed(&self) -> bool {
        self.files.iter().any(|f| {
            matches!(
                f.kind,
                Kind::AppStatus { in_progress: false } | Kind::Single { in_progress: false }
            )
        })
    }

    /// The codec of the events, if they are compressed.
    pub fn codec(&self) -> Option<&str> {
        self.files.iter().find_map(|f| match f.kind {
            Kind::Events { .. } | Kind::Single { .. } => f.codec.as_deref(),
            Kind::AppStatus { .. } => None,
        })
    }

    /// True when this log is the application `app_id`'s.
    pub fn belongs_to(&self, app_id: &str) -> bool {
        let id = sanitize(app_id);
        let base = if self.rolling {
            self.name.strip_prefix(ROLLING_PREFIX).unwrap_or(&self.name)
        } else {
            &self.name
        };
        base == id || base.strip_prefix(&id).is_some_and(|r| r.starts_with('_'))
    }
}

/// The application id as Spark writes it into file names.
pub fn sanitize(app_id: &str) -> String {
    app_id
        .chars()
        .map(|c| match c {
            ' ' | ':' | '/' => '-',
            '.' | '$' | '{' | '}' | '\'' | '"' => '_',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}

/// `(stem, codec, in_progress)` of a file name: `a_b.zstd.inprogress`.
fn split_name(name: &str) -> (&str, Option<&str>, bool) {
    let (rest, in_progress) = match name.strip_suffix(IN_PROGRESS) {
        Some(r) => (r, true),
        None => (name, false),
    };
    match rest.split_once('.') {
        Some((stem, codec)) if !codec.is_empty() => (stem, Some(codec), in_progress),
        _ => (rest, None, in_progress),
    }
}

/// Classifies a file inside a rolling directory.
pub fn rolling_file(name: &str) -> Option<(Kind, Option<String>)> {
    let (stem, codec, in_progress) = split_name(name);
    if let Some(rest) = stem.strip_prefix("events_") {
        let (n, _) = rest.split_once('_')?;
        let index = n.parse().ok()?;
        return Some((Kind::Events { index }, codec.map(str::to_string)));
    }
    if stem.starts_with("appstatus_") {
        return Some((Kind::AppStatus { in_progress }, None));
    }
    None
}

/// A directory entry as listed: name, whether it is a directory, and for
/// directories their files; sizes and modification times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub mtime_ms: u64,
    /// `Some` for a directory: its files.
    pub children: Option<Vec<Entry>>,
}

/// Groups a listing of the event log directory into logs, oldest first
/// (by latest modification).
pub fn logs(entries: &[Entry]) -> Vec<Log> {
    let mut out = Vec::new();
    for e in entries {
        if e.name.starts_with('.') {
            continue;
        }
        match &e.children {
            Some(children) if e.name.starts_with(ROLLING_PREFIX) => {
                let mut files: Vec<LogFile> = children
                    .iter()
                    .filter(|c| c.children.is_none() && !c.name.starts_with('.'))
                    .filter_map(|c| {
                        let (kind, codec) = rolling_file(&c.name)?;
                        Some(LogFile {
                            log: e.name.clone(),
                            rel: format!("{}/{}", e.name, c.name),
                            kind,
                            size: c.size,
                            mtime_ms: c.mtime_ms,
                            codec,
                        })
                    })
                    .collect();
                files.sort_by_key(|f| match f.kind {
                    Kind::Events { index } => (0, index),
                    _ => (1, 0),
                });
                out.push(Log {
                    name: e.name.clone(),
                    rolling: true,
                    files,
                });
            }
            Some(_) => {}
            None => {
                let (stem, codec, in_progress) = split_name(&e.name);
                if stem.is_empty() {
                    continue;
                }
                out.push(Log {
                    name: stem.to_string(),
                    rolling: false,
                    files: vec![LogFile {
                        log: stem.to_string(),
                        rel: e.name.clone(),
                        kind: Kind::Single { in_progress },
                        size: e.size,
                        mtime_ms: e.mtime_ms,
                        codec: codec.map(str::to_string),
                    }],
                });
            }
        }
    }
    out.sort_by(|a, b| a.mtime_ms().cmp(&b.mtime_ms()).then(a.name.cmp(&b.name)));
    out
}

/// Lists the event log directory one level deep (rolling directories with
/// their files). Entries that vanish while listing are skipped.
pub fn scan(dir: &Path) -> std::io::Result<Vec<Entry>> {
    fn entry(path: &Path, name: String, deep: bool) -> Option<Entry> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let children = if meta.is_dir() {
            if !deep {
                return None;
            }
            let mut v = Vec::new();
            for c in std::fs::read_dir(path).ok()?.flatten() {
                let n = c.file_name().to_string_lossy().into_owned();
                if let Some(e) = entry(&c.path(), n, false) {
                    v.push(e);
                }
            }
            Some(v)
        } else {
            None
        };
        Some(Entry {
            name,
            size: if meta.is_dir() { 0 } else { meta.len() },
            mtime_ms,
            children,
        })
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(x) = entry(&e.path(), name, true) {
            out.push(x);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, mtime_ms: u64) -> Entry {
        Entry {
            name: name.into(),
            size,
            mtime_ms,
            children: None,
        }
    }

    fn dir(name: &str, files: Vec<Entry>) -> Entry {
        Entry {
            name: name.into(),
            size: 0,
            mtime_ms: 0,
            children: Some(files),
        }
    }

    #[test]
    fn rolling_and_single_file_logs() {
        let listing = vec![
            dir(
                "eventlog_v2_local-1796120567455",
                vec![
                    file("events_10_local-1796120567455", 5, 30),
                    file("events_2_local-1796120567455", 10, 20),
                    file("appstatus_local-1796120567455.inprogress", 0, 10),
                    file(".appstatus_local-1796120567455.inprogress.crc", 8, 10),
                    file("notes.txt", 1, 99),
                ],
            ),
            file("app-20261201-0001_1.zstd.inprogress", 7, 5),
            file(".hidden", 1, 1),
            dir("elsewhere", vec![]),
        ];
        let logs = logs(&listing);
        assert_eq!(logs.len(), 2);
        let single = &logs[0];
        assert!(!single.rolling && !single.completed());
        assert_eq!(single.codec(), Some("zstd"));
        assert!(single.belongs_to("app-20261201-0001"));
        let rolling = &logs[1];
        let rels: Vec<&str> = rolling.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                "eventlog_v2_local-1796120567455/events_2_local-1796120567455",
                "eventlog_v2_local-1796120567455/events_10_local-1796120567455",
                "eventlog_v2_local-1796120567455/appstatus_local-1796120567455.inprogress",
            ]
        );
        assert_eq!(rolling.newest_index(), Some(10));
        assert!(!rolling.completed());
        assert_eq!(rolling.codec(), None);
        assert_eq!((rolling.size(), rolling.mtime_ms()), (15, 30));
        assert!(rolling.belongs_to("local-1796120567455"));
        assert!(!rolling.belongs_to("local-17961205674"));
        assert!(rolling.files[1].may_grow(Some(10)));
        assert!(!rolling.files[0].may_grow(Some(10)));
    }

    #[test]
    fn spark_sanitizes_app_ids() {
        assert_eq!(sanitize("spark-Ab.c:d/e f"), "spark-ab_c-d-e-f");
        assert_eq!(
            rolling_file("appstatus_x"),
            Some((Kind::AppStatus { in_progress: false }, None))
        );
        assert_eq!(
            rolling_file("events_3_x.lz4"),
            Some((Kind::Events { index: 3 }, Some("lz4".into())))
        );
        assert_eq!(rolling_file("events_x"), None);
        assert_eq!(rolling_file("events_one_x"), None);
    }
}
