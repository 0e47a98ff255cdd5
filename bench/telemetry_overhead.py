#!/usr/bin/env python3
"""Throughput cost of sparkvisor's query telemetry: Spark writing its event
log (which the telemetry reads) plus sparkvisor following it, against the
same app with `[telemetry] enabled = false` (no event log), in the same run.

The workload (bench/throughput_stream.py) runs micro-batches back to back,
so its throughput is what Spark can do on this machine. Each run starts
sparkvisor, skips the first --warmup seconds, then measures for --seconds:

  rows/s     rows of the batches that ran in the window / the time they took
             (Spark's own trigger timestamps and batch durations, from
             query.lastProgress inside the app)
  cpu/batch  CPU seconds of sparkvisor and everything under it, per batch
  sv cpu     CPU seconds of sparkvisor itself in the window

Runs are interleaved (on, off, off, on, ...) so load drifts hit both alike;
prints each run, the medians and on/off ratios. Nothing is asserted.

Usage: bench/telemetry_overhead.py [--runs 4] [--seconds 60] [--warmup 20] [--rows 20000] [--debug]
Needs: Java, .venv with pyspark (`make test` sets both up); builds the release
binary first (--debug: uses target/debug/sparkvisor as it is, which only
makes sparkvisor's own share look larger). Holds /tmp/sparkvisor-spark.lock
throughout.
"""

import argparse
import calendar
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SV = os.path.join(ROOT, "target", "release", "sparkvisor")
SV_DEBUG = os.path.join(ROOT, "target", "debug", "sparkvisor")
PY = os.path.join(ROOT, ".venv", "bin", "python")
TICK = os.sysconf("SC_CLK_TCK")


def spark_home():
    homes = glob.glob(os.path.join(ROOT, ".venv", "lib", "python*", "site-packages", "pyspark"))
    if not homes or not os.path.exists(os.path.join(homes[0], "bin", "spark-submit")):
        sys.exit("pyspark is missing: run `make test` first (it creates .venv with pyspark)")
    return homes[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tree(pid):
    """pid and its live descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def cpu(pids):
    total = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def progress(log):
    try:
        with open(log) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def ts(p):
    """A batch's trigger time (`2026-12-01T10:34:49.123Z`) in Unix seconds."""
    t = p["timestamp"]
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + int(t[20:23]) / 1000.0


def one_run(name, telemetry, args):
    d = tempfile.mkdtemp(prefix=f"sv-telemetry-{name}-")
    port = free_port()
    log = os.path.join(d, "progress.jsonl")
    cfg = os.path.join(d, "sv.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[spark]
home = "{spark_home()}"
app = "{ROOT}/bench/throughput_stream.py"
[spark.conf]
"spark.sql.shuffle.partitions" = 4
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{PY}"
ROWS_PER_BATCH = "{args.rows}"
PROGRESS_LOG = "{log}"
[supervisor]
runtime_dir = "{d}/run"
exit_linger = "0s"
[checkpoint]
dir = "{d}/data/checkpoint"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{free_port()}"
[telemetry]
enabled = {"true" if telemetry else "false"}
[jvm]
cds = "off"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKVISOR_")}
    with open(os.path.join(d, "sv.log"), "ab") as out:
        p = subprocess.Popen([args.binary, "run", "--config", cfg], stdout=out, stderr=out, env=env)
    try:
        end = time.monotonic() + 300
        while len(progress(log)) < 3:
            if time.monotonic() > end or p.poll() is not None:
                raise SystemExit(f"{name}: no progress; see {d}/sv.log")
            time.sleep(0.2)
        time.sleep(args.warmup)
        before = len(progress(log))
        c0, s0 = cpu(tree(p.pid)), cpu([p.pid])
        time.sleep(args.seconds)
        c1, s1 = cpu(tree(p.pid)), cpu([p.pid])
        batches = progress(log)[before:]
        # Batches that started and ended inside the window.
        done = batches[:-1] if len(batches) > 1 else batches
        span = ts(done[-1]) + done[-1]["batchDuration"] / 1000.0 - ts(done[0])
        rows = sum(b["numInputRows"] for b in done)
        events = sum(os.path.getsize(f) for f in glob.glob(f"{d}/data/eventlog/*/*"))
        return {
            "rows_per_s": rows / span,
            "cpu_per_batch": (c1 - c0) / max(1, len(batches)),
            "sv_cpu": s1 - s0,
            "batches": len(batches),
            "eventlog_mib": events / 2**20,
        }
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--debug", action="store_true", help="use target/debug/sparkvisor (no release build)")
    args = ap.parse_args()
    if args.debug:
        args.binary = SV_DEBUG
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        args.binary = SV
    print(f"sparkvisor: {args.binary}")
    lock = open("/tmp/sparkvisor-spark.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    results = {"on": [], "off": []}
    for i in range(args.runs):
        order = [("on", True), ("off", False)] if i % 2 == 0 else [("off", False), ("on", True)]
        for name, telemetry in order:
            r = one_run(name, telemetry, args)
            results[name].append(r)
            print(f"  run {i + 1} {name:<3} {r['rows_per_s']:9.0f} rows/s  {r['cpu_per_batch']:.3f} cpu-s/batch  "
                  f"sparkvisor {r['sv_cpu']:.2f} cpu-s  {r['batches']} batches  event log {r['eventlog_mib']:.1f} MiB",
                  flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(f"median of {args.runs} interleaved runs, {args.seconds:.0f} s each, {args.rows} rows per batch")
    for k in ("off", "on"):
        m = med[k]
        print(f"  telemetry {k:<3} {m['rows_per_s']:9.0f} rows/s  {m['cpu_per_batch']:.3f} cpu-s/batch  sparkvisor {m['sv_cpu']:.2f} cpu-s")
    ratio = med["on"]["rows_per_s"] / med["off"]["rows_per_s"]
    print(f"  throughput on/off = {ratio:.3f}   (overhead {100 * (1 - ratio):.1f}%, target <= 3%)")
    print(f"  cpu per batch on/off = {med['on']['cpu_per_batch'] / med['off']['cpu_per_batch']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
