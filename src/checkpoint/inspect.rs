//! The report of `sparkvisor checkpoint inspect`: per query its progress and
//! every torn or leftover file, each with what repair would do about it.
//!
//! Invariants: read-only (a full scan plus the pure repair plan); the JSON
//! shape is `{"queries": [{"path", "id", "latest_offsets_batch",
//! "latest_committed_batch", "last_commit_unix", "inflight_batch",
//! "inflight_age_seconds", "torn_files": [...]}]}`, in that order.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::layout::{self, Depth, EntryState, LayoutError, MetadataState, QueryScan, TreeFinding};
use super::progress::{QueryProgress, seconds, summarize, unix_seconds};
use super::repair::{self, Action, RepairPlan};
use serde::Serialize;

/// One torn or leftover file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TornFile {
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// `torn`, `temp`, `orphan_checksum`, `empty`, `unexpected`, `unreadable`.
    pub kind: &'static str,
    pub detail: String,
    /// What repair does: `remove`, `quarantine`, or nothing (`null`).
    pub repair: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueryInspection {
    pub progress: QueryProgress,
    pub torn_files: Vec<TornFile>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    pub root: PathBuf,
    pub queries: Vec<QueryInspection>,
}

/// Inspects the local checkpoint at `root` (one query or one per subfolder).
/// A folder without any query is [`LayoutError::NotACheckpoint`].
pub fn inspect(root: &Path) -> Result<Inspection, LayoutError> {
    let scans = layout::scan_root(root, Depth::Full)?;
    if scans.is_empty() {
        return Err(LayoutError::NotACheckpoint(root.to_path_buf()));
    }
    Ok(from_scans(root, &scans))
}

/// Builds the report from full scans (pure).
pub fn from_scans(root: &Path, scans: &[QueryScan]) -> Inspection {
    let plan = repair::plan(root, scans);
    Inspection {
        root: root.to_path_buf(),
        queries: scans
            .iter()
            .map(|s| QueryInspection {
                progress: summarize(s),
                torn_files: torn_files(s, &plan),
            })
            .collect(),
    }
}

fn torn_files(scan: &QueryScan, plan: &RepairPlan) -> Vec<TornFile> {
    let mut out = Vec::new();
    let mut add = |path: &Path, kind: &'static str, detail: String| {
        let repair = plan.action_for(path).map(|a| match a {
            Action::Remove { .. } => "remove",
            Action::Quarantine { .. } => "quarantine",
        });
        out.push(TornFile {
            path: path.to_path_buf(),
            kind,
            detail,
            repair,
        });
    };
    let metadata = scan.query.path.join(layout::METADATA);
    match &scan.metadata {
        MetadataState::Malformed(m) => add(&metadata, "torn", format!("query metadata: {m}")),
        MetadataState::Unreadable(e) => add(&metadata, "unreadable", e.clone()),
        MetadataState::Missing | MetadataState::Valid(_) => {}
    }
    for log in [&scan.offsets, &scan.commits] {
        let dir = log.kind.dir_name();
        if let Some(e) = &log.error {
            add(&log.dir, "unreadable", e.clone());
        }
        for e in &log.entries {
            match &e.state {
                EntryState::Malformed(m) => add(&e.path, "torn", format!("{dir}/{}: {m}", e.batch)),
                EntryState::Unreadable(why) => add(&e.path, "unreadable", why.clone()),
                EntryState::Valid { .. } | EntryState::NotRead => {}
            }
        }
        for (batch, path) in &log.orphan_checksums {
            add(
                path,
                "orphan_checksum",
                format!("checksum of {dir}/{batch}, which does not exist"),
            );
        }
        for path in &log.temp_files {
            add(path, "temp", "temp file of an interrupted write".into());
        }
        for path in &log.unexpected {
            add(
                path,
                "unexpected",
                format!("not a batch file; Spark ignores it in {dir}/"),
            );
        }
    }
    for f in &scan.tree {
        match f {
            TreeFinding::Temp(p) => add(p, "temp", "temp file of an interrupted write".into()),
            TreeFinding::Empty(p) => add(p, "empty", "zero-length data file".into()),
            TreeFinding::Unreadable(p, e) => add(p, "unreadable", e.clone()),
        }
    }
    out
}

/// Paths as JSON strings; a name that is not UTF-8 (it happens in a damaged
/// tree) is shown with replacement characters instead of failing the report.
fn lossy_path<S: serde::Serializer, P: AsRef<Path>>(p: P, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.as_ref().to_string_lossy())
}

/// `checkpoint inspect --format json`, keys in the documented order.
#[derive(Debug, Serialize)]
pub struct InspectionJson<'a> {
    pub queries: Vec<QueryJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct QueryJson<'a> {
    #[serde(serialize_with = "lossy_path")]
    pub path: &'a Path,
    pub id: Option<&'a str>,
    pub latest_offsets_batch: Option<u64>,
    pub latest_committed_batch: Option<u64>,
    pub last_commit_unix: Option<f64>,
    pub inflight_batch: Option<u64>,
    pub inflight_age_seconds: Option<f64>,
    pub torn_files: &'a [TornFile],
}

impl Inspection {
    pub fn to_json(&self, now: SystemTime) -> InspectionJson<'_> {
        InspectionJson {
            queries: self
                .queries
                .iter()
                .map(|q| {
                    let p = &q.progress;
                    QueryJson {
                        path: &p.path,
                        id: p.id.as_deref(),
                        latest_offsets_batch: p.latest_offsets_batch,
                        latest_committed_batch: p.latest_committed_batch,
                        last_commit_unix: p.last_commit.map(unix_seconds),
                        inflight_batch: p.inflight_batch,
                        inflight_age_seconds: p.inflight_age(now).map(seconds),
                        torn_files: &q.torn_files,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::fixture::*;
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000)
    }

    #[test]
    fn not_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        put(&tmp.path().join("notes.txt"), b"hello");
        std::fs::create_dir_all(tmp.path().join("sub/deeper")).unwrap();
        assert!(matches!(
            inspect(tmp.path()),
            Err(LayoutError::NotACheckpoint(_))
        ));
        assert!(matches!(
            inspect(&tmp.path().join("missing")),
            Err(LayoutError::NotFound(_))
        ));
    }

    #[test]
    fn multi_query_report_with_torn_and_leftover_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        query(&root.join("healthy"), Some(3), Some(3), t0());
        query(&root.join("inflight"), Some(5), Some(4), t0());
        let torn = root.join("torn");
        query(&torn, Some(2), Some(2), t0());
        put(&torn.join("commits/2"), b"");
        put(&torn.join(format!("offsets/.3.{UUID}.tmp")), b"v1\n{");
        put(&torn.join("offsets/junk"), b"?");
        put(&torn.join("state/0/0/3.delta"), b"");
        put(&torn.join("metadata"), b"{\"id\":");

        let report = inspect(root).unwrap();
        let text = serde_json::to_string(&report.to_json(t0() + Duration::from_secs(52))).unwrap();
        assert!(
            text.starts_with(r#"{"queries":[{"path":"#),
            "documented key order: {text}"
        );
        let j: Value = serde_json::from_str(&text).unwrap();
        let qs = j["queries"].as_array().unwrap();
        assert_eq!(qs.len(), 3);

        assert!(qs[0]["path"].as_str().unwrap().ends_with("/healthy"));
        assert_eq!(qs[0]["id"], ID);
        assert_eq!(qs[0]["latest_offsets_batch"], 3);
        assert_eq!(qs[0]["latest_committed_batch"], 3);
        assert_eq!(qs[0]["inflight_batch"], Value::Null);
        assert_eq!(qs[0]["inflight_age_seconds"], Value::Null);
        assert!(qs[0]["last_commit_unix"].is_number());
        assert_eq!(qs[0]["torn_files"], json!([]));

        assert_eq!(qs[1]["inflight_batch"], 5);
        assert_eq!(qs[1]["inflight_age_seconds"], 2.0);

        let q = &qs[2];
        assert_eq!(q["id"], Value::Null, "torn metadata gives no id");
        assert_eq!(q["latest_committed_batch"], 1);
        assert_eq!(q["inflight_batch"], 2);
        let torn_files: Vec<(String, String, Value)> = q["torn_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let p = Path::new(t["path"].as_str().unwrap());
                (
                    p.strip_prefix(&torn).unwrap().display().to_string(),
                    t["kind"].as_str().unwrap().to_string(),
                    t["repair"].clone(),
                )
            })
            .collect();
        assert_eq!(
            torn_files,
            [
                ("metadata".into(), "torn".into(), Value::Null),
                (
                    format!("offsets/.3.{UUID}.tmp"),
                    "temp".into(),
                    json!("remove")
                ),
                ("offsets/junk".into(), "unexpected".into(), Value::Null),
                ("commits/2".into(), "torn".into(), json!("quarantine")),
                ("state/0/0/3.delta".into(), "empty".into(), Value::Null),
            ]
        );
        // Exactly the keys of the contract.
        let keys: Vec<_> = q.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
        for k in [
            "path",
            "id",
            "latest_offsets_batch",
            "latest_committed_batch",
            "last_commit_unix",
            "inflight_batch",
            "inflight_age_seconds",
            "torn_files",
        ] {
            assert!(q.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn idle_query_and_query_without_batches() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), None, None, t0());
        let r = inspect(tmp.path()).unwrap();
        let p = &r.queries[0].progress;
        assert_eq!(p.id.as_deref(), Some(ID));
        assert_eq!(p.latest_offsets_batch, None);
        assert_eq!(p.inflight_batch, None);
    }
}
