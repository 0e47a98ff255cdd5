//! Progress-aware restarts and the recovery measurement, with a script as
//! spark-submit that writes the checkpoint itself (it decides whether an
//! attempt commits a batch): attempts that committed are restarted at once
//! and do not use up the crash-loop budget; attempts that die without
//! committing back off and do; `backoff_after_progress = true` keeps the
//! plain backoff; each recovery ends at the next commit and is published
//! (`sparkvisor_recovery_seconds`, its histogram, `/status` `last_recovery`
//! with its phases, one log line).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Each attempt counts itself in `$CASE_DIR/attempts`; with
/// `$CASE_DIR/commit` present it plans and commits batch `attempt − 1`;
/// from attempt `$STAY_FROM` on it keeps running, before that it exits 1.
const APP: &str = r#"#!/bin/sh
n=$(cat "$CASE_DIR/attempts" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$CASE_DIR/attempts"
q="$CASE_DIR/checkpoint/q"
if [ -e "$CASE_DIR/commit" ]; then
  b=$((n - 1))
  mkdir -p "$q/offsets" "$q/commits"
  printf 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":1795219000000,"conf":{}}\n{"logOffset":0}\n' > "$q/offsets/.$b.tmp"
  mv "$q/offsets/.$b.tmp" "$q/offsets/$b"
  printf 'v1\n{"nextBatchWatermarkMs":0}\n' > "$q/commits/.$b.tmp"
  mv "$q/commits/.$b.tmp" "$q/commits/$b"
fi
if [ "$n" -ge "$STAY_FROM" ]; then
  trap 'exit 0' TERM
  while :; do sleep 0.05; done
fi
sleep 0.3
exit 1
"#;

struct Case {
    dir: tempfile::TempDir,
    port: u16,
}

impl Case {
    fn new(commit: bool) -> Case {
        let c = Case {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        if commit {
            write(c.dir.path(), "commit", "");
        }
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn attempts(&self) -> u32 {
        std::fs::read_to_string(self.path("attempts"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `supervisor`: more keys of `[supervisor]`.
    fn start(&self, stay_from: u32, backoff_initial: &str, supervisor: &str) -> Running {
        let home = script_spark_home(self.dir.path(), APP);
        let app = write(self.dir.path(), "app.py", "# unused\n");
        let cfg = write(
            self.dir.path(),
            "sparkvisor.toml",
            &format!(
                r#"
[spark]
home = "{home}"
app = "{app}"
[spark.env]
CASE_DIR = "{dir}"
STAY_FROM = "{stay_from}"
[supervisor]
runtime_dir = "{dir}/run"
exit_linger = "0s"
backoff_initial = "{backoff_initial}"
backoff_max = "60s"
max_restarts = 1
{supervisor}
[checkpoint]
dir = "{dir}/checkpoint"
repair = false
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
[jvm]
cds = "off"
"#,
                home = home.display(),
                app = app.display(),
                dir = self.dir.path().display(),
                port = self.port,
                ui = free_port(),
            ),
        );
        Running::start(&cfg, self.port, false, &[])
    }
}

#[test]
fn attempts_that_committed_restart_at_once_outside_the_budget_and_their_recovery_is_measured() {
    let c = Case::new(true);
    // Three attempts commit and fail; the fourth commits and stays. With a
    // 30 s initial backoff and a budget of one restart, the old rule would
    // wait 30 s and then give up at the second failure.
    let mut sv = c.start(4, "30s", "");
    let st = sv.wait_status(
        "the fourth attempt's recovery",
        Duration::from_secs(30),
        |st| st["last_recovery"]["attempt"] == 4,
    );
    assert_eq!(c.attempts(), 4);
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(
        st["restarts_in_window"], 0,
        "progress is not a crash loop: {st}"
    );
    let r = &st["last_recovery"];
    assert_eq!(r["class"], "failed", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["phase"].as_str().unwrap())
        .collect();
    // No Spark here, so no REST API phase.
    assert_eq!(
        phases,
        ["failed", "cleaned_up", "submitted", "first_commit"],
        "{r}"
    );
    let at: Vec<f64> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["at_seconds"].as_f64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "phases in order: {r}");
    let seconds = r["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds == at[3], "{r}");
    // No backoff between a failure and the next start.
    assert!(at[2] < 30.0, "{r}");

    assert_eq!(
        metric(c.port, "sparkvisor_recovery_duration_seconds_count"),
        Some(3.0)
    );
    let last = metric(c.port, "sparkvisor_recovery_seconds").unwrap();
    assert!(
        last > 0.0 && (last - seconds).abs() < 1e-6,
        "{last} vs {seconds}"
    );
    let log = sv.log_text();
    assert_eq!(
        log.matches("restarting at once: the attempt had committed batches")
            .count(),
        3,
        "{log}"
    );
    assert_eq!(log.matches("recovered in ").count(), 3, "{log}");
    assert!(log.contains("first_commit +"), "{log}");

    send(sv.pid(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        sv.log_text()
    );
}

#[test]
fn attempts_that_die_without_committing_back_off_and_use_up_the_budget() {
    let c = Case::new(false);
    let mut sv = c.start(99, "200ms", "");
    // One restart allowed: the second failure without progress exhausts it.
    let code = sv.wait_exit(Duration::from_secs(30));
    let log = sv.log_text();
    assert_eq!(code, 1, "{log}");
    assert_eq!(c.attempts(), 2, "{log}");
    assert!(log.contains("restarting after backoff"), "{log}");
    assert!(log.contains("restart budget exhausted"), "{log}");
    assert!(
        !log.contains("recovered in "),
        "no commit, no recovery: {log}"
    );
}

#[test]
fn backoff_after_progress_keeps_the_plain_backoff() {
    let c = Case::new(true);
    let mut sv = c.start(99, "200ms", "backoff_after_progress = true");
    // Every attempt commits, but each failure counts: the second exhausts
    // the budget of one restart.
    let code = sv.wait_exit(Duration::from_secs(30));
    let log = sv.log_text();
    assert_eq!(code, 1, "{log}");
    assert_eq!(c.attempts(), 2, "{log}");
    assert!(log.contains("restarting after backoff"), "{log}");
    assert!(log.contains("restart budget exhausted"), "{log}");
    // The recovery after the first failure was still measured.
    assert_eq!(log.matches("recovered in ").count(), 1, "{log}");
}
