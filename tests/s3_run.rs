//! Checkpoint replication under `sparkvisor run`, with real Spark and a real
//! S3-compatible server (s3s-fs): the loss of the node (sparkvisor and
//! everything under it SIGKILLed, the local checkpoint deleted) at an
//! arbitrary moment and in the middle of a sync, each followed by a new
//! sparkvisor that restores and finishes with exactly-once output; and S3
//! going away for a while without the app noticing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;

const SLOW: Duration = Duration::from_secs(300);

struct Setup {
    dir: tempfile::TempDir,
    server: S3Server,
    prefix: String,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            server: S3Server::start(),
            prefix: prefix.into(),
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, app: &str, env: &[(&str, String)], port: u16) -> PathBuf {
        let s3 = format!(
            r#"[checkpoint.s3]
uri = "s3://{BUCKET}/{prefix}"
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true
sync_interval = "1s"
"#,
            prefix = self.prefix,
            endpoint = self.server.endpoint(),
        );
        streaming_config(self.d(), app, env, "", &s3, port)
    }

    fn start(&self, cfg: &Path, port: u16, pid1: bool) -> Running {
        let env = self.server.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(cfg, port, pid1, &env)
    }

    fn manifests(&self) -> usize {
        self.server.keys(&self.prefix, "manifests").len()
    }

    fn objects(&self) -> usize {
        self.server.keys(&self.prefix, "objects").len()
    }
}

enum KillAt {
    /// Once a few batches are replicated.
    Replicated,
    /// While a sync has uploaded objects but not yet published its manifest.
    MidSync,
}

fn exactly_once_after_node_loss(kill_at: KillAt, prefix: &str, partitions: u32) {
    let _spark = spark_lock();
    let s = Setup::new(prefix);
    let input = s.d().join("input");
    // The sink inside the query's checkpoint folder: its commit log is
    // replicated with the checkpoint and cut at the same batch, which is what
    // makes a hard loss (no final sync) exactly-once for a file sink.
    let output = s.d().join("checkpoint/dedup/output");
    let generated = Command::new(python())
        .arg(repo().join("examples/exactly_once_gen.py"))
        .arg("--input")
        .arg(&input)
        .args(["--ids", "1600", "--files", "24"])
        .status()
        .unwrap();
    assert!(generated.success());
    let env = [
        ("INPUT_DIR", input.display().to_string()),
        ("OUTPUT_DIR", output.display().to_string()),
        ("FILES_PER_TRIGGER", "2".to_string()),
        ("AVAILABLE_NOW", "1".to_string()),
        ("VERIFY", "1".to_string()),
        ("SHUFFLE_PARTITIONS", partitions.to_string()),
    ];
    let port = free_port();
    let cfg = s.config("exactly_once_stream.py", &env, port);
    let query = s.d().join("checkpoint/dedup");

    // The first node: runs until the kill moment, then everything dies at once.
    let mut sv = s.start(&cfg, port, true);
    let sv_pid = sv.pid();
    wait_for("a few replicated batches", SLOW, || {
        (s.manifests() >= 2 && numbered(&query.join("commits")).len() >= 4).then_some(())
    });
    match kill_at {
        KillAt::Replicated => {}
        KillAt::MidSync => {
            // Objects beyond those of the newest manifest: a sync is uploading.
            let mut base = (s.manifests(), s.objects());
            wait_for("a sync in the middle of its uploads", SLOW, || {
                let (m, o) = (s.manifests(), s.objects());
                if m != base.0 {
                    base = (m, o);
                    return None;
                }
                (o > base.1).then_some(())
            });
        }
    }
    let manifests_at_kill = s.manifests();
    send(sv_pid, Signal::SIGKILL);
    let _ = sv.wait_exit(Duration::from_secs(30));
    let committed_before = numbered(&query.join("commits"));
    assert!(
        committed_before.len() < 24,
        "the kill must come before the end of the input"
    );
    // The node is gone: its disk with the checkpoint and the sink's local files.
    std::fs::remove_dir_all(s.d().join("checkpoint")).unwrap();
    drop(sv);

    // The new node: restores, then finishes the input.
    let port = free_port();
    let cfg = s.config("exactly_once_stream.py", &env, port);
    let mut sv = s.start(&cfg, port, false);
    let code = sv.wait_exit(Duration::from_secs(900));
    let log = sv.log_text();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("restored the checkpoint from S3"), "{log}");
    assert!(s.manifests() >= manifests_at_kill);
    eprintln!(
        "killed with {} batches committed locally, {manifests_at_kill} manifests in S3",
        committed_before.len()
    );

    // The restored app checked its sink in its own JVM once the input was consumed.
    let v = verdict_in(&log);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["rows"], 1600, "every id exactly once: {v}");
}

#[test]
fn node_loss_restores_from_s3_with_exactly_once_output() {
    exactly_once_after_node_loss(KillAt::Replicated, "node-loss", 4);
}

#[test]
fn node_loss_in_the_middle_of_a_sync_restores_the_previous_manifest() {
    // More state partitions: more files per batch, longer syncs.
    exactly_once_after_node_loss(KillAt::MidSync, "mid-sync", 32);
}

#[test]
fn s3_down_for_a_while_does_not_touch_the_app_and_sync_catches_up() {
    let _spark = spark_lock();
    let mut s = Setup::new("outage");
    let port = free_port();
    let cfg = s.config("rate_stream.py", &[("TRIGGER_SECONDS", "1".into())], port);
    let mut sv = s.start(&cfg, port, false);
    let query = s.d().join("checkpoint/rate");
    wait_for("a first manifest", SLOW, || {
        (s.manifests() >= 1).then_some(())
    });

    s.server.stop();
    let committed_at_stop = numbered(&query.join("commits"))
        .last()
        .copied()
        .unwrap_or(0);
    // Errors are counted and the lag shows while the app keeps committing.
    let st = sv.wait_status(
        "sync errors, lag and new commits while S3 is down",
        SLOW,
        |st| {
            let behind = st["s3"]["sync"]["queries"][0]["batches_behind"]
                .as_u64()
                .unwrap_or(0);
            let committed = numbered(&query.join("commits")).last().copied();
            metric(port, "sparkvisor_s3_sync_errors_total").unwrap_or(0.0) >= 1.0
                && behind >= 2
                && committed.is_some_and(|c| c >= committed_at_stop + 2)
        },
    );
    assert!(st["s3"]["sync"]["last_error"].is_string(), "{st}");
    assert_eq!(st["state"], "running");
    assert_eq!(
        st["attempt"], 1,
        "the app is never restarted for S3 trouble"
    );

    s.server.resume();
    let local_at_resume = numbered(&query.join("commits")).last().copied().unwrap();
    sv.wait_status("the replica to catch up", SLOW, |st| {
        st["s3"]["sync"]["queries"][0]["replicated_batch"]
            .as_u64()
            .is_some_and(|b| b >= local_at_resume)
    });
    assert!(metric(port, "sparkvisor_s3_last_sync_timestamp_seconds").unwrap_or(0.0) > 1.6e9);
    assert!(metric(port, "sparkvisor_s3_sync_files_total").unwrap_or(0.0) > 0.0);
    assert_eq!(sv.status().unwrap()["attempt"], 1);
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(90)),
        0,
        "{}",
        sv.log_text()
    );
    assert!(sv.log_text().contains("final checkpoint sync"));
}
