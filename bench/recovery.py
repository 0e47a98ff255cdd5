#!/usr/bin/env python3
"""Recovery time out of the box: sparkvisor with its defaults next to the
bash restart loop around spark-submit that users run today.

Recovery = SIGKILL of the driver JVM -> the next committed batch of the
example streaming job (examples/rate_stream.py: the rate source into
Parquet, 1 s trigger, the env and conf of bench/cds_recovery.py), that is a
new file commits/N in the query's checkpoint folder with N above every batch
committed before the kill. Two ways of running the same job, each session in
a fresh temp dir (checkpoint, output, logs) laid out alike:

  loop        bash -c 'while true; do "$SPARK_HOME/bin/spark-submit"
                --master "local[2]" --conf spark.sql.shuffle.partitions=2
                --conf spark.ui.showConsoleProgress=false ... app.py;
                sleep 1; done'
              a child process in its own process group, with the env the
              app gets from sparkvisor (SPARKVISOR_CHECKPOINT_DIR,
              PYSPARK_PYTHON, OUTPUT_DIR, TRIGGER_SECONDS)
  sparkvisor  target/release/sparkvisor run --config <generated TOML> with
              the default supervision (restart on failure; an attempt that
              committed a batch is restarted at once) and the default CDS
              (jvm.cds = "auto", the archive beside the checkpoint dir). The
              TOML sets only the app, its env and conf, checkpoint.dir, the
              two ports and supervisor.runtime_dir; the sizing (local[N,F],
              the heap) is sparkvisor's own too, and printed.

Procedure: per round one session of each, alternating which goes first so
load drifts hit both alike. A session starts from an empty checkpoint and
waits for 2 committed batches (warm-up). sparkvisor's session then waits
until its first attempt is done with its CDS archive (/status
jvm.attempt.dump "written", or a failure, or CDS off; printed), so that the
timed kills measure the warm restarts users get in steady state. Then
--kills times: wait for a batch committed since the previous restart, and
1 s more after it (at least: reading /status after a sparkvisor recovery
may take longer), so the kill lands while a batch runs; find the
driver JVM (the `java` descendant running org.apache.spark.deploy.SparkSubmit),
SIGKILL it and time until the next commit. After 300 s without one the kill
counts as a failure (printed) and ends the session. After each sparkvisor
recovery the bench also reads /status last_recovery: sparkvisor's own
measure, from the failed attempt's end, with its phases (cleaned_up,
submitted, spark_api_up, first_commit; spark_api_up comes from the Spark
REST API polled every probes.poll_interval, 2 s by default). At the end of a
session sparkvisor gets SIGTERM (SIGKILL after 60 s); the loop's process
group gets SIGKILL.

Prints every recovery as it is measured, then per configuration the median,
min and max, the ratio of the medians sparkvisor/loop and the phases of the
sparkvisor recovery nearest its median. Nothing is asserted.

Usage: bench/recovery.py [--kills 5] [--rounds 1] [--no-build] [--keep]
Needs: Java, .venv with pyspark (`make test` sets both up), the release
binary (built first with `cargo build --release` unless --no-build). Holds
/tmp/sparkvisor-spark.lock throughout.
"""

import argparse
import fcntl
import glob
import http.client
import json
import os
import shlex
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
APP = os.path.join(ROOT, "examples", "rate_stream.py")
LOCK = "/tmp/sparkvisor-spark.lock"
DEADLINE = 300.0  # for a recovery, and for any other wait of a session
SETTLE = 1.0  # after a commit, before the kill: the next batch is running
STOP_WAIT = 60.0  # SIGTERM -> exit of sparkvisor, then SIGKILL
# /status jvm.attempt.dump while the first attempt's archive is on its way.
DUMP_PENDING = ("", "none", "waiting-for-first-commit", "linking", "dumping")


class GaveUp(Exception):
    pass


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


def wait(what, f, timeout=DEADLINE, every=0.02, proc=None):
    """f()'s first truthy value; GaveUp after `timeout` or when `proc` exits."""
    end = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise GaveUp(f"{what}: the process exited ({proc.returncode})")
        if time.monotonic() > end:
            raise GaveUp(f"{what}: nothing after {timeout:.0f} s")
        time.sleep(every)


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.load(r)
    except (OSError, ValueError, http.client.HTTPException):
        return None


def last_commit(query):
    try:
        ids = [int(n) for n in os.listdir(os.path.join(query, "commits")) if n.isdigit()]
    except FileNotFoundError:
        return None
    return max(ids) if ids else None


def newer(query, than):
    """The last committed batch if it is above `than`."""
    c = last_commit(query)
    return c if c is not None and c > than else None


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def descendants(pid):
    stack, seen = [pid], []
    while stack:
        for c in children(stack.pop()):
            stack.append(c)
            seen.append(c)
    return seen


def driver_jvm(root):
    """The driver JVM under `root`: java running SparkSubmit (not the launcher)."""
    for p in descendants(root):
        try:
            with open(f"/proc/{p}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{p}/cmdline") as f:
                argv = f.read().split("\0")
        except OSError:
            continue
        if (comm == "java" and "org.apache.spark.deploy.SparkSubmit" in argv
                and "org.apache.spark.launcher.Main" not in argv):
            return p
    return None


def kill_all(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fmt(v):
    return "     -" if v is None else f"{v:6.2f}"


class Session:
    """One run of the job from an empty checkpoint, in its own temp dir."""

    name = ""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"sv-recovery-{self.name}-")
        self.ckpt = os.path.join(self.dir, "data", "checkpoint")
        self.query = os.path.join(self.ckpt, "rate")
        self.output = os.path.join(self.dir, "output")
        self.ui_port = free_port()
        self.log = os.path.join(self.dir, f"{self.name}.log")

    def env(self):
        return {k: v for k, v in os.environ.items() if not k.startswith("SPARKVISOR_")}

    def ready(self, proc):
        """After the warm-up: what the timed kills wait for (a note to print)."""
        return None

    def recovered(self, kill_unix):
        """After a recovery: sparkvisor's own account of it, if any."""
        return None


class Loop(Session):
    name = "loop"

    def start(self):
        submit = ('"$SPARK_HOME/bin/spark-submit" --master "local[2]"'
                  " --conf spark.sql.shuffle.partitions=2"
                  " --conf spark.ui.showConsoleProgress=false"
                  f" --conf spark.ui.port={self.ui_port} {shlex.quote(APP)}")
        script = f"while true; do {submit}; sleep 1; done"
        env = self.env()
        env.update(
            SPARK_HOME=spark_home(),
            SPARKVISOR_CHECKPOINT_DIR=self.ckpt,
            PYSPARK_PYTHON=PY,
            OUTPUT_DIR=self.output,
            TRIGGER_SECONDS="1",
        )
        log = open(self.log, "ab")
        return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=log, env=env,
                                start_new_session=True)

    def stop(self, p):
        rest = descendants(p.pid)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_all(rest)  # any that left the group
        p.wait()


class Sparkvisor(Session):
    name = "sparkvisor"

    def __init__(self):
        super().__init__()
        self.port = free_port()
        self.config = os.path.join(self.dir, "sv.toml")
        q = json.dumps  # a JSON string is a TOML basic string
        with open(self.config, "w") as f:
            f.write(f"""
[spark]
home = {q(spark_home())}
app = {q(APP)}
[spark.conf]
"spark.sql.shuffle.partitions" = 2
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = {q(PY)}
OUTPUT_DIR = {q(self.output)}
TRIGGER_SECONDS = "1"
[supervisor]
runtime_dir = {q(os.path.join(self.dir, "run"))}
[checkpoint]
dir = {q(self.ckpt)}
[probes]
listen = "127.0.0.1:{self.port}"
spark_ui = "http://127.0.0.1:{self.ui_port}"
""")

    def start(self):
        log = open(self.log, "ab")
        return subprocess.Popen([SV, "run", "--config", self.config], stdout=log, stderr=log,
                                env=self.env())

    def stop(self, p):
        rest = descendants(p.pid)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            print(f"  sparkvisor: no exit {STOP_WAIT:.0f} s after SIGTERM: SIGKILL", flush=True)
            rest = set(rest) | set(descendants(p.pid))
            p.kill()
            p.wait()
            kill_all(rest)

    def ready(self, proc):
        def done():
            st = status(self.port)
            jvm = (st or {}).get("jvm")
            if not isinstance(jvm, dict):
                return None
            att = jvm.get("attempt") or {}
            dump = att.get("dump") or ""
            if jvm.get("strategy") is None:
                return st, f"CDS off (strategy null): {jvm.get('reason')}"
            if dump == "written":
                return st, "written"
            if dump == "none" and (jvm.get("archive_present") or jvm.get("strategy") == "auto-create"):
                return st, "none"  # an archive there already, or the JVM writes it itself at exit
            if dump not in DUMP_PENDING:
                return st, dump  # failed: ..., skipped: ..., at-exit (written only at a graceful stop)
            return None

        st, how = wait("sparkvisor: the CDS archive of the first attempt", done, every=0.2, proc=proc)
        jvm = st["jvm"]
        size = jvm.get("archive_bytes")
        size = f", {size / 2**20:.0f} MiB" if isinstance(size, (int, float)) else ""
        note = (f"CDS strategy {jvm.get('strategy')}, attempt {(jvm.get('attempt') or {}).get('attempt')}"
                f" dump: {how}; archive present: {jvm.get('archive_present')}{size}")
        sz = st.get("sizing") or {}
        if isinstance(sz, dict) and sz.get("local_threads"):
            heap = sz.get("driver_memory_bytes")
            heap = f"{heap / 2**20:.0f} MiB" if isinstance(heap, (int, float)) else "?"
            note += (f"\n  sparkvisor sizing: {sz['local_threads']} local threads, driver memory {heap}"
                     " (the loop: local[2], Spark's default 1g)")
        return note

    def recovered(self, kill_unix):
        def fresh():
            r = (status(self.port) or {}).get("last_recovery")
            if isinstance(r, dict) and (r.get("failed_at_unix") or 0) >= kill_unix - 1.0:
                return r
            return None

        try:
            return wait("sparkvisor: /status last_recovery", fresh, timeout=30, every=0.2)
        except GaveUp:
            return None


def phases_line(rec):
    return ", ".join(f"{m.get('phase')} {m.get('at_seconds', 0):.1f}" for m in rec.get("phases") or []
                     if m.get("phase") != "failed")


def session(s, kills, times, recs, failures):
    print(f"{s.name}: session in {s.dir}", flush=True)
    p = s.start()
    try:
        wait(f"{s.name}: two batches (warm-up)", lambda: newer(s.query, 0), every=0.2, proc=p)
        note = s.ready(p)
        if note:
            print(f"  {s.name}: {note}", flush=True)
        base = last_commit(s.query)
        wait(f"{s.name}: a batch after the warm-up", lambda: newer(s.query, base), every=0.05, proc=p)
        committed = time.monotonic()
        for k in range(1, kills + 1):
            time.sleep(max(0.0, committed + SETTLE - time.monotonic()))
            jvm = wait(f"{s.name}: the driver JVM", lambda: driver_jvm(p.pid), proc=p)
            before = last_commit(s.query)
            kill_unix = time.time()
            t0 = time.monotonic()
            os.kill(jvm, signal.SIGKILL)
            try:
                wait(f"{s.name}: the batch after kill {k}", lambda: newer(s.query, before), proc=p)
            except GaveUp as e:
                failures[s.name].append(str(e))
                print(f"  {s.name:<10} kill {k}/{kills}  FAILED: {e}; ending the session", flush=True)
                return
            committed = time.monotonic()
            t = committed - t0
            times[s.name].append(t)
            line = f"  {s.name:<10} kill {k}/{kills}  {t:6.2f} s"
            rec = s.recovered(kill_unix)
            if rec is not None:
                recs.append((t, rec))
                line += f"   sparkvisor: {rec.get('seconds', 0):.2f} s ({phases_line(rec)})"
                if (rec.get("attempts") or 1) > 1:
                    line += f"; {rec['attempts']} attempts"
            elif isinstance(s, Sparkvisor):
                line += "   sparkvisor: no last_recovery in /status"
            print(line, flush=True)
    except GaveUp as e:
        failures[s.name].append(str(e))
        print(f"  {s.name}: FAILED: {e}; ending the session (log: {s.log})", flush=True)
    finally:
        s.stop(p)


def report(args, times, recs, failures):
    print()
    print(f"recovery (kill -9 of the driver JVM -> next committed batch), {args.rounds} round(s) "
          f"of {args.kills} kills per configuration, interleaved")
    print(f"  {'config':<10} {'n':>3} {'failed':>6}  {'median':>6}  {'min':>6}  {'max':>6}")
    med = {}
    for name in ("loop", "sparkvisor"):
        v = times[name]
        med[name] = statistics.median(v) if v else None
        print(f"  {name:<10} {len(v):>3} {len(failures[name]):>6}  {fmt(med[name])}  "
              f"{fmt(min(v) if v else None)}  {fmt(max(v) if v else None)}   (s)")
    if med["loop"] and med["sparkvisor"] is not None:
        print(f"  ratio sparkvisor/loop (medians) = {med['sparkvisor'] / med['loop']:.2f}")
    for name in ("loop", "sparkvisor"):
        for f in failures[name]:
            print(f"  {name} failure: {f}")
    if recs:
        recs = sorted(recs, key=lambda r: r[0])
        t, rec = recs[(len(recs) - 1) // 2]
        print()
        print(f"phases of a typical sparkvisor recovery (the one nearest the median: {t:.2f} s here, "
              f"{rec.get('seconds', 0):.2f} s by sparkvisor from the failed attempt's end, "
              f"{rec.get('class')}, attempts {rec.get('attempts')}):")
        prev = 0.0
        for m in rec.get("phases") or []:
            at = m.get("at_seconds") or 0.0
            print(f"  {m.get('phase', '?'):<14} {at:6.2f} s   +{at - prev:5.2f} s")
            prev = at
    elif times["sparkvisor"]:
        print("\nsparkvisor's /status showed no last_recovery")


def main():
    ap = argparse.ArgumentParser(
        description="Recovery (kill -9 of the driver JVM -> next committed batch): sparkvisor's "
                    "defaults next to a bash restart loop around spark-submit, interleaved.")
    ap.add_argument("--kills", type=int, default=5, help="timed kills per session (default 5)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of one session per configuration, alternating the order (default 1)")
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/sparkvisor as it is (no cargo build --release)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (printed at the end)")
    args = ap.parse_args()
    if args.kills < 1 or args.rounds < 1:
        ap.error("--kills and --rounds must be at least 1")
    spark_home()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if not os.access(SV, os.X_OK):
        sys.exit(f"{SV} is missing: build it (cargo build --release) or drop --no-build")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so sessions are stopped
    lock = open(LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {LOCK} (another Spark run holds it)", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)

    print(f"{args.kills} kills per session, {args.rounds} round(s); a kill {SETTLE:.0f} s after a "
          f"commit; loop restarts after `sleep 1`, sparkvisor with its defaults", flush=True)
    times = {"loop": [], "sparkvisor": []}
    failures = {"loop": [], "sparkvisor": []}
    recs, dirs = [], []
    try:
        for r in range(args.rounds):
            order = (Loop, Sparkvisor) if r % 2 == 0 else (Sparkvisor, Loop)
            for kind in order:
                s = kind()
                dirs.append(s.dir)
                session(s, args.kills, times, recs, failures)
    finally:
        if args.keep:
            print("kept: " + " ".join(dirs))
        else:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
    report(args, times, recs, failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
