//! Repair of the trailing damage a crash leaves in a checkpoint, before Spark
//! starts on it: a pure [`plan`] over full scans, and [`apply`] at the edge.
//!
//! What is repaired (everything else is left alone and only reported):
//! - temp files of interrupted writes (`.<name>.<uuid>[.TID<n>].tmp` and
//!   their `..….tmp.crc`) anywhere in a query folder are removed: Spark never
//!   renamed them into place, so they were never part of the checkpoint;
//! - malformed `commits/N` at the tail of the commit log (newest first, while
//!   they are malformed) are quarantined with their `.N.crc`; Spark re-runs
//!   batch N from `offsets/N`;
//! - malformed `offsets/N` at the tail of the offset log, only while no
//!   commit at or after N remains; Spark plans batch N again;
//! - a `.N.crc` without its `N` beyond the last remaining entry of a log: Spark
//!   fails to rename its new checksum over it ("Rename destination … already
//!   exists").
//!
//! Quarantine is a folder beside the checkpoint root (default
//! `<root>.quarantine`, never inside a query folder); each repair gets its own
//! `<UTC time>` subfolder that mirrors the layout under the root, plus a
//! `repair.json` saying what came from where and why. Nothing is deleted
//! except temp files. Invariant for callers: no Spark may be using the
//! checkpoint while [`apply`] runs (an in-progress write looks like a temp file).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;

use super::layout::{self, Depth, EntryState, LayoutError, LogListing, QueryScan, TreeFinding};
use crate::beat::Beat;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A temp file of an interrupted write.
    Remove { path: PathBuf },
    /// Files moved together into the quarantine (a log entry and its `.crc`).
    Quarantine { files: Vec<PathBuf>, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    pub root: PathBuf,
    pub query_dirs: Vec<PathBuf>,
    pub actions: Vec<Action>,
}

impl RepairPlan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The action that would touch `path`, if any.
    pub fn action_for(&self, path: &Path) -> Option<&Action> {
        self.actions.iter().find(|a| match a {
            Action::Remove { path: p } => p == path,
            Action::Quarantine { files, .. } => files.iter().any(|f| f == path),
        })
    }
}

/// Decides the repairs for the queries under `root` from full scans.
pub fn plan(root: &Path, scans: &[QueryScan]) -> RepairPlan {
    RepairPlan {
        root: root.to_path_buf(),
        query_dirs: scans.iter().map(|s| s.query.path.clone()).collect(),
        actions: scans.iter().flat_map(plan_query).collect(),
    }
}

fn plan_query(scan: &QueryScan) -> Vec<Action> {
    let mut actions = Vec::new();
    let temps = scan
        .offsets
        .temp_files
        .iter()
        .chain(&scan.commits.temp_files)
        .chain(scan.tree.iter().filter_map(|f| match f {
            TreeFinding::Temp(p) => Some(p),
            _ => None,
        }));
    for path in temps {
        actions.push(Action::Remove { path: path.clone() });
    }

    let commits_kept = trim_tail(&scan.commits, None, &mut actions);
    let offsets_kept = trim_tail(&scan.offsets, commits_kept, &mut actions);
    orphan_checksums(&scan.commits, commits_kept, &mut actions);
    orphan_checksums(&scan.offsets, offsets_kept, &mut actions);
    actions
}

/// Quarantines malformed entries from the newest down; stops at the first
/// entry that is not malformed, or (offsets) at a batch that has a commit.
/// Returns the newest batch that stays.
fn trim_tail(log: &LogListing, keep_up_to: Option<u64>, actions: &mut Vec<Action>) -> Option<u64> {
    let dir = log.kind.dir_name();
    for e in log.entries.iter().rev() {
        let EntryState::Malformed(why) = &e.state else {
            return Some(e.batch);
        };
        if keep_up_to.is_some_and(|c| e.batch <= c) {
            return Some(e.batch);
        }
        let mut files = vec![e.path.clone()];
        files.extend(e.checksum.clone());
        actions.push(Action::Quarantine {
            files,
            reason: format!("{dir}/{}: {why}", e.batch),
        });
    }
    None
}

fn orphan_checksums(log: &LogListing, newest_kept: Option<u64>, actions: &mut Vec<Action>) {
    let dir = log.kind.dir_name();
    for (batch, path) in &log.orphan_checksums {
        if newest_kept.is_none_or(|k| *batch > k) {
            actions.push(Action::Quarantine {
                files: vec![path.clone()],
                reason: format!(
                    "{dir}/.{batch}.crc: checksum of a missing entry (Spark cannot write {dir}/{batch} over it)"
                ),
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("no place for the quarantine folder beside {0}; set checkpoint.quarantine_dir")]
    NoQuarantinePlace(PathBuf),
    #[error(
        "checkpoint.quarantine_dir: the quarantine folder {quarantine} is inside the query folder {query}; choose one outside every query"
    )]
    QuarantineInsideQuery { quarantine: PathBuf, query: PathBuf },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RepairError + use<> {
    let path = path.to_path_buf();
    move |source| RepairError::Io { op, path, source }
}

/// One file moved into the quarantine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub reason: String,
    pub files: Vec<Moved>,
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    pub removed: Vec<PathBuf>,
    pub quarantined: Vec<Quarantined>,
    /// This repair's folder inside the quarantine, when anything was moved.
    pub quarantine: Option<PathBuf>,
}

impl RepairReport {
    /// Repairs made (one per temp file removed, one per entry quarantined):
    /// the increment of `sparkvisor_checkpoint_repairs_total`.
    pub fn repairs(&self) -> u64 {
        (self.removed.len() + self.quarantined.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.repairs() == 0
    }
}

/// `<parent>/<root name>.quarantine`.
pub fn default_quarantine_dir(root: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(root).ok()?;
    let name = abs.file_name()?.to_string_lossy().into_owned();
    Some(abs.with_file_name(format!("{name}.quarantine")))
}

/// Applies `plan`. Quarantined files go to a new `<UTC time>` folder under
/// `quarantine_dir` (created only when something is quarantined).
pub fn apply(
    plan: &RepairPlan,
    quarantine_dir: &Path,
    now: SystemTime,
) -> Result<RepairReport, RepairError> {
    let quarantine_abs =
        std::path::absolute(quarantine_dir).map_err(io_err("resolve", quarantine_dir))?;
    for q in &plan.query_dirs {
        let q_abs = std::path::absolute(q).map_err(io_err("resolve", q))?;
        if quarantine_abs.starts_with(&q_abs) {
            return Err(RepairError::QuarantineInsideQuery {
                quarantine: quarantine_dir.to_path_buf(),
                query: q.clone(),
            });
        }
    }

    let mut report = RepairReport::default();
    for action in &plan.actions {
        match action {
            Action::Remove { path } => match fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "checkpoint repair: removed a leftover temp file");
                    report.removed.push(path.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", path)(e)),
            },
            Action::Quarantine { files, reason } => {
                let session = match &report.quarantine {
                    Some(s) => s.clone(),
                    None => {
                        let s = new_session(quarantine_dir, now)?;
                        report.quarantine = Some(s.clone());
                        s
                    }
                };
                let mut moved = Vec::new();
                for from in files {
                    let rel = from.strip_prefix(&plan.root).unwrap_or(from.as_path());
                    let rel = rel.strip_prefix("/").unwrap_or(rel);
                    let to = session.join(rel);
                    move_file(from, &to)?;
                    tracing::warn!(
                        from = %from.display(),
                        to = %to.display(),
                        reason = %reason,
                        "checkpoint repair: quarantined a torn file"
                    );
                    moved.push(Moved {
                        from: from.clone(),
                        to,
                    });
                }
                report.quarantined.push(Quarantined {
                    reason: reason.clone(),
                    files: moved,
                });
            }
        }
    }
    if let Some(session) = &report.quarantine {
        write_record(session, plan, &report, now)?;
    }
    Ok(report)
}

/// Scans every query under `root` fully and plans, touching nothing: what
/// the caller logs when `checkpoint.repair` is off. A root that does not
/// exist yet needs no repair.
pub fn plan_root(root: &Path) -> Result<RepairPlan, RepairError> {
    plan_root_beating(root, &Beat::none())
}

/// [`plan_root`], beating `beat` as the scan goes.
pub fn plan_root_beating(root: &Path, beat: &Beat) -> Result<RepairPlan, RepairError> {
    match layout::scan_root_beating(root, Depth::Full, beat) {
        Ok(scans) => Ok(plan(root, &scans)),
        Err(LayoutError::NotFound(_)) => Ok(plan(root, &[])),
        Err(e) => Err(e.into()),
    }
}

/// [`plan_root`], then [`apply`] into `quarantine_dir` (default
/// [`default_quarantine_dir`]).
pub fn repair(
    root: &Path,
    quarantine_dir: Option<&Path>,
    now: SystemTime,
) -> Result<RepairReport, RepairError> {
    repair_beating(root, quarantine_dir, now, &Beat::none())
}

/// [`repair`], beating `beat` as the scan goes.
pub fn repair_beating(
    root: &Path,
    quarantine_dir: Option<&Path>,
    now: SystemTime,
    beat: &Beat,
) -> Result<RepairReport, RepairError> {
    let plan = plan_root_beating(root, beat)?;
    if plan.is_empty() {
        return Ok(RepairReport::default());
    }
    let quarantine = match quarantine_dir {
        Some(q) => q.to_path_buf(),
        None => default_quarantine_dir(root)
            .ok_or_else(|| RepairError::NoQuarantinePlace(root.to_path_buf()))?,
    };
    apply(&plan, &quarantine, now)
}

/// `20261121T000400Z`: sortable, and safe in any file system or object store.
fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

fn new_session(quarantine_dir: &Path, now: SystemTime) -> Result<PathBuf, RepairError> {
    fs::create_dir_all(quarantine_dir).map_err(io_err("create", quarantine_dir))?;
    let base = stamp(now);
    for n in 1..1000 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = quarantine_dir.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
    }
    Err(io_err("create", quarantine_dir)(io::Error::other(
        "too many repairs in the same second",
    )))
}

/// Renames; across file systems copies, syncs, then removes the original.
/// Never overwrites.
fn move_file(from: &Path, to: &Path) -> Result<(), RepairError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(io_err("move to", to)(io::Error::from(
            io::ErrorKind::AlreadyExists,
        )));
    }
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EXDEV as i32) => {
            fs::copy(from, to).map_err(io_err("copy", from))?;
            fs::File::open(to)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", to))?;
            fs::remove_file(from).map_err(io_err("remove", from))
        }
        Err(e) => Err(io_err("move", from)(e)),
    }
}

fn write_record(
    session: &Path,
    plan: &RepairPlan,
    report: &RepairReport,
    now: SystemTime,
) -> Result<(), RepairError> {
    let moved: Vec<_> = report
        .quarantined
        .iter()
        .flat_map(|q| {
            q.files.iter().map(move |m| {
                json!({
                    "from": m.from.to_string_lossy(),
                    "to": m.to.to_string_lossy(),
                    "reason": q.reason,
                })
            })
        })
        .collect();
    let doc = json!({
        "at": humantime::format_rfc3339_seconds(now).to_string(),
        "checkpoint": plan.root.to_string_lossy(),
        "moved": moved,
        "removed_temp_files": report
            .removed
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>(),
    });
    let path = session.join("repair.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    fs::write(&path, text).map_err(io_err("write", &path))
}

#[cfg(test)]
mod tests {
    use super::super::layout::fixture::*;
    use super::super::layout::{QueryDir, scan_query};
    use super::*;
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000)
    }

    fn full(dir: &Path) -> QueryScan {
        scan_query(
            &QueryDir {
                name: dir.file_name().unwrap().to_string_lossy().into(),
                path: dir.to_path_buf(),
            },
            Depth::Full,
        )
    }

    fn quarantined(plan: &RepairPlan) -> Vec<Vec<PathBuf>> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Quarantine { files, .. } => Some(files.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn healthy_idle_and_inflight_need_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, planned, committed) in [
            ("healthy", Some(3), Some(3)),
            ("inflight", Some(4), Some(3)),
            ("first", Some(0), None),
            ("new", None, None),
        ] {
            let q = tmp.path().join(name);
            query(&q, planned, committed, t0());
            let p = plan(&q, &[full(&q)]);
            assert!(p.is_empty(), "{name}: {:?}", p.actions);
        }
    }

    #[test]
    fn empty_trailing_commit_is_quarantined_with_its_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(4), Some(4), t0());
        put(&q.join("commits/4"), b"");
        let p = plan(&q, &[full(&q)]);
        assert_eq!(
            quarantined(&p),
            [vec![q.join("commits/4"), q.join("commits/.4.crc")]]
        );
        // The uncommitted offsets/4 is normal: Spark re-runs it.
        assert!(p.action_for(&q.join("offsets/4")).is_none());
    }

    #[test]
    fn torn_trailing_offsets_without_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(5), Some(4), t0());
        put(
            &q.join("offsets/5"),
            b"v1\n{\"batchWatermarkMs\":0,\"batchTi",
        );
        let p = plan(&q, &[full(&q)]);
        assert_eq!(
            quarantined(&p),
            [vec![q.join("offsets/5"), q.join("offsets/.5.crc")]]
        );
    }

    #[test]
    fn several_torn_entries_at_the_tail() {
        // Power loss can zero the newest few files of both logs.
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(6), Some(6), t0());
        for f in ["commits/6", "commits/5", "offsets/6"] {
            put(&q.join(f), &[0u8; 29]);
        }
        let p = plan(&q, &[full(&q)]);
        let firsts: Vec<_> = quarantined(&p).into_iter().map(|f| f[0].clone()).collect();
        assert_eq!(
            firsts,
            [
                q.join("commits/6"),
                q.join("commits/5"),
                q.join("offsets/6")
            ]
        );
    }

    #[test]
    fn torn_offsets_with_a_commit_or_in_the_middle_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(5), Some(5), t0());
        // offsets/5 torn but commits/5 valid: not a trailing write Spark redoes.
        put(&q.join("offsets/5"), b"");
        // A torn entry below valid ones is not trailing either.
        put(&q.join("commits/2"), b"");
        let p = plan(&q, &[full(&q)]);
        assert!(p.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn garbage_and_unreadable() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(3), Some(3), t0());
        put(&q.join("commits/3"), b"v1\n{\"nextBatchWatermarkMs\":X}");
        let p = plan(&q, &[full(&q)]);
        assert_eq!(quarantined(&p).len(), 1);
        match &p.actions[0] {
            Action::Quarantine { reason, .. } => {
                assert!(
                    reason.starts_with("commits/3: line 2 is not valid JSON"),
                    "{reason}"
                )
            }
            a => panic!("{a:?}"),
        }
        // An entry that cannot be read is never moved.
        fs::remove_file(q.join("commits/3")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("gone"), q.join("commits/3")).unwrap();
        let p = plan(&q, &[full(&q)]);
        assert!(p.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn temp_files_everywhere_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(2), Some(2), t0());
        let temps = [
            q.join(format!("commits/.3.{UUID}.tmp")),
            q.join(format!("commits/..3.{UUID}.tmp.crc")),
            q.join(format!("offsets/.3.{UUID}.tmp")),
            q.join(format!("state/0/0/.4.delta.{UUID}.TID9.tmp")),
            q.join(format!("sources/0/.3.{UUID}.tmp")),
        ];
        for t in &temps {
            put(t, b"partial");
        }
        let p = plan(&q, &[full(&q)]);
        let mut removed: Vec<_> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Remove { path } => path.clone(),
                a => panic!("{a:?}"),
            })
            .collect();
        removed.sort();
        let mut want = temps.to_vec();
        want.sort();
        assert_eq!(removed, want);
    }

    #[test]
    fn trailing_orphan_checksum_is_quarantined() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        query(&q, Some(4), Some(3), t0());
        put(&q.join("commits/.4.crc"), b"crc\0");
        put(&q.join("commits/.1.crc.bak"), b"x");
        fs::remove_file(q.join("offsets/2")).unwrap();
        let p = plan(&q, &[full(&q)]);
        // .4.crc blocks Spark from committing batch 4; offsets/.2.crc sits
        // below live entries and is left alone.
        assert_eq!(quarantined(&p), [vec![q.join("commits/.4.crc")]]);
    }

    #[test]
    fn apply_moves_into_a_quarantine_beside_the_root_and_records_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoint");
        let q = root.join("dedup");
        query(&q, Some(4), Some(4), t0());
        query(&root.join("other"), Some(1), Some(1), t0());
        put(&q.join("commits/4"), b"");
        let temp = q.join(format!("state/0/0/.5.delta.{UUID}.TID3.tmp"));
        put(&temp, b"partial");

        let report = repair(&root, None, t0()).unwrap();
        assert_eq!(report.repairs(), 2);
        assert_eq!(report.removed, std::slice::from_ref(&temp));
        assert!(!temp.exists());
        let session = tmp.path().join("checkpoint.quarantine/20261120T235640Z");
        assert_eq!(report.quarantine.as_deref(), Some(session.as_path()));
        assert_eq!(
            report.quarantined[0].files,
            [
                Moved {
                    from: q.join("commits/4"),
                    to: session.join("dedup/commits/4"),
                },
                Moved {
                    from: q.join("commits/.4.crc"),
                    to: session.join("dedup/commits/.4.crc"),
                },
            ]
        );
        assert!(!q.join("commits/4").exists() && !q.join("commits/.4.crc").exists());
        assert_eq!(fs::read(session.join("dedup/commits/4")).unwrap(), b"");
        assert_eq!(
            fs::read(session.join("dedup/commits/.4.crc")).unwrap(),
            b"crc\0\0\0\x02\0abcd"
        );
        let record: serde_json::Value =
            serde_json::from_slice(&fs::read(session.join("repair.json")).unwrap()).unwrap();
        assert_eq!(record["moved"].as_array().unwrap().len(), 2);
        assert_eq!(record["moved"][0]["reason"], "commits/4: empty file");
        // Everything else is untouched, and a second repair has nothing to do.
        assert_eq!(fs::read_dir(q.join("commits")).unwrap().count(), 8);
        assert!(repair(&root, None, t0()).unwrap().is_empty());

        // The next repair in the same second gets its own folder.
        put(&q.join("offsets/5"), b"");
        let again = repair(&root, None, t0()).unwrap();
        assert_eq!(
            again.quarantine.as_deref(),
            Some(
                tmp.path()
                    .join("checkpoint.quarantine/20261120T235640Z-2")
                    .as_path()
            )
        );
    }

    #[test]
    fn single_query_root_and_missing_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ck");
        assert!(repair(&root, None, t0()).unwrap().is_empty());
        query(&root, Some(2), Some(2), t0());
        put(&root.join("offsets/3"), b"v1");
        let report = repair(&root, None, t0()).unwrap();
        let to = &report.quarantined[0].files[0].to;
        assert_eq!(
            to,
            &tmp.path().join("ck.quarantine/20261120T235640Z/offsets/3")
        );
    }

    #[test]
    fn plan_root_touches_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ck");
        assert!(plan_root(&root).unwrap().is_empty());
        query(&root, Some(2), Some(2), t0());
        put(&root.join("commits/2"), b"");
        let temp = root.join(format!("state/0/0/.3.delta.{UUID}.TID1.tmp"));
        put(&temp, b"x");
        let p = plan_root(&root).unwrap();
        assert_eq!(p.actions.len(), 2);
        assert!(root.join("commits/2").exists() && temp.exists());
        assert!(!tmp.path().join("ck.quarantine").exists());
    }

    #[test]
    fn quarantine_inside_a_query_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ck");
        query(&root, Some(2), Some(2), t0());
        put(&root.join("commits/2"), b"");
        let err = repair(&root, Some(&root.join("q")), t0()).unwrap_err();
        assert!(
            matches!(err, RepairError::QuarantineInsideQuery { .. }),
            "{err}"
        );
        assert!(root.join("commits/2").exists(), "nothing moved");
    }

    #[test]
    fn stamps() {
        assert_eq!(stamp(t0()), "20261120T235640Z");
        assert_eq!(
            default_quarantine_dir(Path::new("/data/ck")).unwrap(),
            Path::new("/data/ck.quarantine")
        );
        assert_eq!(default_quarantine_dir(Path::new("/")), None);
    }
}
