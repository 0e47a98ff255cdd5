//! Every supported Spark version under `sparkvisor run`, starting from its
//! checkpoint fixture (tests/fixtures/checkpoints/spark-X.Y, a multi-query
//! root written by that version) restored from a real S3-compatible server.
//!
//! The non-default versions (3.5, 4.0) walk the core path in one scenario
//! each, sharing JVM start-ups between the assertions: readiness through
//! Spark's REST API and Spark's own Prometheus endpoints; the running driver
//! writes its CDS archive and the restarted driver maps it; kill -9 of the
//! driver after a commit and in the middle of a batch; a torn tail (Spark
//! fails on it without repair, resumes with it); node loss while S3
//! replication runs (everything SIGKILLed, the disk gone), a new node that
//! restores and finishes the input; and the app's own check that every
//! query's output is exactly-once. The default version (4.3) runs the
//! whole suite elsewhere; here its fixture is restored and resumed.
//!
//! The fixtures hold absolute paths (the file source's and the sinks'
//! logs), so each test puts its fixture back at the fixed root it was made
//! in, holding the machine-wide Spark lock.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use sparkvisor::replica::replicate::{ReplicaConfig, Replicator, SyncOutcome};

const SLOW: Duration = Duration::from_secs(300);

/// The fixture of one Spark line at its root, its replica in S3.
struct Scenario {
    spark: Spark,
    root: PathBuf,
    server: S3Server,
    prefix: String,
    /// Input files written so far (the fixture's are 0-5).
    files: u32,
}

impl Scenario {
    /// Puts the fixture's input back at its root and its checkpoint into S3
    /// (as the replica a lost node left behind); the local checkpoint
    /// folder does not exist yet.
    fn new(line: &str) -> Scenario {
        let spark = spark(line);
        let root = fixture_root(line);
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap();
        }
        let fixture = fixture_dir(line);
        copy_tree(&fixture.join("input"), &root.join("input"));
        let s = Scenario {
            spark,
            root,
            server: S3Server::start(),
            prefix: format!("spark-{line}"),
            files: 6,
        };
        let staged = tempfile::tempdir().unwrap();
        copy_tree(&fixture.join("checkpoint"), staged.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut rep = Replicator::new(
                s.server.store().await,
                ReplicaConfig {
                    dir: staged.path().to_path_buf(),
                    location: s.server.location(&s.prefix),
                    retain: 3,
                    concurrency: 4,
                },
            );
            let sync = rep.sync_once().await.expect("upload the fixture");
            assert!(matches!(sync.outcome, SyncOutcome::Published(_)));
        });
        s
    }

    fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    fn query(&self, name: &str) -> PathBuf {
        self.checkpoint().join(name)
    }

    /// Appends `n` input files; file k holds ids 5k..5k+9, so every id is
    /// in two consecutive files (and the first ones were seen before).
    fn feed(&mut self, n: u32) {
        for _ in 0..n {
            let k = self.files;
            let text: String = (5 * k..5 * k + 10)
                .map(|id| format!("{{\"id\": {id}, \"file\": {k}}}\n"))
                .collect();
            let tmp = self.root.join(format!("input/.part-{k:05}.json.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.root.join(format!("input/part-{k:05}.json"))).unwrap();
            self.files += 1;
        }
    }

    /// sparkvisor's configuration: the fixture app on this line's Spark,
    /// `env` for the app, S3 when `s3`, extra `[checkpoint]` lines.
    fn config(&self, port: u16, env: &[(&str, String)], s3: bool, extra: &str) -> PathBuf {
        let mut env: Vec<(&str, String)> = env.to_vec();
        env.push(("INPUT_DIR", self.root.join("input").display().to_string()));
        env.push(("FILES_PER_TRIGGER", "1".into()));
        env.push(("TRIGGER_SECONDS", "1".into()));
        let mut checkpoint = extra.to_string();
        if s3 {
            checkpoint.push_str(&format!(
                "\n[checkpoint.s3]\nuri = \"s3://{BUCKET}/{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\nsync_interval = \"1s\"\n",
                self.prefix,
                self.server.endpoint()
            ));
        }
        streaming_config_with(
            &self.spark,
            &self.root,
            "state_stores_stream.py",
            &env,
            "restart = \"on-failure\"",
            &checkpoint,
            port,
        )
    }

    fn start(&self, cfg: &Path, port: u16, pid_namespace: bool) -> Running {
        let env = self.server.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(cfg, port, pid_namespace, &env)
    }
}

/// Polls `f` every 200 ms until it holds (true) or `timeout` passes (false).
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn code(port: u16, path: &str) -> u16 {
    get(port, path).map(|(c, _)| c).unwrap_or(0)
}

fn jvm_attempt(st: &Value) -> &Value {
    &st["jvm"]["attempt"]
}

/// The last run of a scenario: a node with no checkpoint restores from S3,
/// processes what is left (AVAILABLE_NOW) and checks its output; returns
/// the verdict.
fn restore_and_finish(s: &mut Scenario) -> Value {
    s.feed(2);
    let port = free_port();
    let cfg = s.config(
        port,
        &[("AVAILABLE_NOW", "1".into()), ("VERIFY", "1".into())],
        true,
        // A short run: no archive to make (the JVM would exit during it).
        "[jvm]\ncds = \"off\"",
    );
    let mut sv = s.start(&cfg, port, false);
    let exit = sv.wait_exit(Duration::from_secs(600));
    let log = sv.log_text();
    assert!(log.contains("restored the checkpoint from S3"), "{log}");
    let v = verdict_in(&log);
    assert_eq!(exit, 0, "{v}\n{log}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["spark"], s.spark.version.as_str());
    // Every id of the input exactly once (0 up to the last file's 5k+9),
    // every count exact.
    assert_eq!(v["ids"], 5 * u64::from(s.files) + 5, "{v}");
    assert_eq!(v["dedup"]["rows"], v["ids"], "{v}");
    assert_eq!(v["counts"]["counts"], v["counts"]["expected"], "{v}");
    v
}

/// The core path on Spark `line` (see the module docs).
fn core_path(line: &str) {
    let _spark = spark_lock();
    let mut s = Scenario::new(line);
    let dedup = s.query("dedup");

    // Node 1: restores the fixture from S3, then runs with replication.
    let port = free_port();
    let cfg = s.config(port, &[], true, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let ui: u16 = text
        .split("spark_ui = \"http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("the Spark UI port in the config");
    let mut sv = s.start(&cfg, port, false);
    let host = sv.pid();
    wait_for("sparkvisor's HTTP server", Duration::from_secs(30), || {
        sv.status()
    });
    assert_eq!(code(port, "/ready"), 503, "not ready before Spark answers");
    // While the SparkContext starts, Spark's UI answers every path with
    // 200 and a "starting up" page; that is not the REST API answering (the
    // page comes before the API, never after, so this is free of races).
    let mut starting_pages = 0;
    wait_for("/ready 200 (Spark's REST API answers)", SLOW, || {
        if let Some((_, body)) = http("GET", ui, "/api/v1/applications")
            && body.contains("Spark is starting up")
        {
            starting_pages += 1;
            assert_eq!(code(port, "/ready"), 503, "ready on the starting page");
        }
        (code(port, "/ready") == 200).then_some(())
    });
    eprintln!("Spark {line}: the UI showed its starting page {starting_pages} times");
    let log = sv.log_text();
    assert!(log.contains("restored the checkpoint from S3"), "{log}");
    assert!(
        log.contains(&format!("version=\"{}\"", s.spark.version))
            || log.contains(&format!("version={}", s.spark.version)),
        "sparkvisor names the Spark it found: {log}"
    );
    assert!(!log.contains("is not a tested line"), "{log}");
    // Spark's own Prometheus endpoints, from the confs sparkvisor sets
    // (while the UI starts they answer "Spark is starting up"; 3.5 and 4.0
    // redirect the servlet's path to the same path with a trailing slash,
    // which Prometheus follows).
    for (path, needle) in [
        ("/metrics/prometheus", "metrics_spark_driver_"),
        ("/metrics/executors/prometheus", "spark_info{"),
    ] {
        let mut last = None;
        let found = wait_until(SLOW, || {
            let mut answer = http("GET", ui, path);
            if answer.as_ref().is_some_and(|(c, _)| *c == 302) {
                answer = http("GET", ui, &format!("{path}/"));
            }
            let ok = answer
                .as_ref()
                .is_some_and(|(c, body)| *c == 200 && body.contains(needle));
            last = answer;
            ok
        });
        assert!(found, "no {needle} at {path}; the last answer: {last:?}");
    }

    // The running driver writes its archive after its first commit; the
    // restored query `counts` replays its batch 4 from the fixture.
    s.feed(2);
    let st = sv.wait_status("the running driver to write its archive", SLOW, |st| {
        let a = jvm_attempt(st);
        a["attempt"] == 1
            && (a["dump"] == "written" || a["dump"].as_str().unwrap_or("").starts_with("failed"))
    });
    assert_eq!(jvm_attempt(&st)["dump"], "written", "{st}");
    wait_for("counts to replay and commit its batch 4", SLOW, || {
        (last_commit(&s.query("counts"))? >= 4).then_some(())
    });

    // kill -9 right after a commit: the next driver maps the archive.
    s.feed(1);
    let before = last_commit(&dedup).unwrap();
    let jvm = wait_for("a new commit", SLOW, || {
        (last_commit(&dedup)? > before)
            .then(|| driver_jvm(host))
            .flatten()
    });
    let attempt = sv.status().unwrap()["attempt"].as_u64().unwrap();
    send(jvm, Signal::SIGKILL);
    let st = sv.wait_status("the next attempt's verdict on the archive", SLOW, |st| {
        jvm_attempt(st)["attempt"].as_u64() > Some(attempt)
            && !jvm_attempt(st)["archive_used"].is_null()
    });
    assert_eq!(st["last_exit"]["class"], "signaled", "{st}");
    assert_eq!(jvm_attempt(&st)["archive_used"], true, "{st}");

    // kill -9 in the middle of a batch (planned, not committed).
    s.feed(1);
    let planned = numbered(&dedup.join("offsets")).len();
    let jvm = wait_for("a batch in flight", SLOW, || {
        let offsets = numbered(&dedup.join("offsets"));
        let commits = numbered(&dedup.join("commits"));
        (offsets.len() > planned && offsets.last() > commits.last())
            .then(|| driver_jvm(host))
            .flatten()
    });
    let inflight = *numbered(&dedup.join("offsets")).last().unwrap();
    let attempt = sv.status().unwrap()["attempt"].as_u64().unwrap();
    send(jvm, Signal::SIGKILL);
    sv.wait_status("the next attempt", SLOW, |st| {
        st["attempt"].as_u64() > Some(attempt)
    });
    wait_for(
        "the batch in flight to commit after the restart",
        SLOW,
        || (last_commit(&dedup)? >= inflight).then_some(()),
    );
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(120)),
        0,
        "{}",
        sv.log_text()
    );
    assert!(sv.log_text().contains("final checkpoint sync"));
    drop(sv);

    // A torn tail: the next batch's offsets entry empty, as a power loss
    // while Spark planned it leaves it. Spark alone cannot start on it.
    let committed = last_commit(&dedup).unwrap();
    let torn = dedup.join(format!("offsets/{}", committed + 1));
    std::fs::write(&torn, b"").unwrap();
    let _ = std::fs::remove_file(dedup.join(format!("offsets/.{}.crc", committed + 1)));
    let port = free_port();
    let cfg = s.config(port, &[], false, "repair = false");
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("restart = \"on-failure\"", "restart = \"never\"");
    std::fs::write(&cfg, cfg_text).unwrap();
    let mut sv = s.start(&cfg, port, false);
    let exit = sv.wait_exit(SLOW);
    let log = sv.log_text();
    assert_ne!(exit, 0, "Spark {line} must fail on the torn offsets: {log}");
    assert!(log.contains("Incomplete log file"), "{log}");
    assert_eq!(std::fs::metadata(&torn).unwrap().len(), 0);
    drop(sv);

    // Node 1 again, repair on: the local checkpoint is kept (not older than
    // the replica), the torn entry quarantined, the archive used at once.
    let port = free_port();
    let cfg = s.config(port, &[], true, "");
    let mut sv = s.start(&cfg, port, true);
    let st = sv.wait_status("the JVM's verdict on the archive", SLOW, |st| {
        jvm_attempt(st)["attempt"].as_u64() >= Some(1) && !jvm_attempt(st)["archive_used"].is_null()
    });
    assert_eq!(jvm_attempt(&st)["archive_used"], true, "{st}");
    let log = sv.log_text();
    assert!(log.contains("kept the local checkpoint"), "{log}");
    assert!(log.contains("quarantined a torn checkpoint file"), "{log}");
    let quarantined = walk(&s.root.join("checkpoint.quarantine"));
    assert!(
        quarantined
            .iter()
            .any(|p| p.ends_with(format!("dedup/offsets/{}", committed + 1))),
        "the torn entry is kept in the quarantine: {quarantined:?}"
    );
    s.feed(2);
    wait_for("batches beyond the torn one", SLOW, || {
        (last_commit(&dedup)? > committed + 1).then_some(())
    });
    // The replica follows while Spark runs.
    sv.wait_status("the replica to pass the torn batch", SLOW, |st| {
        st["s3"]["sync"]["queries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| {
                q["query"] == "dedup"
                    && q["replicated_batch"]
                        .as_u64()
                        .is_some_and(|b| b > committed + 1)
            })
    });
    assert!(
        metric(port, "sparkvisor_checkpoint_repairs_total").unwrap_or(0.0) >= 1.0,
        "the repair is counted"
    );
    // Node loss: sparkvisor and everything under it SIGKILLed at once, the
    // disk with the checkpoint and the archive gone.
    let pid = sv.pid();
    send(pid, Signal::SIGKILL);
    let _ = sv.wait_exit(Duration::from_secs(30));
    drop(sv);
    for d in ["checkpoint", "jvm-archive", "run", "checkpoint.quarantine"] {
        let _ = std::fs::remove_dir_all(s.root.join(d));
    }

    let v = restore_and_finish(&mut s);
    eprintln!("Spark {line}: {v}");
}

#[test]
fn spark_3_5_core_path() {
    core_path("3.5");
}

#[test]
fn spark_4_0_core_path() {
    core_path("4.0");
}

/// The default version's fixture, restored from S3, resumes exactly-once
/// (the rest of the core path runs in the other test files on 4.3).
#[test]
fn spark_4_3_fixture_resumes_exactly_once() {
    let _spark = spark_lock();
    let mut s = Scenario::new(DEFAULT_SPARK);
    let v = restore_and_finish(&mut s);
    assert!(v["tws"]["ok"] == true, "{v}");
}
