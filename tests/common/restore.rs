//! Shared pieces of the restore tests: a synthetic checkpoint published to
//! the S3 server, and `sparkvisor run` configured to restore it before
//! starting a stand-in for spark-submit that serves Spark's REST API (so
//! `/ready` can turn 200) and records what it found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sparkvisor::replica::replicate::{ReplicaConfig, Replicator, SyncOutcome};
use sparkvisor::replica::snapshot;

use super::s3::{BUCKET, S3Server};
use super::{Running, free_port, http, script_spark_home, write};

/// Every regular file under `dir` (relative `/` paths) and its bytes,
/// leaving out sparkvisor's own entries at the root.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot::scan(dir)
        .unwrap()
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f.path)).unwrap();
            (f.path, bytes)
        })
        .collect()
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes batches `0..batches` of a query `q` under `dir` the way Spark
/// does (offsets, `partitions` state files of `state_size` bytes, then the
/// commit).
pub fn write_checkpoint(dir: &Path, batches: u64, partitions: usize, state_size: usize) {
    let q = dir.join("q");
    put(&q.join("metadata"), b"{\"id\":\"restore-test\"}\n");
    put(&q.join("sources/0/0"), b"v1\n1700000000000");
    for n in 0..batches {
        put(
            &q.join(format!("offsets/{n}")),
            format!("v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{n}}}\n{n}").as_bytes(),
        );
        for p in 0..partitions {
            let mut b = vec![0u8; state_size];
            fastrand::fill(&mut b);
            put(&q.join(format!("state/0/{p}/{}.delta", n + 1)), &b);
        }
        put(
            &q.join(format!("commits/{n}")),
            b"v1\n{\"nextBatchWatermarkMs\":0}",
        );
    }
}

/// Publishes the checkpoint at `dir` as a manifest under `prefix`; returns
/// the manifest's files as the restore must bring them back.
pub fn publish(server: &S3Server, dir: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = server.store().await;
        let mut rep = Replicator::new(
            store,
            ReplicaConfig {
                dir: dir.to_path_buf(),
                location: server.location(prefix),
                retain: 10,
                concurrency: 8,
            },
        );
        let r = rep.sync_once().await.expect("publish the checkpoint");
        assert!(
            matches!(r.outcome, SyncOutcome::Published(_)),
            "{:?}",
            r.outcome
        );
    });
    let files = snapshot::scan(dir).unwrap();
    snapshot::select(&files)
        .files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f.path)).unwrap();
            (f.path, bytes)
        })
        .collect()
}

/// The stand-in for spark-submit: counts the checkpoint's files into
/// `$CASE_DIR/started`, then serves `/api/v1/applications` on `$UI_PORT`
/// until stopped (what `/ready` asks).
pub const FAKE_SPARK: &str = r#"#!/bin/sh
mkdir -p "$CASE_DIR/ui/api/v1"
echo '[{"id":"app-restore-test","name":"restore-test"}]' > "$CASE_DIR/ui/api/v1/applications"
find "$SPARKVISOR_CHECKPOINT_DIR" -type f | wc -l > "$CASE_DIR/started.tmp"
mv "$CASE_DIR/started.tmp" "$CASE_DIR/started"
exec python3 -m http.server "$UI_PORT" --bind 127.0.0.1 --directory "$CASE_DIR/ui"
"#;

/// A test directory with sparkvisor's configuration for restoring
/// `s3://BUCKET/<prefix>` through `endpoint` before the stand-in app runs.
pub struct RestoreCase {
    pub dir: tempfile::TempDir,
    pub prefix: String,
}

impl RestoreCase {
    pub fn new(prefix: &str) -> RestoreCase {
        RestoreCase {
            dir: tempfile::tempdir().unwrap(),
            prefix: prefix.into(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path("checkpoint")
    }

    /// Writes `sparkvisor.toml` for probes on `port`; `s3` and `probes`
    /// are extra lines for those sections.
    pub fn config(&self, endpoint: &str, port: u16, s3: &str, probes: &str) -> PathBuf {
        let home = script_spark_home(self.dir.path(), FAKE_SPARK);
        let app = write(self.dir.path(), "app.py", "# unused\n");
        let ui = free_port();
        write(
            self.dir.path(),
            "sparkvisor.toml",
            &format!(
                r#"
[spark]
home = "{home}"
app = "{app}"
[spark.env]
CASE_DIR = "{d}"
UI_PORT = "{ui}"
[supervisor]
runtime_dir = "{d}/run"
exit_linger = "0s"
backoff_initial = "200ms"
[checkpoint]
dir = "{d}/checkpoint"
[checkpoint.s3]
uri = "s3://{BUCKET}/{prefix}"
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true
sync_interval = "1h"
{s3}
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
{probes}
[jvm]
cds = "off"
"#,
                home = home.display(),
                app = app.display(),
                d = self.dir.path().display(),
                prefix = self.prefix,
            ),
        )
    }

    /// Starts sparkvisor with the S3 server's credentials.
    pub fn start(&self, server: &S3Server, config: &Path, port: u16) -> Running {
        let env = server.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(config, port, false, &env)
    }
}

/// One look at the probes.
#[derive(Clone, Debug)]
pub struct Poll {
    pub health: Option<u16>,
    pub ready: Option<u16>,
    /// `/status` state and restore outcome at that moment.
    pub state: String,
    pub restore: String,
}

/// Polls `/health`, `/ready` and `/status` every `every` on another thread
/// until [`Poller::stop`].
pub struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    polls: std::sync::Arc<std::sync::Mutex<Vec<Poll>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    pub fn start(port: u16, every: Duration) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let polls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), polls.clone());
        let thread = std::thread::spawn(move || {
            let mut tick = std::time::Instant::now();
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let status = http("GET", port, "/status")
                    .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok());
                let p = Poll {
                    health: http("GET", port, "/health").map(|(c, _)| c),
                    ready: http("GET", port, "/ready").map(|(c, _)| c),
                    state: status
                        .as_ref()
                        .and_then(|s| s["state"].as_str().map(str::to_string))
                        .unwrap_or_default(),
                    restore: status
                        .as_ref()
                        .and_then(|s| s["s3"]["restore"]["outcome"].as_str().map(str::to_string))
                        .unwrap_or_default(),
                };
                out.lock().unwrap().push(p);
                // The probe period: a pace, not a synchronisation.
                tick += every;
                if let Some(left) = tick.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(left);
                }
            }
        });
        Poller {
            stop,
            polls,
            thread: Some(thread),
        }
    }

    /// Waits until a poll satisfies `pred`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Poll) -> bool) {
        super::wait_for(what, timeout, || {
            self.polls.lock().unwrap().iter().any(&pred).then_some(())
        })
    }

    pub fn stop(mut self) -> Vec<Poll> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.polls.lock().unwrap())
    }
}
