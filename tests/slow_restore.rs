//! Restores over slow and stalling links, with real sparkvisor processes, a
//! real S3-compatible server (s3s-fs) and a throttling proxy between them
//! (tests/common/proxy.rs): liveness follows the restore's progress
//! (`/health` 200 in every poll while bytes arrive, 503 only when nothing
//! moves for `probes.wedge_window`), `/ready` waits for the restore, one
//! stalled stream is retried on its own from its last byte, and a restore
//! resumes across a kill -9 of sparkvisor — proven by the bytes that
//! crossed the link, not by time. Also: an `s3://` app larger than the
//! memory-backed runtime dir is downloaded to disk.
//!
//! Inputs are a few MiB, with the wedge window and the stall detection
//! shortened through their configuration keys. Timing ratios against the
//! link's own time are in bench/slow_restore.rs, not here.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::proxy::{Link, Proxy};
use common::restore::{Poll, Poller, RestoreCase, publish, tree, write_checkpoint};
use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;

const KIB: u64 = 1024;
const SLOW: Duration = Duration::from_secs(180);

/// A replica of 4 batches × 6 state partitions of 160 KiB (~3.8 MiB).
fn seeded(prefix: &str) -> (S3Server, RestoreCase, BTreeMap<String, Vec<u8>>, u64) {
    let server = S3Server::start();
    let case = RestoreCase::new(prefix);
    let src = case.path("source");
    write_checkpoint(&src, 4, 6, 160 * 1024);
    let want = publish(&server, &src, prefix);
    let size = want.values().map(|b| b.len() as u64).sum();
    (server, case, want, size)
}

/// What crossed the link may exceed the data only by what a retry loses
/// in flight and the requests' headers: never a second copy.
fn assert_resumed_not_restarted(proxy: &Proxy, size: u64) {
    let down = proxy.bytes_down();
    assert!(down >= size, "{down} bytes crossed the link for {size}");
    assert!(
        down <= size + size / 10 + 128 * KIB,
        "{down} bytes crossed the link for a {size}-byte checkpoint: downloads started over"
    );
}

/// `/health` 200 in every poll; `/ready` 503 in every poll until the
/// restore is reported done, then 200; the restore was seen running.
fn assert_probes(polls: &[Poll]) {
    assert!(!polls.is_empty());
    for (i, p) in polls.iter().enumerate() {
        assert_eq!(p.health, Some(200), "poll {i} of {}: {p:?}", polls.len());
    }
    let done = polls
        .iter()
        .position(|p| p.restore == "restored")
        .expect("the restore finished while polled");
    for p in &polls[..done] {
        assert_eq!(p.ready, Some(503), "{p:?}");
    }
    assert!(polls.iter().any(|p| p.ready == Some(200)));
    let restoring = polls[..done]
        .iter()
        .filter(|p| p.state == "restoring")
        .count();
    assert!(restoring >= 10, "the restore was seen {restoring} times");
}

fn wait_ready(sv: &mut Running, port: u16) {
    let log = sv.log.clone();
    let child = &mut sv.child;
    wait_for("/ready 200 after the restore", SLOW, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "sparkvisor exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        (get(port, "/ready").map(|(c, _)| c) == Some(200)).then_some(())
    });
}

fn stop(mut sv: Running) {
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        sv.log_text()
    );
}

#[test]
fn steady_slow_link_keeps_health_and_a_killed_restore_resumes_by_bytes() {
    let (server, case, want, size) = seeded("steady");
    // Every connection gets 64 KiB/s; four in parallel.
    let proxy = Proxy::start(server.port, Link::Steady { rate: 64 * KIB });
    let s3 = "concurrency = 4\nread_stall_timeout = \"2s\"";
    let probes = "wedge_window = \"2s\"";

    // The first sparkvisor dies (kill -9) halfway through.
    let port = free_port();
    let cfg = case.config(&proxy.endpoint(), port, s3, probes);
    let mut sv = case.start(&server, &cfg, port);
    wait_for("sparkvisor's HTTP server", Duration::from_secs(20), || {
        sv.status()
    });
    let poller = Poller::start(port, Duration::from_millis(100));
    wait_for("half the checkpoint through the link", SLOW, || {
        (proxy.bytes_down() >= size / 2).then_some(())
    });
    let first = poller.stop();
    for (i, p) in first.iter().enumerate() {
        assert_eq!(p.health, Some(200), "poll {i}: {p:?}");
        assert_eq!(p.ready, Some(503), "poll {i}: {p:?}");
    }
    send(sv.pid(), Signal::SIGKILL);
    let _ = sv.child.wait();
    let at_kill = proxy.bytes_down();
    assert!(!case.checkpoint().exists(), "nothing moved into place yet");
    assert!(case.path(".checkpoint.sparkvisor-restore").is_dir());

    // The next one keeps what was staged and fetches only the rest.
    let port = free_port();
    let cfg = case.config(&proxy.endpoint(), port, s3, probes);
    let mut sv = case.start(&server, &cfg, port);
    wait_for("sparkvisor's HTTP server", Duration::from_secs(20), || {
        sv.status()
    });
    let poller = Poller::start(port, Duration::from_millis(100));
    wait_ready(&mut sv, port);
    poller.wait_for("a poll of /ready 200", SLOW, |p| p.ready == Some(200));
    let polls = poller.stop();
    assert_probes(&polls);
    assert_eq!(tree(&case.checkpoint()), want, "every file back");
    assert!(case.path("started").is_file(), "the app started");
    let st = sv.status().unwrap();
    let reused = st["s3"]["restore"]["reused_bytes"].as_u64().unwrap();
    assert!(
        reused >= at_kill * 8 / 10,
        "the second restore reused {reused} bytes; {at_kill} had arrived before the kill: {st}"
    );
    assert_resumed_not_restarted(&proxy, size);
    eprintln!(
        "steady link: {size} bytes, {at_kill} before the kill, {} through the link in all, {} reused, {} polls all 200",
        proxy.bytes_down(),
        reused,
        first.len() + polls.len()
    );
    stop(sv);
}

#[test]
fn stalling_shared_link_retries_single_objects_from_their_last_byte() {
    let (server, case, want, size) = seeded("stalling");
    // 512 KiB/s for all connections together; after every 64 KiB a stream
    // stops for 3 s (at most three at once) while the others go on.
    let proxy = Proxy::start(
        server.port,
        Link::Shared {
            rate: 512 * KIB,
            stall_every: 64 * KIB,
            stall: Duration::from_secs(3),
            max_stalled: 3,
        },
    );
    let port = free_port();
    let cfg = case.config(
        &proxy.endpoint(),
        port,
        "concurrency = 4\nread_stall_timeout = \"1s\"",
        "wedge_window = \"3s\"",
    );
    let mut sv = case.start(&server, &cfg, port);
    wait_for("sparkvisor's HTTP server", Duration::from_secs(20), || {
        sv.status()
    });
    let poller = Poller::start(port, Duration::from_millis(100));
    wait_ready(&mut sv, port);
    poller.wait_for("a poll of /ready 200", SLOW, |p| p.ready == Some(200));
    let polls = poller.stop();
    assert_probes(&polls);
    assert_eq!(tree(&case.checkpoint()), want, "every file back");
    assert!(case.path("started").is_file(), "the app started");
    let retries = sv
        .log_text()
        .matches("retrying this object from its last byte")
        .count();
    assert!(
        proxy.stalls() >= 5 && retries >= 5,
        "{} stalls, {retries} retries",
        proxy.stalls()
    );
    assert_resumed_not_restarted(&proxy, size);
    eprintln!(
        "stalling link: {size} bytes, {} through the link, {} stalls, {retries} single-object retries, {} polls all 200",
        proxy.bytes_down(),
        proxy.stalls(),
        polls.len()
    );
    stop(sv);
}

#[test]
fn a_restore_that_stops_moving_turns_health_503_until_bytes_flow_again() {
    let (server, case, want, _) = seeded("wedge");
    let proxy = Proxy::start(server.port, Link::Steady { rate: 256 * KIB });
    let port = free_port();
    // Stall detection slower than the wedge window: nothing retries, nothing moves.
    let cfg = case.config(
        &proxy.endpoint(),
        port,
        "concurrency = 2\nread_stall_timeout = \"60s\"",
        "wedge_window = \"2s\"",
    );
    let mut sv = case.start(&server, &cfg, port);
    wait_for("the restore under way", SLOW, || {
        (proxy.bytes_down() > 400 * KIB).then_some(())
    });
    assert_eq!(get(port, "/health").unwrap().0, 200);
    proxy.pause(true);
    let (_, why) = wait_for(
        "/health 503 without progress",
        Duration::from_secs(20),
        || get(port, "/health").filter(|(c, _)| *c == 503),
    );
    assert!(why.contains("restore made no progress"), "{why}");
    let st = sv.status().unwrap();
    assert_eq!(st["state"], "restoring");
    assert_eq!(st["step"]["kind"], "restore", "{st}");
    assert_eq!(st["step"]["doing"], "downloading", "{st}");
    assert!(st["step"]["bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(st["step"]["idle_seconds"].as_f64().unwrap() >= 2.0, "{st}");
    proxy.pause(false);
    wait_for(
        "/health 200 once bytes arrive",
        Duration::from_secs(20),
        || (get(port, "/health").map(|(c, _)| c) == Some(200)).then_some(()),
    );
    wait_ready(&mut sv, port);
    assert_eq!(tree(&case.checkpoint()), want);
    assert!(sv.status().unwrap()["step"].is_null());
    stop(sv);
}

/// The stand-in for spark-submit here checks the app jar it is given:
/// its SHA-256, and the file system types of the jar and the runtime dir.
const CHECK_JAR: &str = r#"#!/bin/sh
for a in "$@"; do case "$a" in *.jar) jar="$a";; esac; done
sha256sum "$jar" | cut -d' ' -f1 > "$CASE_DIR/jar.sha256"
stat -f -c %T "$jar" > "$CASE_DIR/jar.fs"
stat -f -c %T "$RUNTIME_DIR" > "$CASE_DIR/runtime.fs"
"#;

#[test]
fn an_s3_app_larger_than_the_memory_runtime_dir_is_downloaded_to_disk() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 150 MiB "assembly jar" in the bucket.
    let jar = d.join("big.jar");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&jar).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..150 {
            fastrand::fill(&mut chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sha = rt.block_on(async {
        let (sha, _) = sparkvisor::s3::sha256_file(&jar).await.unwrap();
        let store = server.store().await;
        store
            .put_file_multipart("apps/big.jar", &jar, &sha)
            .await
            .unwrap();
        sha
    });
    std::fs::remove_file(&jar).unwrap();

    let home = script_spark_home(d, CHECK_JAR);
    let runtime = d.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let port = free_port();
    let config = |artifacts: &str| {
        write(
            d,
            "sparkvisor.toml",
            &format!(
                r#"
[spark]
home = "{home}"
app = "s3://{BUCKET}/apps/big.jar"
main_class = "example.Big"
artifacts_dir = "{artifacts}"
[spark.env]
CASE_DIR = "{d}"
RUNTIME_DIR = "{rt}"
[supervisor]
runtime_dir = "{rt}"
restart = "never"
exit_linger = "0s"
[checkpoint.s3]
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true
[probes]
listen = "127.0.0.1:{port}"
[jvm]
cds = "off"
"#,
                home = home.display(),
                d = d.display(),
                rt = runtime.display(),
                endpoint = server.endpoint(),
            ),
        )
    };
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Downloads under the memory-backed runtime dir are refused up front.
    let cfg = config(&format!("{}/artifacts", runtime.display()));
    let out = sparkvisor(&["plan", "--config", cfg.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("spark.artifacts_dir"),
        "{}",
        stderr(&out)
    );

    // A real 64 MiB tmpfs as the runtime dir (a private mount namespace, as
    // the chart's memory-backed volume); the jar goes to disk beside it.
    let cfg = config(&format!("{}/artifacts", d.display()));
    let mount = format!(
        "mount -t tmpfs -o size=64m tmpfs {} && exec \"$@\"",
        runtime.display()
    );
    let mut sv = Running::start_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
            "sh",
        ],
        &cfg,
        port,
        &env,
    );
    let code = sv.wait_exit(Duration::from_secs(300));
    assert_eq!(code, 0, "{}", sv.log_text());
    let read = |n: &str| {
        std::fs::read_to_string(d.join(n))
            .unwrap_or_else(|e| panic!("{n}: {e}\n{}", sv.log_text()))
            .trim()
            .to_string()
    };
    assert_eq!(read("jar.sha256"), sha, "the app got the whole jar");
    assert_eq!(
        read("runtime.fs"),
        "tmpfs",
        "the runtime dir was the 64 MiB tmpfs"
    );
    assert_ne!(read("jar.fs"), "tmpfs", "the jar is on disk");
    assert!(d.join("artifacts/0/big.jar").is_file());
    assert!(sv.log_text().contains("downloaded application file"));
}
