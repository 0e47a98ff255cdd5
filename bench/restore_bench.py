#!/usr/bin/env python3
"""Restore benchmark: `sparkvisor checkpoint restore` vs `aws s3 sync`.

Same run, same local S3-compatible server (s3s-fs), same files: a
checkpoint of many small files and one of a few large state files. Each
case is seeded once per tool (sparkvisor's replica through the library,
a plain copy through `aws s3 sync`), then restored several times with the
two tools interleaved. Prints medians and the ratio; asserts nothing.

Usage (from the repository root; see bench/README.md):
    .venv/bin/python bench/restore_bench.py [--runs 5] [--small 5000] [--large 4x128]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
ACCESS, SECRET, BUCKET = "bench", "bench-secret", "bench"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def find_s3s_fs():
    for p in [os.environ.get("S3S_FS"), shutil.which("s3s-fs"), str(Path.home() / ".cargo/bin/s3s-fs")]:
        if p and Path(p).is_file():
            return p
    sys.exit("s3s-fs is missing: cargo install s3s-fs --version 0.14.1 --features binary --locked")


def find_aws():
    aws = VENV / "bin/aws"
    if not aws.exists():
        print("installing awscli into .venv (bench/requirements.txt)")
        sh([str(VENV / "bin/python"), "-m", "pip", "install", "-q", "-r", str(REPO / "bench/requirements.txt")])
    return str(aws)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root):
    port = free_port()
    (root / BUCKET).mkdir(parents=True)
    proc = subprocess.Popen(
        [find_s3s_fs(), "--host", "127.0.0.1", "--port", str(port),
         "--access-key", ACCESS, "--secret-key", SECRET, str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("s3s-fs did not start")


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_small(root, n_files):
    """A Structured Streaming layout of ~n_files files of 1-4 KiB, all
    distinct contents (so neither tool can skip duplicates)."""
    q = root / "q"
    write(q / "metadata", b'{"id":"bench"}\n')
    write(q / "sources/0/0", b"v1\n1700000000000")
    count, batch = 2, 0
    partitions = 48
    while count < n_files:
        write(q / f"offsets/{batch}", b"v1\n" + os.urandom(300).hex().encode())
        write(q / f"commits/{batch}", b"v1\n" + os.urandom(16).hex().encode())
        count += 2
        for p in range(partitions):
            if count >= n_files:
                break
            write(q / f"state/0/{p}/{batch + 1}.delta", os.urandom(1024 + (p * 61) % 3072))
            count += 1
        batch += 1
    return count


def make_large(root, n, mib):
    q = root / "q"
    write(q / "metadata", b'{"id":"bench-large"}\n')
    write(q / "offsets/0", b"v1\n{}")
    write(q / "commits/0", b"v1\n{}")
    for p in range(n):
        path = q / f"state/0/{p}/1.snapshot"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    return n + 3


def tree_size(d):
    files = [p for p in Path(d).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--small", type=int, default=5000, help="files in the small-file checkpoint")
    ap.add_argument("--large", default="4x128", help="COUNTxMiB of the large-file checkpoint")
    ap.add_argument("--concurrency", type=int, default=64, help="parallel requests, both tools (sparkvisor's default)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    print("building sparkvisor (release) ...", flush=True)
    sh(["cargo", "build", "--release", "-q", "--bin", "sparkvisor", "--example", "checkpoint_sync"], cwd=REPO)
    sparkvisor = REPO / "target/release/sparkvisor"
    seeder = REPO / "target/release/examples/checkpoint_sync"
    aws = find_aws()

    work = Path(tempfile.mkdtemp(prefix="sparkvisor-bench-", dir=args.workdir))
    server, endpoint = start_server(work / "s3")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    aws_cfg = work / "aws-config"
    aws_cfg.write_text(f"[default]\ns3 =\n  max_concurrent_requests = {args.concurrency}\n")
    env["AWS_CONFIG_FILE"] = str(aws_cfg)

    count, mib = (int(x) for x in args.large.split("x"))
    cases = [
        ("small", lambda d: make_small(d, args.small)),
        ("large", lambda d: make_large(d, count, mib)),
    ]
    results = {}
    try:
        for name, make in cases:
            src = work / f"src-{name}"
            n = make(src)
            files, size = tree_size(src)
            print(f"\ncase {name}: {files} files, {size / 2**20:.1f} MiB (generated {n})", flush=True)
            sh([str(seeder), "--dir", str(src), "--uri", f"s3://{BUCKET}/sv-{name}",
                "--endpoint", endpoint, "--concurrency", str(args.concurrency)],
               env=env, stdout=subprocess.DEVNULL)
            sh([aws, "s3", "sync", "--only-show-errors", "--endpoint-url", endpoint,
                str(src), f"s3://{BUCKET}/aws-{name}"], env=env)
            shutil.rmtree(src)

            def run_sparkvisor(dst):
                sh([str(sparkvisor), "checkpoint", "restore", "--from", f"s3://{BUCKET}/sv-{name}",
                    "--to", str(dst), "--set", f"checkpoint.s3.endpoint={endpoint}",
                    "--set", "checkpoint.s3.force_path_style=true",
                    "--set", f"checkpoint.s3.concurrency={args.concurrency}"],
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            def run_aws(dst):
                sh([aws, "s3", "sync", "--only-show-errors", "--endpoint-url", endpoint,
                    f"s3://{BUCKET}/aws-{name}", str(dst)], env=env)

            times = {"sparkvisor": [], "aws s3 sync": []}
            tools = [("sparkvisor", run_sparkvisor), ("aws s3 sync", run_aws)]
            for i in range(args.runs):
                order = tools if i % 2 == 0 else tools[::-1]
                for tool, fn in order:
                    dst = work / f"dst-{name}"
                    t0 = time.perf_counter()
                    fn(dst)
                    dt = time.perf_counter() - t0
                    got = tree_size(dst)
                    if got != (files, size):
                        sys.exit(f"{tool} restored {got}, expected {(files, size)}")
                    times[tool].append(dt)
                    shutil.rmtree(dst)
                print(f"  run {i + 1}: sparkvisor {times['sparkvisor'][-1]:.2f}s, "
                      f"aws s3 sync {times['aws s3 sync'][-1]:.2f}s", flush=True)
            results[name] = times
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nrestore time, median of {args.runs} interleaved runs "
          f"(same server, {args.concurrency} parallel requests each)")
    print(f"{'case':<8}{'sparkvisor':>12}{'aws s3 sync':>14}{'ratio':>8}")
    for name, t in results.items():
        sv, aw = statistics.median(t["sparkvisor"]), statistics.median(t["aws s3 sync"])
        print(f"{name:<8}{sv:>11.2f}s{aw:>13.2f}s{aw / sv:>7.1f}x")


if __name__ == "__main__":
    main()
