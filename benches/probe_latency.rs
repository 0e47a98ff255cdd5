//! Probe latency under load (printed, not asserted).
//!
//! Fixed-rate, open-loop load (each request has a scheduled start; latency
//! counts from that schedule, so a stall is not hidden) against `/health`
//! and `/metrics`: first with an idle app, then while a real Spark job keeps
//! both cores busy, and `/health` while sparkvisor hashes a large CDS
//! archive at start-up. Prints p50/p99/max and the ratios to the idle app.
//!
//! Run: `cargo bench --bench probe_latency` (needs pyspark: `make test` installs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const RATE: u64 = 1000;
const SECONDS: u64 = 10;
const CLIENTS: u64 = 4;

fn config(dir: &Path, port: u16, spark: bool) -> std::path::PathBuf {
    let (home, app, env) = if spark {
        (
            spark_home(),
            repo().join("examples/rate_stream.py"),
            format!(
                "PYSPARK_PYTHON = \"{}\"\nROWS_PER_SECOND = \"400000\"\nTRIGGER_SECONDS = \"0\"\nOUTPUT_DIR = \"{}/out\"",
                python().display(),
                dir.display()
            ),
        )
    } else {
        let home = script_spark_home(dir, "#!/bin/sh\nexec sleep 100000\n");
        (home, write(dir, "app.py", "# unused\n"), String::new())
    };
    let text = format!(
        "[spark]\nhome = \"{}\"\napp = \"{}\"\n[spark.env]\n{env}\n[supervisor]\nruntime_dir = \"{d}/run\"\n\
         [checkpoint]\ndir = \"{d}/ckpt\"\n[probes]\nlisten = \"127.0.0.1:{port}\"\nspark_ui = \"http://127.0.0.1:{ui}\"\n",
        home.display(),
        app.display(),
        d = dir.display(),
        ui = free_port(),
    );
    write(dir, "sv.toml", &text)
}

/// One keep-alive request; returns when the whole body has arrived.
fn request(conn: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<()> {
    write!(conn.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
}

/// Latencies (µs) of RATE req/s for SECONDS against `path`.
fn load(port: u16, path: &'static str) -> Vec<u64> {
    load_for(port, path, SECONDS)
}

/// Latencies (µs) of RATE req/s for `seconds` against `path`.
fn load_for(port: u16, path: &'static str, seconds: u64) -> Vec<u64> {
    let start = Instant::now() + Duration::from_millis(100);
    let total = RATE * seconds;
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
                conn.get_ref().set_nodelay(true).unwrap();
                let mut out = Vec::new();
                let mut i = c;
                while i < total {
                    let due = start + Duration::from_micros(i * 1_000_000 / RATE);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    request(&mut conn, path).expect("probe request");
                    out.push(due.elapsed().as_micros() as u64);
                    i += CLIENTS;
                }
                out
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

fn phase(spark: bool) -> Vec<(&'static str, Vec<u64>)> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, spark);
    let sv = Running::start(&cfg, port, false, &[]);
    if spark {
        wait_for("Spark ready", Duration::from_secs(300), || {
            get(port, "/ready").filter(|(c, _)| *c == 200)
        });
        // Let the stream reach full speed.
        wait_for("batches committed", Duration::from_secs(120), || {
            let n = std::fs::read_dir(dir.path().join("ckpt/rate/commits"))
                .ok()?
                .count();
            (n >= 3).then_some(())
        });
    } else {
        wait_for("sparkvisor up", Duration::from_secs(30), || sv.status());
    }
    let out = vec![
        ("/health", load(port, "/health")),
        ("/metrics", load(port, "/metrics")),
    ];
    drop(sv);
    out
}

/// Seconds of load while the archive is hashed (it must last longer).
const HASHING_SECONDS: u64 = 3;

/// `/health` while sparkvisor hashes a 64 GiB (sparse) CDS archive at
/// start-up; None when the hash ended before the load did.
fn hashing_phase() -> Option<Vec<u64>> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[spark]\nhome = \"{}\"\napp = \"{}\"\n[supervisor]\nruntime_dir = \"{d}/run\"\n\
         [probes]\nlisten = \"127.0.0.1:{port}\"\nspark_ui = \"http://127.0.0.1:{ui}\"\n[jvm]\narchive_dir = \"{d}/archive\"\n",
        spark_home().display(),
        repo().join("examples/rate_stream.py").display(),
        d = dir.path().display(),
        ui = free_port(),
    );
    let cfg = write(dir.path(), "sv.toml", &text);
    let out = sparkvisor(
        &[
            "plan",
            "--config",
            cfg.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("plan --format json");
    let archive = std::path::PathBuf::from(plan["jvm"]["archive"].as_str().expect("CDS on"));
    let size: u64 = 64 << 30;
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    std::fs::File::create(&archive)
        .unwrap()
        .set_len(size)
        .unwrap();
    let record = serde_json::json!({"key": plan["jvm"]["key"], "size": size,
        "sha256": "0".repeat(64), "created_unix": 0.0, "made_by": "bench", "java": "17"});
    std::fs::write(archive.with_extension("json"), record.to_string()).unwrap();
    let mut sv = Running::start(&cfg, port, false, &[]);
    let pid = sv.pid();
    let open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == archive))
        })
    };
    wait_for("the archive being hashed", Duration::from_secs(60), || {
        open().then_some(())
    });
    let lat = load_for(port, "/health", HASHING_SECONDS);
    let valid = open();
    send(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = sv.wait_exit(Duration::from_secs(30));
    valid.then_some(lat)
}

fn main() {
    println!(
        "probe latency at {RATE} req/s for {SECONDS} s per path ({CLIENTS} keep-alive clients, open loop)"
    );
    let idle = phase(false);
    let hashing = hashing_phase();
    let _spark = spark_lock();
    let loaded = phase(true);
    println!(
        "{:<9} {:<22} {:>9} {:>9} {:>9}",
        "path", "machine", "p50 ms", "p99 ms", "max ms"
    );
    for ((path, a), (_, b)) in idle.iter().zip(loaded.iter()) {
        for (label, v) in [("idle app", a), ("Spark on both cores", b)] {
            println!(
                "{path:<9} {label:<22} {:>9.3} {:>9.3} {:>9.3}",
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 1.0)
            );
        }
        println!(
            "{path:<9} p99 ratio loaded/idle = {:.1}x (target with Spark on both cores: p99 under 5 ms)",
            pct(b, 0.99) / pct(a, 0.99).max(0.001)
        );
    }
    match hashing {
        Some(v) => {
            println!(
                "{:<9} {:<22} {:>9.3} {:>9.3} {:>9.3}",
                "/health",
                "CDS archive hashed",
                pct(&v, 0.5),
                pct(&v, 0.99),
                pct(&v, 1.0)
            );
            println!(
                "/health   p99 ratio hashing/idle = {:.1}x ({HASHING_SECONDS} s while sparkvisor hashes a 64 GiB archive at start-up)",
                pct(&v, 0.99) / pct(&idle[0].1, 0.99).max(0.001)
            );
        }
        None => println!(
            "/health while hashing: the hash ended before the load; make the archive larger"
        ),
    }
}
