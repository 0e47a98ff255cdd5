//! Per-query telemetry and event-log shipping under `sparkvisor run`, with
//! real Spark: what sparkvisor exports must be what Spark itself reports
//! (`query.lastProgress`, recorded from inside the app by
//! examples/progress_log.py) for the same batch, and never more than one
//! batch late; a query slowed by its UDF turns `behind` (and `/ready` 503
//! with `probes.ready_requires_caught_up`) and back; and after two kill -9s
//! of the driver JVM the event logs shipped to a real S3 API (s3s-fs) open
//! in a real Spark History Server, each attempt's application with its jobs.
//!
//! One Spark start-up per attempt, shared between the assertions.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(240);

/// Adds the telemetry (and optionally event log) settings to a
/// [`streaming_config`] file: `probes` are more keys of its `[probes]`,
/// `extra` more tables; CDS off.
fn with_telemetry(cfg: &Path, probes: &str, extra: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    // CDS off, in the [jvm] table the configuration may already have.
    if text.contains("\n[jvm]\n") {
        text = text.replace("\n[jvm]\n", "\n[jvm]\ncds = \"off\"\n");
    } else {
        text.push_str("\n[jvm]\ncds = \"off\"\n");
    }
    // More keys of [probes], in its table.
    assert!(text.contains("\n[probes]\n"), "{text}");
    text = text.replace("\n[probes]\n", &format!("\n[probes]\n{probes}"));
    text.push_str("\n[telemetry]\npoll_interval = \"250ms\"\nbehind_window = \"6s\"\n");
    text.push_str(extra);
    std::fs::write(cfg, text).unwrap();
}

/// The records of examples/progress_log.py (what Spark reported).
fn spark_progress(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn query<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["queries"]
        .as_array()?
        .iter()
        .find(|q| q["name"] == name)
}

fn unix_ms(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Equal up to Spark's JSON rounding: `query.lastProgress` as PySpark 4.3
/// returns it carries rates rounded to one decimal (the JVM's
/// `StreamingQueryProgress.json`), the event log the full value.
fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => assert!(
            (x - y).abs() <= 0.05 + 1e-9 * x.abs().max(y.abs()).max(1.0),
            "{what}: sparkvisor {x}, Spark {y}"
        ),
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// sparkvisor's `/status` progress against Spark's own record of the same
/// batch.
fn assert_same_batch(ours: &Value, spark: &Value) {
    assert_eq!(ours["batch_id"], spark["batchId"]);
    close(&ours["batch_rows"], &spark["numInputRows"], "rows");
    let rate = |k: &str| spark.get(k).cloned().unwrap_or(Value::Null);
    close(
        &ours["input_rows_per_second"],
        &rate("inputRowsPerSecond"),
        "input rows/s",
    );
    close(
        &ours["processed_rows_per_second"],
        &rate("processedRowsPerSecond"),
        "processed rows/s",
    );
    close(
        &(ours["batch_duration_seconds"].as_f64().unwrap() * 1000.0)
            .round()
            .into(),
        &spark["batchDuration"],
        "batch duration",
    );
    let phases = spark["durationMs"].as_object().unwrap();
    assert_eq!(
        ours["phases_seconds"].as_object().unwrap().len(),
        phases.len()
    );
    for (k, v) in phases {
        close(
            &(ours["phases_seconds"][k].as_f64().unwrap() * 1000.0)
                .round()
                .into(),
            v,
            k,
        );
    }
    let ops = spark["stateOperators"].as_array().unwrap();
    if ops.is_empty() {
        assert!(ours["state_rows"].is_null());
    } else {
        let sum = |k: &str| ops.iter().map(|o| o[k].as_u64().unwrap()).sum::<u64>();
        assert_eq!(ours["state_rows"], sum("numRowsTotal"));
        assert_eq!(ours["state_memory_bytes"], sum("memoryUsedBytes"));
    }
    match spark["eventTime"]["watermark"].as_str().map(unix_ms) {
        Some(w) if w > 0 => {
            close(
                &ours["watermark_unix"],
                &(w as f64 / 1000.0).into(),
                "watermark",
            );
            let t = unix_ms(spark["timestamp"].as_str().unwrap());
            close(
                &ours["watermark_lag_seconds"],
                &((t - w) as f64 / 1000.0).into(),
                "watermark lag",
            );
        }
        _ => assert!(ours["watermark_unix"].is_null()),
    }
}

/// The value of `name{query="q"}` in `/metrics`.
fn query_metric(port: u16, name: &str, q: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics")?;
    let prefix = format!("{name}{{query=\"{q}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// Follows a run until `batches` batches of query `name` were seen in
/// `/status` and matched Spark's records; checks on every look that
/// sparkvisor is at most one batch behind Spark, and that `/metrics` says
/// what `/status` says. Returns the run id.
fn matches_spark(sv: &Running, log: &Path, name: &str, batches: usize) -> String {
    let mut matched = BTreeSet::new();
    let mut metrics_checked = false;
    let mut run = String::new();
    wait_for(
        &format!("{batches} batches of {name} matching Spark"),
        SLOW,
        || {
            // Spark first, then sparkvisor: sparkvisor's answer is never older.
            let records = spark_progress(log);
            let status = sv.status()?;
            let q = query(&status, name)?;
            let p = &q["progress"];
            let b = p["batch_id"].as_i64()?;
            run = p["run_id"].as_str()?.to_string();
            let of_run: Vec<&Value> = records
                .iter()
                .filter(|r| r["runId"] == run.as_str())
                .collect();
            let newest = of_run.iter().filter_map(|r| r["batchId"].as_i64()).max()?;
            assert!(
                b >= newest - 1,
                "sparkvisor shows batch {b} while Spark has reported batch {newest}"
            );
            if let Some(r) = of_run.iter().find(|r| r["batchId"] == b) {
                assert_same_batch(p, r);
                matched.insert(b);
            }
            if !metrics_checked {
                let m = |k: &str| query_metric(sv.port, k, name);
                let rows = m("sparkvisor_query_batch_rows");
                let duration = m("sparkvisor_query_batch_duration_seconds");
                let again = sv.status()?;
                if query(&again, name)?["progress"]["batch_id"].as_i64() == Some(b) {
                    assert_eq!(rows, p["batch_rows"].as_f64(), "batch rows in /metrics");
                    assert_eq!(duration, p["batch_duration_seconds"].as_f64());
                    metrics_checked = true;
                }
            }
            (matched.len() >= batches && metrics_checked).then_some(())
        },
    );
    run
}

/// Kills the driver JVM of the current attempt and waits for the next
/// attempt's first batch (a new run of the query).
fn kill_driver(sv: &mut Running, name: &str, old_run: &str) -> String {
    let pid = sv.pid();
    let jvm = wait_for("the driver JVM", SLOW, || driver_jvm(pid));
    let attempt = sv.status().unwrap()["attempt"].as_u64().unwrap();
    send(jvm, Signal::SIGKILL);
    let s = sv.wait_status("a batch of the next attempt", SLOW, |s| {
        s["attempt"].as_u64() > Some(attempt)
            && query(s, name).is_some_and(|q| {
                q["active"] == true
                    && q["run_id"] != old_run
                    && q["progress"]["run_id"] == q["run_id"]
            })
    });
    query(&s, name).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn rate_query_telemetry_behind_and_history_server_after_two_kills() {
    let _spark = spark_lock();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = S3Server::start();
    let log = d.join("progress.jsonl");
    let slow = d.join("slow");
    let port = free_port();
    let cfg = streaming_config(
        d,
        "telemetry_stream.py",
        &[
            ("ROWS_PER_SECOND", "10".into()),
            ("SLOW_MS", "400".into()),
            ("SLOW_FILE", slow.display().to_string()),
            ("PROGRESS_LOG", log.display().to_string()),
        ],
        "",
        "",
        port,
    );
    with_telemetry(
        &cfg,
        "ready_requires_caught_up = true\n",
        &format!(
            "[eventlog]\ns3_uri = \"s3://{BUCKET}/history\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             force_path_style = true\nsync_interval = \"1s\"\ndir = \"{}\"\n",
            server.endpoint(),
            d.join("eventlog").display()
        ),
    );
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut sv = Running::start(&cfg, port, false, &env);

    // Attempt 1: sparkvisor's numbers are Spark's, at most a batch late.
    let run1 = matches_spark(&sv, &log, "rate", 3);
    let s = sv.status().unwrap();
    let p = &query(&s, "rate").unwrap()["progress"];
    assert!(p["state_rows"].as_u64().unwrap() > 0, "{p}");
    assert!(p["watermark_lag_seconds"].as_f64().unwrap() >= 10.0, "{p}");
    // The rate source reports its latest offset: nothing behind it.
    assert_eq!(p["backlog"], 0.0);

    // Two kill -9s of the driver: telemetry follows each new attempt.
    let run2 = kill_driver(&mut sv, "rate", &run1);
    let run3 = kill_driver(&mut sv, "rate", &run2);
    matches_spark(&sv, &log, "rate", 2);

    // Slowed by its UDF the query falls behind, and /ready says so.
    std::fs::write(&slow, "").unwrap();
    let slowed_at = Instant::now();
    let s = sv.wait_status("the query to fall behind", SLOW, |s| {
        query(s, "rate").is_some_and(|q| q["behind"] == true)
    });
    let q = query(&s, "rate").unwrap();
    assert_eq!(s["behind"], serde_json::json!(["rate"]));
    assert!(q["behind_reason"].as_str().unwrap().contains("6s"), "{q}");
    assert_eq!(
        query_metric(port, "sparkvisor_query_behind", "rate"),
        Some(1.0)
    );
    let (code, why) = get(port, "/ready").unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("behind: rate"), "{why}");
    // Spark's own numbers agree: every batch of the last 6 s processed rows
    // more slowly than they arrived.
    let newest = q["progress"]["batch_id"].as_i64().unwrap();
    let records: Vec<Value> = spark_progress(&log)
        .into_iter()
        .filter(|r| r["runId"] == run3.as_str() && r["batchId"].as_i64().unwrap() <= newest)
        .collect();
    let last_t = unix_ms(records.last().unwrap()["timestamp"].as_str().unwrap());
    let window: Vec<&Value> = records
        .iter()
        .rev()
        .take_while(|r| unix_ms(r["timestamp"].as_str().unwrap()) > last_t - 6000)
        .collect();
    for r in &window {
        assert!(
            r["processedRowsPerSecond"].as_f64().unwrap()
                < r["inputRowsPerSecond"].as_f64().unwrap(),
            "behind, yet Spark reported {r}"
        );
    }
    eprintln!("behind {:?} after the UDF slowed down", slowed_at.elapsed());

    // Back to full speed: caught up, ready again.
    std::fs::remove_file(&slow).unwrap();
    sv.wait_status("the query to catch up", SLOW, |s| {
        query(s, "rate").is_some_and(|q| q["behind"] == false) && s["ready"] == true
    });
    assert_eq!(
        query_metric(port, "sparkvisor_query_behind", "rate"),
        Some(0.0)
    );
    assert_eq!(get(port, "/ready").unwrap().0, 200);

    // A graceful stop: the last attempt's log is shipped as completed.
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(SLOW), 0, "{}", sv.log_text());
    let history = d.join("history");
    let keys = download(&server, "history", &history);
    let apps: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| k.split('/').next())
        .filter(|a| a.starts_with("eventlog_v2_"))
        .map(str::to_string)
        .collect();
    assert_eq!(apps.len(), 3, "one event log per attempt: {keys:?}");
    let in_progress = keys.iter().filter(|k| k.ends_with(".inprogress")).count();
    assert_eq!(
        in_progress, 2,
        "the killed attempts stay in progress: {keys:?}"
    );
    // Shipped logs are not kept locally after the stop.
    assert!(
        std::fs::read_dir(d.join("eventlog"))
            .unwrap()
            .next()
            .is_none(),
        "local event logs left after shipping"
    );

    // A real History Server on the downloaded prefix lists every attempt's
    // application with its jobs.
    let hs = HistoryServer::start(&history, d);
    let listed = wait_for("the History Server to list 3 applications", SLOW, || {
        let (code, body) = get(hs.port, "/api/v1/applications")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v.as_array()?.len() == 3).then_some(v)
    });
    let mut completed = 0;
    for app in listed.as_array().unwrap() {
        let id = app["id"].as_str().unwrap();
        if app["attempts"][0]["completed"] == true {
            completed += 1;
        }
        let jobs = wait_for(&format!("the jobs of {id}"), SLOW, || {
            let (code, body) = get(hs.port, &format!("/api/v1/applications/{id}/jobs"))?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200).then_some(v)
        });
        assert!(
            !jobs.as_array().unwrap().is_empty(),
            "{id} has no jobs in the History Server: {app}\nshipped: {keys:?}\n{}",
            std::fs::read_to_string(d.join("history.log")).unwrap_or_default()
        );
    }
    assert_eq!(
        completed, 1,
        "only the stopped attempt ended cleanly: {listed}"
    );
    eprintln!("Spark time: {:?}", started.elapsed());
}

#[test]
fn exactly_once_workload_telemetry_matches_spark() {
    let _spark = spark_lock();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("input");
    let generated = Command::new(python())
        .arg(repo().join("examples/exactly_once_gen.py"))
        .arg("--input")
        .arg(&input)
        .args(["--ids", "400", "--files", "8"])
        .status()
        .unwrap();
    assert!(generated.success());
    let log = d.join("progress.jsonl");
    let port = free_port();
    let cfg = streaming_config(
        d,
        "exactly_once_stream.py",
        &[
            ("INPUT_DIR", input.display().to_string()),
            ("OUTPUT_DIR", d.join("output").display().to_string()),
            ("FILES_PER_TRIGGER", "2".into()),
            ("PROGRESS_LOG", log.display().to_string()),
        ],
        "",
        "",
        port,
    );
    with_telemetry(&cfg, "", "");
    let sv = Running::start(&cfg, port, false, &[]);
    matches_spark(&sv, &log, "dedup", 3);
    // Every file read (8 files, 2 per batch: 4 batches of 100 rows): the
    // state holds every id once.
    let s = sv.wait_status("the input consumed", SLOW, |s| {
        query(s, "dedup").is_some_and(|q| q["progress"]["state_rows"] == 400)
    });
    let q = query(&s, "dedup").unwrap();
    assert_eq!(q["behind"], false, "an idle stream is never behind");
    // The file source reports no backlog, so there is none to show.
    assert!(q["progress"]["backlog"].is_null(), "{q}");
    assert_eq!(
        query_metric(port, "sparkvisor_query_backlog", "dedup"),
        None
    );
    assert_eq!(
        query_metric(port, "sparkvisor_query_state_rows", "dedup"),
        Some(400.0)
    );
    // Spark wrote the event log where sparkvisor put it, uncompressed.
    let ev = d.join("eventlog");
    let logs: Vec<PathBuf> = std::fs::read_dir(&ev)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        std::fs::read_dir(&logs[0])
            .unwrap()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().starts_with("events_1_"))
    );
    eprintln!("Spark time: {:?}", started.elapsed());
}

/// Every object under `prefix` of the test bucket, written below `into`
/// with the same relative paths; returns the relative paths.
fn download(server: &S3Server, prefix: &str, into: &Path) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = server.store().await;
        let mut rels = Vec::new();
        for key in store.list(&format!("{prefix}/")).await.unwrap() {
            let rel = key.strip_prefix(&format!("{prefix}/")).unwrap().to_string();
            let path = into.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, store.get(&key).await.unwrap()).unwrap();
            rels.push(rel);
        }
        rels.sort();
        rels
    })
}

/// `spark-class org.apache.spark.deploy.history.HistoryServer` from the
/// wheel, reading `logs`; killed (its whole process group) when dropped.
struct HistoryServer {
    child: std::process::Child,
    port: u16,
}

impl HistoryServer {
    fn start(logs: &Path, work: &Path) -> HistoryServer {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let conf = write(
            work,
            "history.conf",
            &format!(
                "spark.history.fs.logDirectory file:{}\nspark.history.ui.port {port}\n\
                 spark.history.fs.update.interval 1s\n",
                logs.display()
            ),
        );
        let out = std::fs::File::create(work.join("history.log")).unwrap();
        let child = Command::new(spark_home().join("bin/spark-class"))
            .args([
                "org.apache.spark.deploy.history.HistoryServer",
                "--properties-file",
            ])
            .arg(&conf)
            .env("SPARK_HOME", spark_home())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start the History Server");
        HistoryServer { child, port }
    }
}

impl Drop for HistoryServer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}
