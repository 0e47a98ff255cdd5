#!/usr/bin/env python3
"""Duplicates in a non-idempotent sink across graceful stops: sparkvisor
(which drains) next to a plain `tini` + `spark-submit` entrypoint, in the
same run.

The workload is examples/foreach_batch_stream.py: one input file per
micro-batch, `foreachBatch` appends every row's id to a file with no
batch-id deduplication, then works WORK seconds before the batch commits;
trigger TRIGGER seconds. Each side gets its own input copy, checkpoint and
sink. For --terms rounds, alternating sides, the entrypoint is started on
the same checkpoint (the pod's way after a stop), given a random moment
(uniform over one trigger interval, once the stream has planned a batch in
this run) and sent SIGTERM; then each side runs to the end of its input
and is stopped once more. Prints, per side, the rows written, the distinct
ids, the duplicates and (sparkvisor) the drain times. Nothing is asserted.

Usage: bench/drain.py [--terms 10] [--files 16] [--seed N]
Needs: Java, .venv with pyspark (`make test` sets both up), tini (installed
through apt-get when missing), the release binary (built first). Holds
/tmp/sparkvisor-spark.lock throughout.
"""

import argparse
import fcntl
import glob
import os
import random
import re
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
PY = os.path.join(ROOT, ".venv", "bin", "python")
APP = os.path.join(ROOT, "examples", "foreach_batch_stream.py")
WORK, TRIGGER, IDS = 2, 4, 25
DEADLINE = 600.0


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


def wait(what, f, timeout=DEADLINE, every=0.05):
    end = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def numbered(d):
    try:
        return sorted(int(n) for n in os.listdir(d) if n.isdigit())
    except FileNotFoundError:
        return []


class Side:
    def __init__(self, name, files):
        self.name = name
        self.files = files
        self.dir = tempfile.mkdtemp(prefix=f"sv-drain-{name}-")
        self.input = os.path.join(self.dir, "input")
        os.makedirs(self.input)
        for f in range(files):
            with open(os.path.join(self.input, f"part-{f:03}.json"), "w") as out:
                for i in range(IDS):
                    out.write(f'{{"id":{f * IDS + i},"file":{f}}}\n')
        self.sink = os.path.join(self.dir, "sink.txt")
        self.ckpt = os.path.join(self.dir, "checkpoint")
        self.query = os.path.join(self.ckpt, "sink")
        self.log = os.path.join(self.dir, "entrypoint.log")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKVISOR_")}
        self.env.update(
            SPARK_HOME=spark_home(),
            PYSPARK_PYTHON=PY,
            SPARKVISOR_CHECKPOINT_DIR=self.ckpt,
            INPUT_DIR=self.input,
            SINK_FILE=self.sink,
            WORK_SECONDS=str(WORK),
            TRIGGER_SECONDS=str(TRIGGER),
        )

    def planned(self):
        return numbered(os.path.join(self.query, "offsets"))

    def committed(self):
        return numbered(os.path.join(self.query, "commits"))

    def done(self):
        c = self.committed()
        return bool(c) and c[-1] >= self.files - 1

    def ids(self):
        try:
            with open(self.sink) as f:
                return [int(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []


class Sparkvisor(Side):
    def __init__(self, files):
        super().__init__("sparkvisor", files)
        self.port = free_port()
        self.config = os.path.join(self.dir, "sv.toml")
        with open(self.config, "w") as f:
            f.write(f"""
[spark]
home = "{spark_home()}"
app = "{APP}"
[spark.conf]
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{PY}"
INPUT_DIR = "{self.input}"
SINK_FILE = "{self.sink}"
WORK_SECONDS = "{WORK}"
TRIGGER_SECONDS = "{TRIGGER}"
[sizing]
memory = "3GiB"
[supervisor]
runtime_dir = "{self.dir}/run"
exit_linger = "0s"
stop_grace = "60s"
[checkpoint]
dir = "{self.ckpt}"
[probes]
listen = "127.0.0.1:{self.port}"
spark_ui = "http://127.0.0.1:{free_port()}"
""")

    def start(self):
        log = open(self.log, "ab")
        return subprocess.Popen([SV, "run", "--config", self.config], stdout=log, stderr=log, env=self.env)

    def drains(self):
        with open(self.log, errors="replace") as f:
            return [int(m.group(1)) for m in re.finditer(r"drained.*?took_ms=(\d+)", f.read())]


class Tini(Side):
    def __init__(self, files):
        super().__init__("tini", files)

    def start(self):
        log = open(self.log, "ab")
        submit = os.path.join(spark_home(), "bin", "spark-submit")
        argv = ["tini", "-s", "--", submit, "--master", "local[2,3]", "--driver-memory", "1g",
                "--conf", "spark.ui.showConsoleProgress=false", APP]
        return subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)


def term_round(side, rng):
    p = side.start()
    before = len(side.planned())
    wait(f"{side.name}: a batch planned", lambda: len(side.planned()) > before or side.done(), every=0.1)
    time.sleep(rng.uniform(0, TRIGGER))
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=DEADLINE)


def finish(side):
    p = side.start()
    wait(f"{side.name}: the end of the input", side.done, every=0.2)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=DEADLINE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--terms", type=int, default=10)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    if not shutil.which("tini"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "tini"], check=True)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    lock = open("/tmp/sparkvisor-spark.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    sides = [Sparkvisor(args.files), Tini(args.files)]
    print(f"seed {seed}; {args.terms} TERMs per side; {args.files} batches of {IDS} rows; "
          f"batch work {WORK}s after the rows are written; trigger {TRIGGER}s")
    for r in range(args.terms):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            if not side.done():
                term_round(side, rng)
        print(f"  round {r + 1}: " + ", ".join(
            f"{s.name} rows {len(s.ids())} distinct {len(set(s.ids()))}" for s in sides), flush=True)
    for side in sides:
        finish(side)
    print()
    print(f"{'entrypoint':<12} {'rows':>6} {'distinct':>9} {'duplicates':>11} {'missing':>8}")
    for s in sides:
        ids = s.ids()
        expected = s.files * IDS
        missing = expected - len(set(ids) & set(range(expected)))
        print(f"{s.name:<12} {len(ids):>6} {len(set(ids)):>9} {len(ids) - len(set(ids)):>11} {missing:>8}")
    d = sides[0].drains()
    if d:
        print(f"\nsparkvisor drains: {len(d)}, median {statistics.median(d) / 1000:.2f} s, "
              f"max {max(d) / 1000:.2f} s")
    for s in sides:
        shutil.rmtree(s.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
