//! Ships the event logs of every attempt to `eventlog.s3_uri` in the
//! History Server's layout (the local directory mirrored below the prefix,
//! `PREFIX/eventlog_v2_<appId>/events_<N>_<appId>` …), and keeps the local
//! directory within `eventlog.local_retention`.
//!
//! Every `sync_interval`, when an attempt ends, and once more when
//! sparkvisor exits: files that are new or have grown since their last
//! upload are uploaded (completed files once, the file Spark is writing
//! again each time it grew), events before the app status file; when Spark
//! renamed a file at the app's end (`appstatus_X.inprogress` →
//! `appstatus_X`) the in-progress object is deleted after the new one is
//! up. A History Server reading the prefix therefore lists every attempt,
//! also one whose JVM was killed (its log stays "in progress").
//!
//! Retention: with shipping on, logs of attempts that have ended and are
//! fully uploaded are deleted locally, and so are uploaded completed files
//! of the running attempt; then, with shipping on or off, the oldest files
//! go until the directory is within budget (files deleted before their
//! upload are counted as dropped). The file Spark is writing and the
//! running attempt's app status are never deleted.
//!
//! Invariants: `plan` and `retention` are pure; remote state is learned
//! once per log (one LIST of its names) and afterwards only what was
//! uploaded is remembered; an upload error leaves that file for the next
//! cycle and never touches the app; nothing Spark writes is modified.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::layout::{self, Kind, Log, LogFile};
use crate::attempt::Current;
use crate::s3::{Location, Store};
use crate::status::{Shared, unix_now};

/// What one cycle should send and delete in S3.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Relative paths with the size to upload, in upload order.
    pub uploads: Vec<(String, u64)>,
    /// Relative paths of objects to delete after the uploads.
    pub deletes: Vec<String>,
}

/// What is known of the remote copy: object sizes by relative path.
pub type Remote = HashMap<String, u64>;

/// Files new or grown since their last upload (per log: events in order,
/// then the app status), and in-progress objects whose file Spark renamed.
pub fn plan(logs: &[Log], remote: &Remote) -> Plan {
    let mut p = Plan::default();
    for log in logs {
        for f in &log.files {
            if remote.get(&f.rel) != Some(&f.size) {
                p.uploads.push((f.rel.clone(), f.size));
            }
        }
        let local: HashSet<&str> = log.files.iter().map(|f| f.rel.as_str()).collect();
        for f in &log.files {
            let stale = format!("{}{}", f.rel, layout::IN_PROGRESS);
            if !f.rel.ends_with(layout::IN_PROGRESS)
                && !local.contains(stale.as_str())
                && remote.contains_key(&stale)
            {
                p.deletes.push(stale);
            }
        }
    }
    p
}

/// A local deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// A whole log (its directory, or its single file).
    Log {
        name: String,
        rel: Vec<String>,
        uploaded: bool,
        bytes: u64,
    },
    /// One completed events file of the running attempt.
    File {
        rel: String,
        uploaded: bool,
        bytes: u64,
    },
}

impl Removal {
    fn bytes(&self) -> u64 {
        match self {
            Removal::Log { bytes, .. } | Removal::File { bytes, .. } => *bytes,
        }
    }

    /// Files removed that were never uploaded (when shipping).
    pub fn dropped(&self, shipping: bool) -> usize {
        if !shipping {
            return 0;
        }
        match self {
            Removal::Log {
                uploaded: false,
                rel,
                ..
            } => rel.len(),
            Removal::File {
                uploaded: false, ..
            } => 1,
            _ => 0,
        }
    }
}

/// The log Spark is writing: the newest one not marked ended, while an
/// attempt runs.
pub fn live(logs: &[Log], running: bool) -> Option<&str> {
    if !running {
        return None;
    }
    logs.iter()
        .rev()
        .find(|l| !l.completed())
        .map(|l| l.name.as_str())
}

/// What to delete locally (see the module docs), oldest first.
pub fn retention(
    logs: &[Log],
    remote: &Remote,
    live: Option<&str>,
    shipping: bool,
    budget: u64,
) -> Vec<Removal> {
    let uploaded = |f: &LogFile| remote.get(&f.rel) == Some(&f.size);
    let mut out = Vec::new();
    let mut total: u64 = logs.iter().map(Log::size).sum();
    // Candidates, oldest first: whole ended logs, then completed files of
    // the live one.
    let mut ended: Vec<Removal> = Vec::new();
    let mut completed: Vec<Removal> = Vec::new();
    for log in logs {
        if Some(log.name.as_str()) == live {
            let newest = log.newest_index();
            for f in &log.files {
                if matches!(f.kind, Kind::Events { .. }) && !f.may_grow(newest) {
                    completed.push(Removal::File {
                        rel: f.rel.clone(),
                        uploaded: uploaded(f),
                        bytes: f.size,
                    });
                }
            }
        } else {
            ended.push(Removal::Log {
                name: log.name.clone(),
                rel: log.files.iter().map(|f| f.rel.clone()).collect(),
                uploaded: log.files.iter().all(uploaded),
                bytes: log.size(),
            });
        }
    }
    let mut rest = Vec::new();
    for r in ended.into_iter().chain(completed) {
        let done = matches!(
            r,
            Removal::Log { uploaded: true, .. } | Removal::File { uploaded: true, .. }
        );
        if shipping && done {
            total -= r.bytes();
            out.push(r);
        } else {
            rest.push(r);
        }
    }
    for r in rest {
        if total <= budget {
            break;
        }
        total -= r.bytes();
        out.push(r);
    }
    out
}

/// Where the logs go.
pub struct Target {
    pub store: Store,
    pub location: Location,
}

impl Target {
    fn key(&self, rel: &str) -> String {
        if self.location.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.location.prefix)
        }
    }
}

/// Numbers since the start, for metrics and `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub files_total: u64,
    pub bytes_total: u64,
    pub errors_total: u64,
    pub dropped_files_total: u64,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
    pub local_bytes: u64,
    pub logs: usize,
}

/// The shipper: one per sparkvisor process.
pub struct Shipper {
    root: PathBuf,
    target: Option<Target>,
    retention: u64,
    remote: Remote,
    learned: BTreeSet<String>,
    pub stats: Stats,
}

impl Shipper {
    /// `target` None: local retention only.
    pub fn new(root: PathBuf, target: Option<Target>, retention: u64) -> Shipper {
        Shipper {
            root,
            target,
            retention,
            remote: Remote::new(),
            learned: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    /// One cycle: learn, upload, delete remote leftovers, keep the local
    /// directory within budget.
    pub async fn cycle(&mut self, running: bool) {
        let root = self.root.clone();
        let listing = tokio::task::spawn_blocking(move || layout::scan(&root)).await;
        let logs = match listing {
            Ok(Ok(entries)) => layout::logs(&entries),
            Ok(Err(e)) => {
                self.failed(format!("cannot list {}: {e}", self.root.display()));
                return;
            }
            Err(e) => {
                self.failed(format!("listing task failed: {e}"));
                return;
            }
        };
        let mut errors = 0;
        if self.target.is_some() {
            errors += self.learn(&logs).await;
            errors += self.send(&logs).await;
            if errors == 0 {
                self.stats.last_success_unix = Some(unix_now());
            }
        }
        let removals = retention(
            &logs,
            &self.remote,
            live(&logs, running),
            self.target.is_some(),
            self.retention,
        );
        let freed: u64 = removals.iter().map(Removal::bytes).sum();
        for r in &removals {
            self.remove(r).await;
        }
        let total: u64 = logs.iter().map(Log::size).sum();
        self.stats.local_bytes = total.saturating_sub(freed);
        self.stats.logs = logs.len()
            - removals
                .iter()
                .filter(|r| matches!(r, Removal::Log { .. }))
                .count();
    }

    fn failed(&mut self, msg: String) {
        warn!(error = %msg, "event log sync");
        self.stats.errors_total += 1;
        self.stats.last_error = Some(msg);
    }

    /// Lists the remote names of logs seen for the first time.
    async fn learn(&mut self, logs: &[Log]) -> u64 {
        let Some(t) = &self.target else { return 0 };
        let mut errors = 0;
        let mut failures = Vec::new();
        for log in logs {
            if self.learned.contains(&log.name) {
                continue;
            }
            let prefix = t.key(&log.name);
            match t.store.list_sizes(&prefix).await {
                Ok(keys) => {
                    let base = t.key("");
                    for (k, size) in keys {
                        if let Some(rel) = k.strip_prefix(&base) {
                            self.remote.insert(rel.to_string(), size);
                        }
                    }
                    self.learned.insert(log.name.clone());
                }
                Err(e) => {
                    errors += 1;
                    failures.push(e.to_string());
                }
            }
        }
        for f in failures {
            self.failed(f);
        }
        errors
    }

    async fn send(&mut self, logs: &[Log]) -> u64 {
        let known: Vec<Log> = logs
            .iter()
            .filter(|l| self.learned.contains(&l.name))
            .cloned()
            .collect();
        let p = plan(&known, &self.remote);
        let Some(t) = &self.target else { return 0 };
        let mut errors = Vec::new();
        let mut failed_logs: HashSet<String> = HashSet::new();
        for (rel, size) in &p.uploads {
            let log = rel.split('/').next().unwrap_or(rel).to_string();
            if failed_logs.contains(&log) {
                // Keep a log's order: nothing after a failed file.
                continue;
            }
            let key = t.key(rel);
            match t
                .store
                .put_file_head(&key, &self.root.join(rel), *size)
                .await
            {
                Ok(n) => {
                    self.remote.insert(rel.clone(), n);
                    self.stats.files_total += 1;
                    self.stats.bytes_total += n;
                }
                Err(crate::s3::StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    // Renamed or deleted since the listing: next cycle.
                }
                Err(e) => {
                    failed_logs.insert(log);
                    errors.push(e.to_string());
                }
            }
        }
        for rel in &p.deletes {
            let log = rel.split('/').next().unwrap_or(rel);
            if failed_logs.contains(log) {
                continue;
            }
            match t.store.delete(&t.key(rel)).await {
                Ok(()) => {
                    self.remote.remove(rel);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let n = errors.len() as u64;
        for e in errors {
            self.failed(e);
        }
        n
    }

    async fn remove(&mut self, r: &Removal) {
        let shipping = self.target.is_some();
        let dropped = r.dropped(shipping) as u64;
        let (path, what) = match r {
            Removal::Log { name, rel, .. } => {
                let p = self.root.join(if rel.iter().any(|x| x.contains('/')) {
                    name.as_str()
                } else {
                    rel.first().map_or(name.as_str(), String::as_str)
                });
                (p, "log")
            }
            Removal::File { rel, .. } => (self.root.join(rel), "file"),
        };
        let p = path.clone();
        let res = tokio::task::spawn_blocking(move || remove_path(&p)).await;
        match res {
            Ok(Ok(())) => {
                if dropped > 0 {
                    warn!(path = %path.display(), files = dropped, "deleted event log files before they were uploaded (eventlog.local_retention)");
                    self.stats.dropped_files_total += dropped;
                } else {
                    info!(path = %path.display(), what, "deleted a shipped or old event log locally");
                }
            }
            Ok(Err(e)) => {
                warn!(path = %path.display(), error = %e, "cannot delete an old event log")
            }
            Err(_) => {}
        }
    }

    /// The `/status` view.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.stats).unwrap_or_default();
        v["dir"] = self.root.display().to_string().into();
        v["s3_uri"] = self.target.as_ref().map(|t| t.location.to_string()).into();
        v["local_retention_bytes"] = self.retention.into();
        v
    }
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs cycles every `every`, at once when an attempt ends, and a last one
/// (bounded by `final_timeout`) when `stop` turns true; then returns.
pub async fn run(
    shared: Arc<Shared>,
    mut shipper: Shipper,
    every: Duration,
    mut current: watch::Receiver<Current>,
    mut stop: watch::Receiver<bool>,
    final_timeout: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Published::default();
    let mut running = current.borrow().is_some();
    let mut supervised = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = current.changed(), if supervised => {
                if changed.is_err() {
                    // The supervisor is gone: only the stop is left.
                    supervised = false;
                    continue;
                }
                let now = current.borrow_and_update().is_some();
                let ended = running && !now;
                running = now;
                if !ended {
                    continue;
                }
            }
            changed = stop.changed() => {
                if changed.is_ok() && !*stop.borrow_and_update() {
                    continue;
                }
                if tokio::time::timeout(final_timeout, shipper.cycle(false)).await.is_err() {
                    warn!(timeout_s = final_timeout.as_secs(), "the last event log sync did not finish within eventlog.final_sync_timeout");
                    shipper.stats.errors_total += 1;
                }
                publish(&shared, &shipper, &mut seen);
                return;
            }
        }
        shipper.cycle(running).await;
        publish(&shared, &shipper, &mut seen);
    }
}

#[derive(Default)]
struct Published {
    files: u64,
    bytes: u64,
    errors: u64,
    dropped: u64,
}

/// Copies the numbers into the metrics (counters by their increase) and
/// `/status`.
fn publish(shared: &Shared, shipper: &Shipper, seen: &mut Published) {
    let s = &shipper.stats;
    let m = &shared.metrics;
    m.eventlog_sync_files_total
        .inc_by(s.files_total.saturating_sub(seen.files));
    m.eventlog_sync_bytes_total
        .inc_by(s.bytes_total.saturating_sub(seen.bytes));
    m.eventlog_sync_errors_total
        .inc_by(s.errors_total.saturating_sub(seen.errors));
    m.eventlog_dropped_files_total
        .inc_by(s.dropped_files_total.saturating_sub(seen.dropped));
    *seen = Published {
        files: s.files_total,
        bytes: s.bytes_total,
        errors: s.errors_total,
        dropped: s.dropped_files_total,
    };
    if let Some(t) = s.last_success_unix {
        m.eventlog_last_sync_timestamp_seconds.set(t);
    }
    m.eventlog_local_bytes.set(s.local_bytes as i64);
    let doc = shipper.to_json();
    shared.update(|st| set_section(&mut st.eventlog, "shipping", doc));
}

/// Sets `doc[key]`, making `doc` an object first (each section of
/// `/status` `eventlog` has one writer).
pub fn set_section(doc: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if !doc.is_object() {
        *doc = serde_json::json!({});
    }
    doc[key] = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::layout::{Entry, logs};

    fn file(name: &str, size: u64, mtime_ms: u64) -> Entry {
        Entry {
            name: name.into(),
            size,
            mtime_ms,
            children: None,
        }
    }

    fn app(id: &str, t: u64, files: &[(&str, u64)]) -> Entry {
        Entry {
            name: format!("eventlog_v2_{id}"),
            size: 0,
            mtime_ms: 0,
            children: Some(
                files
                    .iter()
                    .map(|(n, s)| file(&n.replace("ID", id), *s, t))
                    .collect(),
            ),
        }
    }

    fn remote(pairs: &[(&str, u64)]) -> Remote {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn new_and_grown_files_in_order_then_renamed_leftovers() {
        let l = logs(&[app(
            "a",
            10,
            &[
                ("appstatus_ID.inprogress", 0),
                ("events_2_ID", 50),
                ("events_1_ID", 100),
            ],
        )]);
        let p = plan(&l, &Remote::new());
        let order: Vec<&str> = p.uploads.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            order,
            [
                "eventlog_v2_a/events_1_a",
                "eventlog_v2_a/events_2_a",
                "eventlog_v2_a/appstatus_a.inprogress"
            ]
        );
        // Only what grew goes again.
        let known = remote(&[
            ("eventlog_v2_a/events_1_a", 100),
            ("eventlog_v2_a/events_2_a", 40),
            ("eventlog_v2_a/appstatus_a.inprogress", 0),
        ]);
        assert_eq!(
            plan(&l, &known).uploads,
            [("eventlog_v2_a/events_2_a".to_string(), 50)]
        );
        // The app ended: its status was renamed.
        let ended = logs(&[app(
            "a",
            20,
            &[
                ("appstatus_ID", 0),
                ("events_1_ID", 100),
                ("events_2_ID", 50),
            ],
        )]);
        let p = plan(&ended, &known);
        assert_eq!(
            p.uploads,
            [
                ("eventlog_v2_a/events_2_a".to_string(), 50),
                ("eventlog_v2_a/appstatus_a".to_string(), 0)
            ]
        );
        assert_eq!(p.deletes, ["eventlog_v2_a/appstatus_a.inprogress"]);
    }

    #[test]
    fn retention_keeps_what_spark_writes_and_drops_shipped_logs_first() {
        let l = logs(&[
            app(
                "old",
                1,
                &[("events_1_ID", 100), ("appstatus_ID.inprogress", 0)],
            ),
            app(
                "live",
                2,
                &[
                    ("events_1_ID", 100),
                    ("events_2_ID", 100),
                    ("events_3_ID", 30),
                    ("appstatus_ID.inprogress", 0),
                ],
            ),
        ]);
        let live_log = live(&l, true);
        assert_eq!(live_log, Some("eventlog_v2_live"));
        assert_eq!(live(&l, false), None);
        // Shipping, all uploaded: the old log and the live one's completed
        // files go, whatever the budget.
        let all: Remote = l
            .iter()
            .flat_map(|x| x.files.iter().map(|f| (f.rel.clone(), f.size)))
            .collect();
        let r = retention(&l, &all, live_log, true, 10_000);
        assert_eq!(r.len(), 3);
        assert!(
            matches!(&r[0], Removal::Log { name, uploaded: true, .. } if name == "eventlog_v2_old")
        );
        assert!(r.iter().all(|x| x.dropped(true) == 0));
        // Nothing uploaded (S3 down) and a roomy budget: keep everything.
        assert!(retention(&l, &Remote::new(), live_log, true, 10_000).is_empty());
        // Tight budget: oldest first, never the file being written.
        let r = retention(&l, &Remote::new(), live_log, true, 50);
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().map(|x| x.dropped(true)).sum::<usize>(), 4);
        assert!(
            r.iter()
                .all(|x| !matches!(x, Removal::File { rel, .. } if rel.contains("events_3")))
        );
        // Without shipping only the budget deletes.
        let r = retention(&l, &all, live_log, false, 250);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].dropped(false), 0);
        // After the app: nothing is live, everything shipped can go.
        assert_eq!(retention(&l, &all, None, true, 10_000).len(), 2);
    }
}
