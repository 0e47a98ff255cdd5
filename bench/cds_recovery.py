#!/usr/bin/env python3
"""Recovery time with and without the class-data-sharing archive.

Recovery = SIGKILL of the driver JVM -> the next committed batch of the
example streaming job (examples/rate_stream.py), with sparkvisor restarting
it in place. Three configurations:

  off   jvm.cds = "off"
  auto  jvm.cds = "auto", archive present: on Java 17+ written by the
        running driver after its first committed batch (a warm-up run)
  exit  jvm.cds = "auto" with attaching ruled out (-XX:+DisableAttachMechanism
        in spark.driver.extraJavaOptions), archive present: written by the
        JVM at a graceful stop of a warm-up run (-XX:ArchiveClassesAtExit)

On Java 17 a dump requested from a running JVM leaves out the classes that
were loaded but never linked (thousands in a Spark driver), while the dump
at exit links them first; sparkvisor has the running driver link them
before it asks (src/jvm/link.rs), so the two archives should come close.

Runs are interleaved (off, auto, auto, off, ...) so load drifts hit both
alike; each run starts sparkvisor, waits for the stream to commit two
batches, kills the JVM with SIGKILL and times the next commit. Prints each
run, the medians and the ratio auto/off. Nothing is asserted.

Usage: bench/cds_recovery.py [--runs 5]
Needs: Java, .venv with pyspark (`make test` sets both up), the release
binary (built first). Holds /tmp/sparkvisor-spark.lock throughout.
"""

import argparse
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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SV = os.path.join(ROOT, "target", "release", "sparkvisor")
PY = os.path.join(ROOT, ".venv", "bin", "python")
DEADLINE = 300.0


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


def wait(what, f, timeout=DEADLINE, every=0.02):
    end = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def last_commit(query):
    try:
        ids = [int(n) for n in os.listdir(os.path.join(query, "commits")) if n.isdigit()]
    except FileNotFoundError:
        return None
    return max(ids) if ids else None


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def driver_jvm(sv_pid):
    stack, seen = [sv_pid], []
    while stack:
        for c in children(stack.pop()):
            stack.append(c)
            seen.append(c)
    for p in seen:
        try:
            comm = open(f"/proc/{p}/comm").read().strip()
            argv = open(f"/proc/{p}/cmdline").read().split("\0")
        except OSError:
            continue
        if comm == "java" and "org.apache.spark.launcher.Main" not in argv:
            return p
    return None


class Config:
    def __init__(self, name, cds, java_options=None):
        self.dir = tempfile.mkdtemp(prefix=f"sv-cds-{name}-")
        self.name = name
        self.port = free_port()
        self.path = os.path.join(self.dir, "sv.toml")
        with open(self.path, "w") as f:
            f.write(f"""
[spark]
home = "{spark_home()}"
app = "{ROOT}/examples/rate_stream.py"
name = "cds-bench"
[spark.conf]
{f'"spark.driver.extraJavaOptions" = "{java_options}"' if java_options else ""}
"spark.sql.shuffle.partitions" = 2
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{PY}"
OUTPUT_DIR = "{self.dir}/output"
TRIGGER_SECONDS = "1"
[supervisor]
restart = "always"
backoff_initial = "100ms"
runtime_dir = "{self.dir}/run"
exit_linger = "0s"
[checkpoint]
dir = "{self.dir}/data/checkpoint"
[probes]
listen = "127.0.0.1:{self.port}"
spark_ui = "http://127.0.0.1:{free_port()}"
poll_interval = "500ms"
[jvm]
cds = "{cds}"
""")
        self.query = os.path.join(self.dir, "data", "checkpoint", "rate")

    def start(self):
        log = open(os.path.join(self.dir, "sv.log"), "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKVISOR_")}
        return subprocess.Popen([SV, "run", "--config", self.path], stdout=log, stderr=log, env=env)

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=DEADLINE)


def warm_up(cfg):
    """Runs the auto configuration until its archive exists."""
    p = cfg.start()
    st = wait("the archive", lambda: (s := status(cfg.port)) and (s.get("jvm") or {}).get("archive_present") and s)
    cfg.stop(p)
    return st["jvm"]["archive_bytes"]


def warm_up_at_exit(cfg):
    """Runs the exit configuration to two commits and stops it gracefully."""
    p = cfg.start()
    wait("two batches", lambda: (c := last_commit(cfg.query)) is not None and c >= 1, every=0.2)
    cfg.stop(p)
    p = cfg.start()
    st = wait("the archive", lambda: (s := status(cfg.port)) and (s.get("jvm") or {}).get("archive_present") and s)
    cfg.stop(p)
    return st["jvm"]["archive_bytes"]


def one_run(cfg):
    """kill -9 of the JVM -> next committed batch, in seconds."""
    p = cfg.start()
    start = last_commit(cfg.query)
    target = (start if start is not None else -1) + 2
    wait("two batches", lambda: (c := last_commit(cfg.query)) is not None and c >= target, every=0.2)
    jvm = wait("the driver JVM", lambda: driver_jvm(p.pid))
    before = last_commit(cfg.query)
    t0 = time.monotonic()
    os.kill(jvm, signal.SIGKILL)
    wait("the next batch", lambda: last_commit(cfg.query) > before)
    elapsed = time.monotonic() - t0
    st = status(cfg.port) or {}
    used = ((st.get("jvm") or {}).get("attempt") or {}).get("archive_used")
    cfg.stop(p)
    return elapsed, used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    lock = open("/tmp/sparkvisor-spark.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)

    off, auto = Config("off", "off"), Config("auto", "auto")
    exit_ = Config("exit", "auto", "-XX:+DisableAttachMechanism")
    print(f"archive written by the running driver: {warm_up(auto) / 2**20:.0f} MiB")
    print(f"archive written at a graceful stop:    {warm_up_at_exit(exit_) / 2**20:.0f} MiB")
    configs = [off, auto, exit_]
    times = {c.name: [] for c in configs}
    for i in range(args.runs):
        order = configs if i % 2 == 0 else configs[::-1]
        for cfg in order:
            t, used = one_run(cfg)
            times[cfg.name].append(t)
            print(f"  run {i + 1} {cfg.name:<4} {t:6.2f} s   archive used: {used}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"recovery (kill -9 of the JVM -> next committed batch), median of {args.runs} interleaved runs")
    for k in times:
        print(f"  {k:<5} {med[k]:6.2f} s")
    print(f"  ratio auto/off = {med['auto'] / med['off']:.2f}   (target <= 0.65)")
    print(f"  ratio exit/off = {med['exit'] / med['off']:.2f}")
    for c in configs:
        shutil.rmtree(c.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
