//! Real Spark under `sparkvisor run` as PID 1 of a PID namespace: the
//! example streaming app is killed with SIGKILL twice; sparkvisor restarts
//! it, the query resumes from its checkpoint, the probes, metrics and
//! status tell the truth at each step, and TERM stops everything cleanly.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const SPARK_START: Duration = Duration::from_secs(240);

/// Committed batch ids of the query at `dir`.
fn commits(query: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(query.join("commits"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn code(port: u16, path: &str) -> u16 {
    get(port, path).map(|(c, _)| c).unwrap_or(0)
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ui = free_port();
        let text = format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
name = "spark-run-test"
[spark.conf]
"spark.sql.shuffle.partitions" = 2
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{python}"
OUTPUT_DIR = "{dir}/output"
TRIGGER_SECONDS = "1"
[supervisor]
restart = "always"
backoff_initial = "1s"
stop_grace = "30s"
runtime_dir = "{dir}/run"
exit_linger = "0s"
[checkpoint]
dir = "{dir}/checkpoint"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "500ms"
"#,
            home = spark_home().display(),
            app = repo().join("examples/rate_stream.py").display(),
            python = python().display(),
            dir = dir.path().display(),
        );
        let config = write(dir.path(), "sparkvisor.toml", &text);
        Setup { dir, port, config }
    }

    fn query(&self) -> PathBuf {
        self.dir.path().join("checkpoint/rate")
    }
}

#[test]
fn spark_is_restarted_after_sigkill_and_resumes_from_its_checkpoint() {
    let _spark = spark_lock();
    let s = Setup::new();
    let mut sv = Running::start(&s.config, s.port, true, &[]);
    let host_pid = sv.pid();

    // Readiness is false until Spark's REST API answers.
    wait_for("sparkvisor's HTTP server", Duration::from_secs(30), || {
        sv.status()
    });
    assert_eq!(
        code(s.port, "/ready"),
        503,
        "not ready before Spark answers"
    );
    assert_eq!(code(s.port, "/health"), 200);
    wait_for("/ready 200", SPARK_START, || {
        (code(s.port, "/ready") == 200).then_some(())
    });

    let mut last_max = None;
    for kill in 1..=2u32 {
        // Let the query commit a couple of batches beyond what it had.
        let target = last_max.map_or(1, |m: u64| m + 2);
        let before = wait_for("batches to commit", SPARK_START, || {
            let c = commits(&s.query());
            (c.last().copied()? >= target).then_some(c)
        });
        let max_before = *before.last().unwrap();
        if let Some(prev) = last_max {
            assert!(max_before > prev, "batch ids keep increasing");
        }
        let first_commit = std::fs::metadata(s.query().join("commits/0"))
            .unwrap()
            .modified()
            .unwrap();

        let jvm = wait_for("the JVM", Duration::from_secs(30), || driver_jvm(host_pid));
        send(jvm, Signal::SIGKILL);
        // The restart is visible: not ready, still alive, counted.
        wait_for("/ready 503 after the kill", Duration::from_secs(30), || {
            (code(s.port, "/ready") == 503).then_some(())
        });
        let st = sv.wait_status("the next attempt", Duration::from_secs(60), |st| {
            assert_eq!(
                code(s.port, "/health"),
                200,
                "liveness holds during the restart"
            );
            st["attempt"] == kill + 1
        });
        assert_eq!(st["last_exit"]["class"], "signaled");
        assert_eq!(st["last_exit"]["signal"], 9);
        wait_for("/ready 200 after the restart", SPARK_START, || {
            (code(s.port, "/ready") == 200).then_some(())
        });

        // The query resumed: new batches after the old ones, history intact.
        let after = wait_for("a batch after the restart", SPARK_START, || {
            let c = commits(&s.query());
            (c.last().copied()? > max_before).then_some(c)
        });
        assert!(before.is_subset(&after), "committed batches are never lost");
        let max = *after.last().unwrap();
        assert_eq!(
            after,
            (0..=max).collect::<BTreeSet<_>>(),
            "no gap, no restart from 0"
        );
        let still_first = std::fs::metadata(s.query().join("commits/0"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(first_commit, still_first, "batch 0 was not redone");
        last_max = Some(max);
    }

    assert_eq!(
        metric(s.port, "sparkvisor_child_starts_total").expect("metric in /metrics"),
        3.0
    );
    assert_eq!(
        metric(s.port, "sparkvisor_child_exits_total{class=\"signaled\"}")
            .expect("metric in /metrics"),
        2.0
    );
    assert_eq!(
        metric(s.port, "sparkvisor_child_up").expect("metric in /metrics"),
        1.0
    );
    // Readiness follows Spark's REST API on its own poll interval.
    wait_for("sparkvisor_ready 1", SPARK_START, || {
        (metric(s.port, "sparkvisor_ready")? == 1.0).then_some(())
    });
    let st = sv.status().unwrap();
    assert_eq!(st["state"], "running");
    assert_eq!(st["attempt"], 3);
    // Each killed attempt had committed batches: not a crash loop, so
    // neither restart counts toward max_restarts (and none waited).
    assert_eq!(st["restarts_in_window"], 0, "{st}");
    // The second recovery ended at attempt 3's first commit.
    let r = &st["last_recovery"];
    assert_eq!(r["attempt"], 3, "{st}");
    assert_eq!(r["class"], "signaled", "{st}");
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["phase"].as_str())
        .collect();
    // (Spark's API up is a phase when the poller saw it before the commit.)
    assert_eq!(phases[..3], ["failed", "cleaned_up", "submitted"], "{st}");
    assert_eq!(phases.last(), Some(&"first_commit"), "{st}");
    assert_eq!(
        metric(s.port, "sparkvisor_recovery_duration_seconds_count"),
        Some(2.0)
    );

    // Graceful stop: exit 0 well within stop_grace, nothing left behind.
    let t0 = Instant::now();
    send(host_pid, Signal::SIGTERM);
    let exit = sv.wait_exit(Duration::from_secs(30 + 30));
    eprintln!(
        "TERM → sparkvisor exit with Spark running: {:?}",
        t0.elapsed()
    );
    assert_eq!(exit, 0, "{}", sv.log_text());
    assert!(
        descendants(sv.child.id() as i32).is_empty(),
        "no process left behind"
    );
    let log = sv.log_text();
    assert!(log.contains("class=\"stopped\""), "{log}");
}
