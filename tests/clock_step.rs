//! Steps of the wall clock while a batch is in flight: sparkvisor runs
//! under libfaketime (its own wall clock jumps; its monotonic clock, the
//! kernel's file times and the rest of the machine are untouched). Two
//! hours ahead, in an app whose Spark API has been up longer than
//! `stall_timeout`: no restart as stalled. Then four hours back: the real
//! stall still comes, after `stall_timeout` of monotonic time. The app is
//! a script and Spark's REST API a stub: what is under test is
//! sparkvisor's clock, not Spark.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const STALL_TIMEOUT_S: u64 = 10;

fn libfaketime() -> &'static str {
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "libfaketime is missing ({LIBFAKETIME}): run `make test` (it installs the Debian package libfaketime)"
    );
    LIBFAKETIME
}

/// Spark's REST API, answering `[]` to everything.
struct StubApi {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl StubApi {
    fn start() -> StubApi {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StubApi { port, stop }
    }
}

impl Drop for StubApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Plans batch `n` of the query under `root` now (real time).
fn plan(root: &Path, n: u64) {
    write(
        &root.join("q"),
        &format!("offsets/{n}"),
        &format!(
            "v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{},\"conf\":{{}}}}\n{{\"logOffset\":{n}}}",
            now_ms()
        ),
    );
}

/// A query with batch 0 planned and committed: idle.
fn idle_query(root: &Path) {
    let q = root.join("q");
    write(
        &q,
        "metadata",
        "{\"id\":\"a0b9a9ca-301a-409e-9851-a46e6e2fd037\"}\n",
    );
    plan(root, 0);
    write(&q, "commits/0", "v1\n{\"nextBatchWatermarkMs\":0}");
}

fn config(dir: &Path, port: u16, api: u16) -> PathBuf {
    let home = script_spark_home(dir, "#!/bin/sh\nexec sleep 1000\n");
    let app = write(dir, "app.py", "# unused\n");
    write(
        dir,
        "sv.toml",
        &format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
[spark.conf]
# The stub stands in for Spark's UI on that port.
"spark.ui.port" = {api}
[spark.env]
# The app keeps the machine's clock.
LD_PRELOAD = ""
[supervisor]
runtime_dir = "{d}/run"
restart = "never"
exit_linger = "0s"
[checkpoint]
dir = "{d}/checkpoint"
poll_interval = "200ms"
stall_timeout = "{STALL_TIMEOUT_S}s"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{api}"
poll_interval = "200ms"
[jvm]
cds = "off"
"#,
            home = home.display(),
            app = app.display(),
            d = dir.display(),
        ),
    )
}

fn inflight_age(st: &serde_json::Value) -> Option<f64> {
    st["checkpoint"]["queries"][0]["inflight_age_seconds"].as_f64()
}

#[test]
fn wall_clock_steps_neither_stall_a_healthy_app_nor_hide_a_stall() {
    let lib = libfaketime();
    let dir = tempfile::tempdir().unwrap();
    let api = StubApi::start();
    let port = free_port();
    let root = dir.path().join("checkpoint");
    idle_query(&root);
    let cfg = config(dir.path(), port, api.port);
    let clock = write(dir.path(), "faketime", "+0\n");
    let clock_s = clock.display().to_string();
    let mut sv = Running::start(
        &cfg,
        port,
        false,
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", &clock_s),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // Spark's API up for longer than stall_timeout, the stream idle.
    sv.wait_status(
        "Spark's API up for longer than stall_timeout",
        Duration::from_secs(30 + STALL_TIMEOUT_S),
        |s| {
            let up = s["spark_up_since_unix"].as_f64();
            let now = s["now_unix"].as_f64();
            matches!((up, now), (Some(u), Some(n)) if n - u > STALL_TIMEOUT_S as f64 + 1.0)
        },
    );
    plan(&root, 1);
    sv.wait_status("batch 1 in flight", Duration::from_secs(10), |s| {
        s["checkpoint"]["queries"][0]["inflight_batch"] == 1
    });

    // sparkvisor's wall clock jumps two hours ahead.
    std::fs::write(&clock, "+2h\n").unwrap();
    let real_now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let stepped = sv.wait_status("the step seen", Duration::from_secs(10), |s| {
        s["now_unix"]
            .as_f64()
            .is_some_and(|t| t > real_now() + 3600.0)
            && inflight_age(s).is_some_and(|a| a > 3600.0)
    });
    // Two more refreshes of the watcher, each of which judged the stall.
    let seen = inflight_age(&stepped).unwrap();
    let st = sv.wait_status(
        "two refreshes after the step",
        Duration::from_secs(10),
        |s| inflight_age(s).is_some_and(|a| a > seen + 0.3),
    );
    let log = sv.log_text();
    assert!(!log.contains("stall:"), "a clock step is no stall:\n{log}");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["attempt"], 1);

    // Four hours back: the real stall is not hidden, and comes on the
    // monotonic clock.
    std::fs::write(&clock, "-2h\n").unwrap();
    sv.wait_exit(Duration::from_secs(STALL_TIMEOUT_S + 30));
    let log = sv.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("stall:"))
        .unwrap_or_else(|| panic!("no stall:\n{log}"));
    let age: u64 = line
        .split("age_s=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no age in {line}"));
    assert!(
        (STALL_TIMEOUT_S..STALL_TIMEOUT_S + 20).contains(&age),
        "the stall's age is monotonic time since the batch was seen, not the steps: {line}"
    );
}
