//! Progress of each query (latest planned and committed batch, last commit
//! time, the batch in flight) and the stall decision.
//!
//! Invariants: [`refresh`] lists only `offsets/` and `commits/` and reads the
//! newest entries (never `state/`), so the supervisor can call it every few
//! seconds. [`summarize`] and [`assess`] are pure.
//!
//! When a batch was planned: the `batchTimestampMs` written inside
//! `offsets/N` (Spark's trigger time for the batch), falling back to the
//! file's mtime only when the field is absent. The content survives copies
//! and S3 restores, which reset mtimes. But Spark re-runs an uncommitted batch
//! after a restart with the *same* `offsets/N` (same timestamp, same mtime),
//! so the stall clock starts at the later of "planned" and "when this attempt
//! of the app started" (`watching_since`); otherwise every restart would look
//! stalled at once. The time of a commit is the mtime of `commits/N`: the
//! file holds no timestamp.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::layout::{self, Depth, LayoutError, QueryScan};

/// Progress of one query, as read from its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryProgress {
    /// Subfolder name (or the root's name for a single-query root): the
    /// `query` label of the metrics.
    pub name: String,
    pub path: PathBuf,
    /// From `metadata`; `None` when missing or unreadable.
    pub id: Option<String>,
    /// Newest `offsets/N` that parses.
    pub latest_offsets_batch: Option<u64>,
    /// When that batch was planned (see the module doc).
    pub planned_at: Option<SystemTime>,
    /// Newest `commits/N` that parses.
    pub latest_committed_batch: Option<u64>,
    pub last_commit: Option<SystemTime>,
    /// The planned batch when it is not committed yet.
    pub inflight_batch: Option<u64>,
}

/// Derives a query's progress from a scan of it (either depth).
pub fn summarize(scan: &QueryScan) -> QueryProgress {
    let offsets = scan.offsets.latest_valid();
    let commit = scan.commits.latest_valid();
    let latest_offsets_batch = offsets.map(|e| e.batch);
    let latest_committed_batch = commit.map(|e| e.batch);
    let planned_at = offsets.and_then(|e| {
        e.offsets()
            .and_then(|o| o.batch_timestamp_ms)
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .or_else(|| e.modified())
    });
    let inflight_batch = match (latest_offsets_batch, latest_committed_batch) {
        (Some(o), None) => Some(o),
        (Some(o), Some(c)) if o > c => Some(o),
        _ => None,
    };
    QueryProgress {
        name: scan.query.name.clone(),
        path: scan.query.path.clone(),
        id: scan.metadata.id().map(str::to_string),
        latest_offsets_batch,
        planned_at,
        latest_committed_batch,
        last_commit: commit.and_then(|e| e.modified()),
        inflight_batch,
    }
}

/// Reads the progress of every query under `root`, cheaply (see module doc).
/// A root that does not exist yet has no queries.
pub fn refresh(root: &Path) -> Result<Vec<QueryProgress>, LayoutError> {
    match layout::scan_root(root, Depth::Latest) {
        Ok(scans) => Ok(scans.iter().map(summarize).collect()),
        Err(LayoutError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn seconds_between(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// Seconds since the Unix epoch, to the millisecond.
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => seconds(d),
        Err(e) => -seconds(e.duration()),
    }
}

/// Seconds, to the millisecond.
pub fn seconds(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

impl QueryProgress {
    /// Age of the in-flight batch as a user sees it: since it was planned.
    pub fn inflight_age(&self, now: SystemTime) -> Option<Duration> {
        self.inflight_batch?;
        self.planned_at.map(|p| seconds_between(now, p))
    }

    pub fn last_commit_age(&self, now: SystemTime) -> Option<Duration> {
        self.last_commit.map(|t| seconds_between(now, t))
    }

    /// For `/status`: the fields of `checkpoint inspect --format json` plus `name`.
    pub fn to_json(&self, now: SystemTime) -> Value {
        json!({
            "path": self.path.to_string_lossy(),
            "name": self.name,
            "id": self.id,
            "latest_offsets_batch": self.latest_offsets_batch,
            "latest_committed_batch": self.latest_committed_batch,
            "last_commit_unix": self.last_commit.map(unix_seconds),
            "inflight_batch": self.inflight_batch,
            "inflight_age_seconds": self.inflight_age(now).map(seconds),
        })
    }
}

/// What a query is doing, for the stall check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Nothing planned beyond the last commit: healthy however long ago.
    Idle,
    /// A batch is running; `age` counts from the later of its planning and
    /// `watching_since`.
    Running { batch: u64, age: Duration },
    /// A batch has been running longer than the stall timeout.
    Stalled { batch: u64, age: Duration },
}

impl Activity {
    pub fn is_stalled(&self) -> bool {
        matches!(self, Activity::Stalled { .. })
    }
}

/// The stall decision for one query. `watching_since` is when the current
/// attempt of the app started; `stall_timeout` zero disables stalls.
pub fn assess(
    progress: &QueryProgress,
    now: SystemTime,
    watching_since: SystemTime,
    stall_timeout: Duration,
) -> Activity {
    let Some(batch) = progress.inflight_batch else {
        return Activity::Idle;
    };
    let since = match progress.planned_at {
        Some(p) => p.max(watching_since),
        None => watching_since,
    };
    let age = seconds_between(now, since);
    if !stall_timeout.is_zero() && age > stall_timeout {
        Activity::Stalled { batch, age }
    } else {
        Activity::Running { batch, age }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::fixture::*;
    use super::super::layout::{QueryDir, scan_query};
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000)
    }

    fn scan(dir: &Path, depth: Depth) -> QueryScan {
        scan_query(
            &QueryDir {
                name: "q".into(),
                path: dir.to_path_buf(),
            },
            depth,
        )
    }

    #[test]
    fn healthy_idle_query() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(4), Some(4), t0());
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        assert_eq!(p.id.as_deref(), Some(ID));
        assert_eq!(p.latest_offsets_batch, Some(4));
        assert_eq!(p.latest_committed_batch, Some(4));
        assert_eq!(p.inflight_batch, None);
        assert_eq!(p.planned_at, Some(t0() + Duration::from_secs(40)));
        assert!(p.last_commit.is_some(), "commit time is the file's mtime");
        // Idle for a year is still healthy.
        let later = t0() + Duration::from_secs(365 * 86400);
        assert_eq!(
            assess(&p, later, t0(), Duration::from_secs(60)),
            Activity::Idle
        );
        assert_eq!(p.inflight_age(later), None);
    }

    #[test]
    fn inflight_batch_and_stall() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(5), Some(4), t0());
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        assert_eq!(p.inflight_batch, Some(5));
        let planned = t0() + Duration::from_secs(50);
        assert_eq!(p.planned_at, Some(planned));
        let timeout = Duration::from_secs(60);

        let now = planned + Duration::from_secs(30);
        assert_eq!(
            assess(&p, now, t0(), timeout),
            Activity::Running {
                batch: 5,
                age: Duration::from_secs(30)
            }
        );
        let now = planned + Duration::from_secs(61);
        assert!(assess(&p, now, t0(), timeout).is_stalled());
        assert_eq!(p.inflight_age(now), Some(Duration::from_secs(61)));
        // Exactly at the timeout is not yet a stall.
        let now = planned + timeout;
        assert!(!assess(&p, now, t0(), timeout).is_stalled());
        // "0s" disables stalls.
        let now = planned + Duration::from_secs(86400);
        assert_eq!(
            assess(&p, now, t0(), Duration::ZERO),
            Activity::Running {
                batch: 5,
                age: Duration::from_secs(86400)
            }
        );
    }

    #[test]
    fn restart_resets_the_stall_clock() {
        // Spark re-runs the uncommitted batch with the same offsets/N, so the
        // age counts from the restart, not from the original planning.
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(5), Some(4), t0());
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        let restarted = t0() + Duration::from_secs(3600);
        let timeout = Duration::from_secs(600);
        let now = restarted + Duration::from_secs(10);
        assert_eq!(
            assess(&p, now, restarted, timeout),
            Activity::Running {
                batch: 5,
                age: Duration::from_secs(10)
            }
        );
        assert!(assess(&p, restarted + Duration::from_secs(601), restarted, timeout).is_stalled());
        // What a user sees in inspect is still the age since planning.
        assert_eq!(p.inflight_age(now), Some(Duration::from_secs(3560)));
    }

    #[test]
    fn clock_behind_the_file_is_not_negative() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(1), Some(0), t0());
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        assert_eq!(
            assess(&p, t0(), t0(), Duration::from_secs(1)),
            Activity::Running {
                batch: 1,
                age: Duration::ZERO
            }
        );
    }

    #[test]
    fn first_batch_in_flight_and_planned_time_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(0), None, t0());
        // No batchTimestampMs: the file's mtime stands in.
        put(&tmp.path().join("offsets/0"), b"v1\n{}\n{\"logOffset\":0}");
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        assert_eq!(p.inflight_batch, Some(0));
        assert_eq!(p.latest_committed_batch, None);
        let mtime = std::fs::metadata(tmp.path().join("offsets/0"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(p.planned_at, Some(mtime));
    }

    #[test]
    fn torn_tail_is_not_progress() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(3), Some(3), t0());
        put(&tmp.path().join("offsets/4"), b"");
        put(&tmp.path().join("commits/4"), b"");
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        assert_eq!(p.latest_offsets_batch, Some(3));
        assert_eq!(p.latest_committed_batch, Some(3));
        assert_eq!(p.inflight_batch, None);
    }

    #[test]
    fn refresh_reads_every_query_and_tolerates_a_missing_root() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(refresh(&tmp.path().join("not-yet")).unwrap().is_empty());
        query(&tmp.path().join("a"), Some(2), Some(2), t0());
        query(&tmp.path().join("b"), Some(7), Some(6), t0());
        let all = refresh(tmp.path()).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|p| (p.name.as_str(), p.latest_committed_batch, p.inflight_batch))
            .collect();
        assert_eq!(got, [("a", Some(2), None), ("b", Some(6), Some(7))]);
    }

    #[test]
    fn json_fields() {
        let tmp = tempfile::tempdir().unwrap();
        query(tmp.path(), Some(5), Some(4), t0());
        let p = summarize(&scan(tmp.path(), Depth::Latest));
        let now = t0() + Duration::from_millis(52_500);
        let j = p.to_json(now);
        assert_eq!(j["id"], ID);
        assert_eq!(j["latest_offsets_batch"], 5);
        assert_eq!(j["latest_committed_batch"], 4);
        assert_eq!(j["inflight_batch"], 5);
        assert_eq!(j["inflight_age_seconds"], 2.5);
        assert!(j["last_commit_unix"].as_f64().unwrap() > 1.7e9);
    }
}
