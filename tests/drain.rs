//! Graceful drain: on TERM, sparkvisor waits for the batch in flight to
//! commit before it signals the app.
//!
//! First the mechanism with a script as spark-submit and a checkpoint the
//! test writes itself (it decides when a batch commits): the app is not
//! signalled while its batch is in flight, is signalled right after the
//! commit, the timeout bounds the wait, "0s" turns the drain off, a second
//! TERM kills at once, nothing in flight means no wait. Then the real thing:
//! a PySpark job whose `foreachBatch` appends rows to a file with no
//! deduplication, stopped repeatedly right after a batch wrote its rows, the
//! last stop followed by the loss of the local checkpoint and a restore from
//! S3 (s3s-fs): every id ends up in the sink exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;

const OFFSETS: &str = "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1795219000000,\"conf\":{}}\n{\"logOffset\":0}\n";
const COMMIT: &str = "v1\n{\"nextBatchWatermarkMs\":0}\n";

/// The app: marks its start, and on TERM marks it, then takes a second to
/// exit (so the metrics can be read while it stops).
const APP: &str = r#"#!/bin/sh
trap 'touch "$CASE_DIR/got-term"; sleep 1; exit 0' TERM
touch "$CASE_DIR/started"
while :; do sleep 0.05; done
"#;

struct Case {
    dir: tempfile::TempDir,
    port: u16,
}

impl Case {
    /// A checkpoint with batch 0 committed and batch 1 planned (in flight).
    fn new() -> Case {
        let c = Case {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        let q = c.query();
        write(&q, "offsets/0", OFFSETS);
        write(&q, "commits/0", COMMIT);
        write(&q, "offsets/1", OFFSETS);
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn query(&self) -> PathBuf {
        self.path("checkpoint/q")
    }

    fn commit(&self, batch: u64) {
        write(&self.query(), &format!("commits/{batch}"), COMMIT);
    }

    fn start(&self, supervisor: &str) -> Running {
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
[supervisor]
runtime_dir = "{dir}/run"
exit_linger = "0s"
stop_grace = "30s"
{supervisor}
[checkpoint]
dir = "{dir}/checkpoint"
repair = false
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
"#,
                home = home.display(),
                app = app.display(),
                dir = self.dir.path().display(),
                port = self.port,
                ui = free_port(),
            ),
        );
        let sv = Running::start(&cfg, self.port, false, &[]);
        wait_for("the app to start", Duration::from_secs(20), || {
            self.path("started").exists().then_some(())
        });
        sv
    }

    fn signalled(&self) -> bool {
        self.path("got-term").exists()
    }
}

fn metric_value(port: u16, name: &str) -> Option<f64> {
    metric(port, name)
}

#[test]
fn the_app_is_signalled_only_after_the_batch_in_flight_commits() {
    let c = Case::new();
    let mut sv = c.start("");
    send(sv.pid(), Signal::SIGTERM);
    sv.wait_status("the drain", Duration::from_secs(10), |s| {
        s["state"] == "draining"
    });
    // Batch 1 is still in flight: the app has not been signalled.
    assert!(!c.signalled(), "signalled while the batch was in flight");
    let st = sv.status().expect("/status while draining");
    assert_eq!(st["state"], "draining", "{st}");
    assert!(!c.signalled(), "signalled while the batch was in flight");
    c.commit(1);
    wait_for(
        "the stop signal after the commit",
        Duration::from_secs(10),
        || c.signalled().then_some(()),
    );
    let drained = wait_for("sparkvisor_drain_seconds", Duration::from_secs(5), || {
        metric_value(c.port, "sparkvisor_drain_seconds").filter(|v| *v > 0.0)
    });
    assert!(drained > 0.0);
    assert_eq!(
        metric_value(c.port, "sparkvisor_drain_timeouts_total"),
        Some(0.0)
    );
    assert_eq!(
        sv.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        sv.log_text()
    );
    assert!(sv.log_text().contains("drained"), "{}", sv.log_text());
}

#[test]
fn the_drain_timeout_bounds_the_wait() {
    let c = Case::new();
    let mut sv = c.start("drain_timeout = \"1s\"");
    send(sv.pid(), Signal::SIGTERM);
    wait_for(
        "the stop signal after the timeout",
        Duration::from_secs(15),
        || c.signalled().then_some(()),
    );
    assert!(
        last_commit(&c.query()) == Some(0),
        "nothing committed batch 1"
    );
    let timeouts = wait_for("the timeout counted", Duration::from_secs(5), || {
        metric_value(c.port, "sparkvisor_drain_timeouts_total").filter(|v| *v >= 1.0)
    });
    assert_eq!(timeouts, 1.0);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
    assert!(
        sv.log_text().contains("drain timed out"),
        "{}",
        sv.log_text()
    );
}

#[test]
fn a_zero_drain_timeout_signals_at_once() {
    let c = Case::new();
    let mut sv = c.start("drain_timeout = \"0s\"");
    send(sv.pid(), Signal::SIGTERM);
    wait_for("the stop signal", Duration::from_secs(10), || {
        c.signalled().then_some(())
    });
    assert_eq!(last_commit(&c.query()), Some(0), "batch 1 never committed");
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
    assert!(!sv.log_text().contains("draining"), "{}", sv.log_text());
}

#[test]
fn nothing_in_flight_signals_at_once() {
    let c = Case::new();
    c.commit(1);
    let mut sv = c.start("");
    send(sv.pid(), Signal::SIGTERM);
    wait_for("the stop signal", Duration::from_secs(10), || {
        c.signalled().then_some(())
    });
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
    assert!(!sv.log_text().contains("draining"), "{}", sv.log_text());
}

#[test]
fn a_second_term_during_the_drain_kills_at_once() {
    let c = Case::new();
    let mut sv = c.start("");
    send(sv.pid(), Signal::SIGTERM);
    sv.wait_status("the drain", Duration::from_secs(10), |s| {
        s["state"] == "draining"
    });
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(10)),
        137,
        "{}",
        sv.log_text()
    );
    assert!(!c.signalled(), "killed, never signalled gracefully");
}

/// The ids the sink file holds, in order of writing.
fn sink_ids(sink: &Path) -> Vec<u64> {
    std::fs::read_to_string(sink)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

const FILES: u64 = 8;
const IDS_PER_FILE: u64 = 25;

#[test]
fn a_sink_that_is_not_idempotent_sees_every_row_once_across_stops_and_node_loss() {
    let _spark = spark_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = S3Server::start();
    let input = d.join("input");
    std::fs::create_dir_all(&input).unwrap();
    for f in 0..FILES {
        let lines: String = (0..IDS_PER_FILE)
            .map(|i| format!("{{\"id\":{},\"file\":{f}}}\n", f * IDS_PER_FILE + i))
            .collect();
        write(&input, &format!("part-{f:03}.json"), &lines);
    }
    let sink = d.join("sink.txt");
    let port = free_port();
    let s3 = format!(
        r#"[checkpoint.s3]
uri = "s3://{BUCKET}/drain"
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true
sync_interval = "2s"
"#,
        endpoint = server.endpoint(),
    );
    let cfg = streaming_config(
        d,
        "foreach_batch_stream.py",
        &[
            ("INPUT_DIR", input.display().to_string()),
            ("SINK_FILE", sink.display().to_string()),
            ("WORK_SECONDS", "2".into()),
            ("TRIGGER_SECONDS", "4".into()),
        ],
        "stop_grace = \"60s\"\ndrain_timeout = \"20s\"",
        &s3,
        port,
    );
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let query = d.join("checkpoint/sink");
    let stops = 3;
    let mut drain_ms = Vec::new();
    // sparkvisor's own lines of every run, for the failure messages.
    let mut history = String::new();
    let own_lines = |log: &str| -> String {
        log.lines()
            .filter(|l| l.starts_with("20"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for stop in 0..stops {
        let mut sv = Running::start(&cfg, port, false, &env);
        let rows_before = sink_ids(&sink).len();
        // Right after a batch wrote its rows, before it commits.
        let batch = wait_for(
            "a batch that wrote its rows and is not committed",
            Duration::from_secs(240),
            || {
                let planned = *numbered(&query.join("offsets")).last()?;
                let committed = last_commit(&query);
                let in_flight = committed.is_none_or(|c| planned > c);
                (in_flight && sink_ids(&sink).len() > rows_before).then_some(planned)
            },
        );
        send(sv.pid(), Signal::SIGTERM);
        assert_eq!(
            sv.wait_exit(Duration::from_secs(90)),
            0,
            "{}",
            sv.log_text()
        );
        let log = sv.log_text();
        history.push_str(&format!(
            "--- stop {stop} (batch {batch} in flight, sink had {rows_before} rows, {} at exit)\n{}",
            sink_ids(&sink).len(),
            own_lines(&log)
        ));
        assert!(
            last_commit(&query).is_some_and(|c| c >= batch),
            "batch {batch} committed before the app stopped\n{log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("drained"))
            .unwrap_or_else(|| panic!("a drain in the log\n{log}"));
        drain_ms.push(
            line.split("took_ms=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse::<u64>().ok())
                .expect("took_ms in the drain line"),
        );
        if stop == stops - 1 {
            // The final sync carried the drained batch: lose the node.
            std::fs::remove_dir_all(d.join("checkpoint")).unwrap();
        }
    }
    eprintln!("drain times (ms): {drain_ms:?}");
    // The pod on a new node: restore, then run to the end of the input.
    let mut sv = Running::start(&cfg, port, false, &env);
    wait_for("every row in the sink", Duration::from_secs(300), || {
        (last_commit(&query) == Some(FILES - 1)).then_some(())
    });
    let log = sv.log_text();
    assert!(
        log.contains("restored the checkpoint from S3"),
        "the last start restored from S3\n{log}"
    );
    // Idle: nothing in flight, so no drain.
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(90)),
        0,
        "{}",
        sv.log_text()
    );
    assert!(
        !sv.log_text().contains("draining:"),
        "an idle stream stops at once\n{}",
        sv.log_text()
    );
    history.push_str(&format!("--- last run\n{}", own_lines(&sv.log_text())));
    let mut ids = sink_ids(&sink);
    let written = ids.len();
    let mut files_twice: Vec<u64> = ids
        .iter()
        .enumerate()
        .filter(|(i, id)| ids[..*i].contains(id))
        .map(|(_, id)| id / IDS_PER_FILE)
        .collect();
    files_twice.dedup();
    // The sink in writing order, as input file numbers (run-length).
    let mut order: Vec<(u64, usize)> = Vec::new();
    for id in &ids {
        match order.last_mut() {
            Some((f, n)) if *f == id / IDS_PER_FILE => *n += 1,
            _ => order.push((id / IDS_PER_FILE, 1)),
        }
    }
    history.push_str(&format!(
        "--- sink (file, rows) in writing order: {order:?}\n"
    ));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        written,
        ids.len(),
        "duplicates in the sink: {} rows for {} ids; input files written twice: {files_twice:?}\n{history}",
        written,
        ids.len()
    );
    assert_eq!(
        ids,
        (0..FILES * IDS_PER_FILE).collect::<Vec<_>>(),
        "every id"
    );
}
