//! Checkpoint awareness against real Spark (plain spark-submit of the apps in
//! `examples/`, not under sparkvisor): `checkpoint inspect` and progress on a
//! live checkpoint, the torn-tail proof (Spark fails on an empty trailing
//! commit, repair makes it resume), the stall app seen as stalled, and the
//! exactly-once app on a clean run. Each test holds the machine-wide Spark
//! lock, so Spark runs one at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;
use sparkvisor::checkpoint::{self, Activity};

/// Generous: a streaming job reaches its first commit ~10-13 s after
/// spark-submit on an idle machine, and this one is shared.
const SPARK_START: Duration = Duration::from_secs(300);

/// Newest `commits/N` that is non-empty (checked without the parser under test).
fn newest_commit(query: &Path) -> Option<u64> {
    std::fs::read_dir(query.join("commits"))
        .ok()?
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
}

fn inspect_json(root: &Path) -> Value {
    let out = sparkvisor(
        &[
            "checkpoint",
            "inspect",
            root.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("inspect prints JSON")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn live_inspect_then_a_torn_commit_fails_spark_until_repaired() {
    let _spark = spark_lock();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("checkpoint");
    let query = root.join("rate");
    let output = tmp.path().join("output");
    let env = [
        ("SPARKVISOR_CHECKPOINT_DIR", root.to_str().unwrap()),
        ("OUTPUT_DIR", output.to_str().unwrap()),
        ("ROWS_PER_SECOND", "5"),
        ("TRIGGER_SECONDS", "1"),
    ];

    // 1. A live query: inspect and the cheap refresh see its progress.
    let started = unix_now();
    let mut app = SparkSubmit::start("rate_stream.py", &env, &tmp.path().join("run1.log"));
    app.wait_while_running("two committed batches", SPARK_START, || {
        newest_commit(&query).filter(|n| *n >= 1)
    });
    let j = inspect_json(&root);
    let qs = j["queries"].as_array().unwrap();
    assert_eq!(qs.len(), 1, "{j}");
    let q = &qs[0];
    assert_eq!(q["path"], query.to_str().unwrap());
    let metadata = std::fs::read_to_string(query.join("metadata")).unwrap();
    let id = q["id"].as_str().expect("query id");
    assert!(
        id.len() == 36 && metadata.contains(id),
        "{id} vs {metadata}"
    );
    let committed = q["latest_committed_batch"].as_u64().unwrap();
    assert!(committed >= 1, "{j}");
    assert!(
        q["latest_offsets_batch"].as_u64().unwrap() >= committed,
        "{j}"
    );
    let last_commit = q["last_commit_unix"].as_f64().unwrap();
    assert!(
        last_commit >= started - 1.0 && last_commit <= unix_now() + 1.0,
        "{j}"
    );
    assert!(
        q["torn_files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["kind"] != "torn"),
        "{j}"
    );
    let out = sparkvisor(&["checkpoint", "inspect", root.to_str().unwrap()], &[]);
    assert!(stdout(&out).contains("query rate ("), "{}", stdout(&out));

    let first = checkpoint::refresh(&root).unwrap()[0]
        .latest_committed_batch
        .unwrap();
    app.wait_while_running("refresh to see a later commit", SPARK_START, || {
        let p = checkpoint::refresh(&root).unwrap();
        (p[0].latest_committed_batch > Some(first)).then_some(())
    });

    // 2. Crash, then tear the newest commit as a power loss would.
    app.kill();
    let n = newest_commit(&query).unwrap();
    std::fs::write(query.join(format!("commits/{n}")), b"").unwrap();
    let j = inspect_json(&root);
    let q = &j["queries"][0];
    assert_eq!(q["latest_committed_batch"], n - 1, "{j}");
    let torn: Vec<&Value> = q["torn_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "torn")
        .collect();
    assert_eq!(torn.len(), 1, "{j}");
    assert_eq!(
        torn[0]["path"],
        query.join(format!("commits/{n}")).to_str().unwrap()
    );
    assert_eq!(torn[0]["repair"], "quarantine");

    // 3. Spark alone cannot start on it.
    let mut app = SparkSubmit::start("rate_stream.py", &env, &tmp.path().join("run2.log"));
    let status = app.wait(SPARK_START);
    let log = std::fs::read_to_string(&app.log).unwrap();
    assert!(!status.success(), "Spark started on a torn commit log");
    assert!(
        log.contains("Incomplete log file in the offset commit log"),
        "{}",
        app.log_tail(40)
    );
    drop(app);

    // 4. Repair quarantines the torn commit (and its checksum, when Spark
    // got to write one before it was stopped); nothing else moves.
    let offsets_before = std::fs::read_dir(query.join("offsets")).unwrap().count();
    let crc = query.join(format!("commits/.{n}.crc"));
    let had_crc = crc.exists();
    let report = checkpoint::repair(&root, None, SystemTime::now()).unwrap();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let moved = &report.quarantined[0].files;
    assert_eq!(moved.len(), 1 + usize::from(had_crc), "{moved:?}");
    assert_eq!(moved[0].from, query.join(format!("commits/{n}")));
    if had_crc {
        assert_eq!(moved[1].from, crc);
        assert!(!crc.exists());
    }
    let session = report.quarantine.clone().unwrap();
    assert!(session.starts_with(tmp.path().join("checkpoint.quarantine")));
    assert_eq!(moved[0].to, session.join(format!("rate/commits/{n}")));
    assert_eq!(std::fs::metadata(&moved[0].to).unwrap().len(), 0);
    assert!(!query.join(format!("commits/{n}")).exists());
    assert_eq!(
        std::fs::read_dir(query.join("offsets")).unwrap().count(),
        offsets_before
    );

    // 5. Spark resumes: re-runs batch n and commits further batches.
    let mut app = SparkSubmit::start("rate_stream.py", &env, &tmp.path().join("run3.log"));
    app.wait_while_running("a commit after the repaired batch", SPARK_START, || {
        newest_commit(&query).filter(|c| *c > n)
    });
    let recommitted = std::fs::read_to_string(query.join(format!("commits/{n}"))).unwrap();
    assert!(recommitted.starts_with("v1\n"), "{recommitted:?}");
    app.kill();
}

#[test]
fn stall_app_hangs_once_is_judged_stalled_then_progresses_after_restart() {
    let _spark = spark_lock();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("checkpoint");
    let query = root.join("stall");
    let marker = tmp.path().join("stall.marker");
    let env = [
        ("SPARKVISOR_CHECKPOINT_DIR", root.to_str().unwrap()),
        ("STALL_MARKER", marker.to_str().unwrap()),
        ("STALL_AT_VALUE", "10"),
        ("ROWS_PER_SECOND", "5"),
        ("TRIGGER_SECONDS", "1"),
    ];

    let attempt = SystemTime::now();
    let mut app = SparkSubmit::start("stall_stream.py", &env, &tmp.path().join("run1.log"));
    app.wait_while_running("the UDF to hang", SPARK_START, || {
        marker.exists().then_some(())
    });
    // With a 2 s stall timeout, the hung batch is eventually judged stalled
    // (a batch that commits would stop being in flight instead).
    let timeout = Duration::from_secs(2);
    let stuck = app.wait_while_running("a stall verdict", SPARK_START, || {
        let p = checkpoint::refresh(&root).unwrap();
        match checkpoint::assess(p.first()?, SystemTime::now(), attempt, timeout) {
            Activity::Stalled { batch, age } => {
                assert!(age > timeout);
                Some(batch)
            }
            _ => None,
        }
    });
    assert!(
        !query.join(format!("commits/{stuck}")).exists(),
        "the stalled batch is not committed"
    );
    let j = inspect_json(&root);
    assert_eq!(j["queries"][0]["inflight_batch"], stuck, "{j}");
    assert!(j["queries"][0]["inflight_age_seconds"].as_f64().unwrap() > 2.0);
    app.kill();

    // After a restart the same batch runs again and commits; the stream goes on.
    let mut app = SparkSubmit::start("stall_stream.py", &env, &tmp.path().join("run2.log"));
    app.wait_while_running(
        "the stalled batch and the next to commit",
        SPARK_START,
        || newest_commit(&query).filter(|c| *c > stuck),
    );
    app.kill();
}

/// Reads the generator's input: id -> files it appears in, and the line count.
fn input_ids(input: &Path) -> (BTreeMap<u64, BTreeSet<u64>>, usize) {
    let mut ids: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut lines = 0;
    for e in std::fs::read_dir(input).unwrap().flatten() {
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            ids.entry(v["id"].as_u64().unwrap())
                .or_default()
                .insert(v["file"].as_u64().unwrap());
            lines += 1;
        }
    }
    (ids, lines)
}

#[test]
fn exactly_once_app_writes_every_id_once_on_a_clean_run() {
    let _spark = spark_lock();
    let tmp = tempfile::tempdir().unwrap();
    let input: PathBuf = tmp.path().join("input");
    let output = tmp.path().join("output");
    let root = tmp.path().join("checkpoint");

    let gen_out = Command::new(python())
        .arg(repo().join("examples/exactly_once_gen.py"))
        .args([
            "--input",
            input.to_str().unwrap(),
            "--ids",
            "300",
            "--files",
            "6",
        ])
        .output()
        .unwrap();
    assert!(gen_out.status.success(), "{}", stderr(&gen_out));
    let (ids, lines) = input_ids(&input);
    assert_eq!(ids.len(), 300);
    assert_eq!(lines, 600);
    assert!(
        ids.values().all(|files| files.len() == 2),
        "every id is in two different files"
    );

    let env = [
        ("SPARKVISOR_CHECKPOINT_DIR", root.to_str().unwrap()),
        ("INPUT_DIR", input.to_str().unwrap()),
        ("OUTPUT_DIR", output.to_str().unwrap()),
        ("FILES_PER_TRIGGER", "2"),
        ("AVAILABLE_NOW", "1"),
    ];
    let mut app = SparkSubmit::start("exactly_once_stream.py", &env, &tmp.path().join("run.log"));
    let status = app.wait(Duration::from_secs(900));
    assert!(status.success(), "{}", app.log_tail(40));

    // Three batches of two files, all committed, nothing torn or in flight.
    let report = checkpoint::inspect(&root).unwrap();
    assert_eq!(report.queries.len(), 1);
    let q = &report.queries[0];
    assert_eq!(q.progress.name, "dedup");
    assert_eq!(q.progress.latest_committed_batch, Some(2));
    assert_eq!(q.progress.latest_offsets_batch, Some(2));
    assert_eq!(q.progress.inflight_batch, None);
    assert!(q.torn_files.is_empty(), "{:?}", q.torn_files);
    assert!(
        root.join("dedup/state/0").is_dir(),
        "dropDuplicates keeps state"
    );

    // One verifier JVM checks two inputs against the sink: the real one,
    // and one with an id the sink does not have, which it must notice.
    let lost = tmp.path().join("input-with-a-lost-id");
    copy_tree(&input, &lost);
    std::fs::write(
        lost.join("part-99999.json"),
        "{\"id\": 100000, \"file\": 99999}\n",
    )
    .unwrap();
    let mut verify = SparkSubmit::start_with_args(
        "exactly_once_verify.py",
        &[
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            lost.to_str().unwrap(),
            output.to_str().unwrap(),
        ],
        &[],
        &tmp.path().join("verify.log"),
    );
    let status = verify.wait(Duration::from_secs(600));
    let log = std::fs::read_to_string(&verify.log).unwrap();
    let verdicts: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with("{\"expected\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        verdicts.len(),
        2,
        "one verdict per pair:\n{}",
        verify.log_tail(40)
    );
    let verdict = &verdicts[0];
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["expected"], 300, "{verdict}");
    assert_eq!(verdict["rows"], 300, "{verdict}");
    assert_eq!(verdict["distinct"], 300, "{verdict}");
    let verdict = &verdicts[1];
    assert_eq!(status.code(), Some(1), "{verdict}");
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["missing"], serde_json::json!([100000]), "{verdict}");
}
