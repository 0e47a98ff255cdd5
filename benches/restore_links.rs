//! Restore over slow links, against each link's own time (printed, never
//! asserted).
//!
//! Two links from the throttling proxy of the tests (tests/common/proxy.rs)
//! in front of a local s3s-fs: a steady one (every connection gets the same
//! rate) and a shared one of the same capacity whose single streams stall
//! for seconds. For each link, in the same run: the link's own time — the
//! same bytes, one plain TCP stream per object with the same parallelism,
//! through the same proxy mode, no S3 and no checks — then `sparkvisor
//! checkpoint restore` of a checkpoint of those objects. Prints both times,
//! the bytes that crossed the link and the ratio restore / link.
//!
//! Run: `cargo bench --bench restore_links [-- --size-mib 48 --files 48
//! --concurrency 16 --rate-kib 128]` (needs s3s-fs: `make s3s-fs`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Link, Proxy};
use common::restore::{publish, tree};
use common::s3::{BUCKET, S3Server};
use common::*;

struct Args {
    size_mib: u64,
    files: u64,
    concurrency: usize,
    rate_kib: u64,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 48,
        files: 48,
        concurrency: 16,
        rate_kib: 128,
    };
    let v: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        v.iter()
            .position(|x| x == name)
            .and_then(|i| v.get(i + 1))
            .and_then(|s| s.parse().ok())
    };
    if let Some(n) = get("--size-mib") {
        a.size_mib = n;
    }
    if let Some(n) = get("--files") {
        a.files = n;
    }
    if let Some(n) = get("--concurrency") {
        a.concurrency = n as usize;
    }
    if let Some(n) = get("--rate-kib") {
        a.rate_kib = n;
    }
    a
}

/// A TCP source: reads an 8-byte length, writes that many bytes, closes.
fn source() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut n = [0u8; 8];
                if s.read_exact(&mut n).is_err() {
                    return;
                }
                let mut left = u64::from_le_bytes(n);
                let buf = vec![7u8; 64 * 1024];
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    if s.write_all(&buf[..k]).is_err() {
                        return;
                    }
                    left -= k as u64;
                }
            });
        }
    });
    port
}

/// The link's own time: one stream per object, `concurrency` at once.
fn raw_pipe(proxy_port: u16, sizes: &[u64], concurrency: usize) -> Duration {
    let queue = Arc::new(Mutex::new(sizes.to_vec()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let q = queue.clone();
            std::thread::spawn(move || {
                loop {
                    let Some(n) = q.lock().unwrap().pop() else {
                        return;
                    };
                    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
                    s.write_all(&n.to_le_bytes()).unwrap();
                    let mut got = 0u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    while got < n {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => panic!("the raw stream ended at {got} of {n}"),
                            Ok(k) => got += k as u64,
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    t0.elapsed()
}

fn restore(server: &S3Server, proxy: &Proxy, prefix: &str, to: &Path, a: &Args) -> Duration {
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let t0 = Instant::now();
    let out = sparkvisor(
        &[
            "checkpoint",
            "restore",
            "--from",
            &format!("s3://{BUCKET}/{prefix}"),
            "--to",
            to.to_str().unwrap(),
            "--set",
            &format!("checkpoint.s3.endpoint={}", proxy.endpoint()),
            "--set",
            "checkpoint.s3.force_path_style=true",
            "--set",
            "checkpoint.s3.region=us-east-1",
            "--set",
            &format!("checkpoint.s3.concurrency={}", a.concurrency),
            "--set",
            "checkpoint.s3.read_stall_timeout=1s",
        ],
        &env,
    );
    let dt = t0.elapsed();
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    dt
}

fn main() {
    let a = args();
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source");
    // `files` state files sharing `size_mib`, plus the small logs.
    let each = a.size_mib * 1024 * 1024 / a.files.max(1);
    let q = src.join("q");
    write(&q, "metadata", "{\"id\":\"bench\"}\n");
    write(&q, "offsets/0", "v1\n{}\n{}");
    write(&q, "commits/0", "v1\n{}");
    for i in 0..a.files {
        let mut b = vec![0u8; each as usize];
        fastrand::fill(&mut b);
        let p = q.join(format!("state/0/{i}/1.delta"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let want = publish(&server, &src, "bench");
    let sizes: Vec<u64> = want.values().map(|b| b.len() as u64).collect();
    let total: u64 = sizes.iter().sum();
    let rate = a.rate_kib * 1024;
    let capacity = rate * a.concurrency as u64;
    println!(
        "checkpoint: {} files, {:.1} MiB; {} parallel requests; link capacity {:.2} MiB/s",
        sizes.len(),
        total as f64 / 1048576.0,
        a.concurrency,
        capacity as f64 / 1048576.0
    );
    let links = [
        (
            "steady (each connection at the same rate)",
            Link::Steady { rate },
        ),
        (
            "shared, single streams stalling 3 s",
            Link::Shared {
                rate: capacity,
                stall_every: 512 * 1024,
                stall: Duration::from_secs(3),
                max_stalled: (a.concurrency / 2).max(1),
            },
        ),
    ];
    let src_port = source();
    let mut rows = Vec::new();
    for (name, link) in links {
        let raw_proxy = Proxy::start(src_port, link);
        let link_time = raw_pipe(raw_proxy.port, &sizes, a.concurrency);
        drop(raw_proxy);
        let proxy = Proxy::start(server.port, link);
        let to = dir.path().join(format!("restored-{}", rows.len()));
        let restore_time = restore(&server, &proxy, "bench", &to, &a);
        assert_eq!(tree(&to), want, "the restore brought every file back");
        println!(
            "{name}: link {:.1}s, restore {:.1}s, {:.1} MiB crossed for {:.1} MiB, {} stalls, ratio {:.2}",
            link_time.as_secs_f64(),
            restore_time.as_secs_f64(),
            proxy.bytes_down() as f64 / 1048576.0,
            total as f64 / 1048576.0,
            proxy.stalls(),
            restore_time.as_secs_f64() / link_time.as_secs_f64()
        );
        rows.push((name, link_time, restore_time));
        std::fs::remove_dir_all(&to).unwrap();
    }
    println!("\nrestore time / the link's own time (same run, same bytes, same parallelism)");
    for (name, link, rest) in rows {
        println!(
            "  {:<44} {:>6.1}s {:>6.1}s  {:.2}",
            name,
            link.as_secs_f64(),
            rest.as_secs_f64(),
            rest.as_secs_f64() / link.as_secs_f64()
        );
    }
}
