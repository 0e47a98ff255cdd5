//! The checkpoint under `sparkvisor run` with real Spark: exactly-once
//! output across repeated SIGKILLs, repair of a torn tail (and Spark's
//! failure without it), and a stalled batch restarted after
//! `checkpoint.stall_timeout` (class `stalled`), with progress in /status
//! and /metrics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SLOW: Duration = Duration::from_secs(300);

#[test]
fn exactly_once_across_four_sigkills() {
    let _spark = spark_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("input");
    let output = d.join("output");
    let generated = Command::new(python())
        .arg(repo().join("examples/exactly_once_gen.py"))
        .args(["--input"])
        .arg(&input)
        .args(["--ids", "1000", "--files", "20"])
        .status()
        .unwrap();
    assert!(generated.success());
    let port = free_port();
    let cfg = streaming_config(
        d,
        "exactly_once_stream.py",
        &[
            ("INPUT_DIR", input.display().to_string()),
            ("OUTPUT_DIR", output.display().to_string()),
            ("FILES_PER_TRIGGER", "2".into()),
            ("AVAILABLE_NOW", "1".into()),
            ("VERIFY", "1".into()),
        ],
        "restart = \"on-failure\"",
        "",
        port,
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    let sv_pid = sv.pid();
    let query = d.join("checkpoint/dedup");
    let mut rng = fastrand::Rng::with_seed(u64::from(std::process::id()));
    let mut kills = 0;
    let mut moments = Vec::new();
    while kills < 4 {
        let commits_before = numbered(&query.join("commits")).len();
        let offsets_before = numbered(&query.join("offsets")).len();
        // Kill right after a new commit, or in the middle of a batch (right
        // after a new offsets entry is planned): chosen at random each time.
        let mid_batch = rng.bool();
        let moment = wait_for("the next kill moment", SLOW, || {
            if sv.child.try_wait().ok().flatten().is_some() {
                return Some(None); // finished before four kills: more input needed
            }
            let commits = numbered(&query.join("commits")).len();
            let offsets = numbered(&query.join("offsets")).len();
            let ready = if mid_batch {
                offsets > offsets_before && offsets > commits
            } else {
                commits > commits_before
            };
            ready.then(|| driver_jvm(sv_pid)).flatten().map(Some)
        });
        let Some(jvm) = moment else {
            panic!(
                "the input was consumed after only {kills} kills; {}",
                sv.log_text()
            );
        };
        send(jvm, Signal::SIGKILL);
        kills += 1;
        moments.push(if mid_batch {
            "mid-batch"
        } else {
            "after a commit"
        });
        sv.wait_status("the next attempt", SLOW, |s| {
            s["attempt"].as_u64() == Some(kills + 1)
        });
    }
    eprintln!("killed the JVM {kills} times: {moments:?}");
    // The app consumes the rest, checks its sink in the same JVM (VERIFY)
    // and exits 0 (AVAILABLE_NOW); so does sparkvisor.
    assert_eq!(
        sv.wait_exit(Duration::from_secs(900)),
        0,
        "{}",
        sv.log_text()
    );
    assert_eq!(sv.log_text().matches("class=\"signaled\"").count(), 4);

    let v = verdict_in(&sv.log_text());
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["expected"], 1000);
    assert_eq!(v["rows"], 1000, "every id exactly once: {v}");
}

/// Runs the rate stream until `commits` batches are committed, then stops it
/// gracefully; returns the newest committed batch.
fn run_until_commits(dir: &Path, commits: usize) -> u64 {
    let port = free_port();
    let cfg = streaming_config(
        dir,
        "rate_stream.py",
        &[("TRIGGER_SECONDS", "1".into())],
        "",
        "",
        port,
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    let query = dir.join("checkpoint/rate");
    wait_for("committed batches", SLOW, || {
        (numbered(&query.join("commits")).len() >= commits).then_some(())
    });
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(90)),
        0,
        "{}",
        sv.log_text()
    );
    *numbered(&query.join("commits")).last().unwrap()
}

#[test]
fn torn_commit_is_quarantined_and_spark_resumes_only_with_repair() {
    let _spark = spark_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let last = run_until_commits(d, 3);
    let torn = d.join(format!("checkpoint/rate/commits/{last}"));
    std::fs::write(&torn, b"").unwrap();

    // Without repair Spark refuses the checkpoint.
    let port = free_port();
    let cfg = streaming_config(
        d,
        "rate_stream.py",
        &[("TRIGGER_SECONDS", "1".into())],
        "restart = \"never\"",
        "repair = false",
        port,
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    let code = sv.wait_exit(SLOW);
    let log = sv.log_text();
    assert_ne!(code, 0, "Spark must fail on the torn commit: {log}");
    assert!(log.contains("Incomplete log file"), "{log}");
    assert!(log.contains("checkpoint.repair is off"), "{log}");
    assert_eq!(
        std::fs::metadata(&torn).unwrap().len(),
        0,
        "repair off touches nothing"
    );
    drop(sv);
    // Besides the torn commit, the stops may have left temp files of
    // interrupted writes; `inspect` lists everything a repair will do.
    let root = d.join("checkpoint");
    let out = sparkvisor(
        &[
            "checkpoint",
            "inspect",
            "--format",
            "json",
            root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned: Vec<&serde_json::Value> = inspected["queries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["torn_files"].as_array().unwrap())
        .filter(|t| !t["repair"].is_null())
        .collect();
    assert!(
        planned
            .iter()
            .any(|t| t["repair"] == "quarantine" && t["path"] == torn.to_str().unwrap()),
        "{inspected}"
    );

    // With repair: quarantined, counted, and Spark goes on past it.
    let port = free_port();
    let cfg = streaming_config(
        d,
        "rate_stream.py",
        &[("TRIGGER_SECONDS", "1".into())],
        "",
        "",
        port,
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    wait_for("batches beyond the torn one", SLOW, || {
        let c = numbered(&d.join("checkpoint/rate/commits"));
        (*c.last()? > last).then_some(())
    });
    assert_eq!(
        metric(port, "sparkvisor_checkpoint_repairs_total"),
        Some(planned.len() as f64),
        "one repair per planned action: {inspected}"
    );
    let log = sv.log_text();
    assert!(log.contains("quarantined a torn checkpoint file"), "{log}");
    let quarantine = d.join("checkpoint.quarantine");
    let moved: Vec<PathBuf> = walk(&quarantine);
    assert!(
        moved
            .iter()
            .any(|p| p.ends_with(format!("rate/commits/{last}"))),
        "the torn file is kept in the quarantine: {moved:?}"
    );
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(90)), 0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_stalled_batch_is_restarted_and_the_stream_progresses() {
    let _spark = spark_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let cfg = streaming_config(
        d,
        "stall_stream.py",
        &[
            ("STALL_AT_VALUE", "10".into()),
            ("TRIGGER_SECONDS", "1".into()),
        ],
        "restart = \"on-failure\"",
        "stall_timeout = \"20s\"",
        port,
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    let st = sv.wait_status(
        "the stall to be detected and the app restarted",
        SLOW,
        |s| s["last_exit"]["class"] == "stalled" && s["attempt"] == 2,
    );
    assert_eq!(st["last_exit"]["attempt"], 1);
    let stalled_batch = {
        let log = sv.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("stall:"))
            .expect("a stall line in the log")
            .to_string();
        assert!(line.contains("query=stall"), "{line}");
        line.split("batch=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // The JVM printed a thread dump before it was killed.
    let log = sv.log_text();
    assert!(
        log.contains("Full thread dump"),
        "SIGQUIT should produce a thread dump:\n{log}"
    );
    // The re-run batch commits and the stream goes on.
    let query = d.join("checkpoint/stall");
    wait_for("the stalled batch and more to commit", SLOW, || {
        let c = numbered(&query.join("commits"));
        (*c.last()? > stalled_batch).then_some(())
    });
    assert_eq!(
        metric(port, "sparkvisor_child_exits_total{class=\"stalled\"}"),
        Some(1.0)
    );
    // Metrics and /status follow the checkpoint on its own poll interval:
    // wait for them to catch up with what is on disk.
    wait_for(
        "the committed-batch metric to pass the stalled batch",
        SLOW,
        || {
            let b = metric(
                port,
                "sparkvisor_checkpoint_last_committed_batch{query=\"stall\"}",
            )?;
            (b >= stalled_batch as f64).then_some(())
        },
    );
    let st = wait_for("/status to show the stalled batch committed", SLOW, || {
        let st = sv.status()?;
        let b = st["checkpoint"]["queries"][0]["latest_committed_batch"].as_u64()?;
        (b >= stalled_batch).then_some(st)
    });
    assert_eq!(st["state"], "running");
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(90)), 0);
}
