#!/usr/bin/env python3
"""sparkvisor next to tini, measured in the same run.

1. Launch overhead: time from starting the supervisor to the first
   instruction of the child (a bash script printing $EPOCHREALTIME), minus
   the same for starting the child directly. Runs are interleaved.
2. Resident memory and CPU time of the supervisor itself while it
   supervises an idle child for --idle-seconds.

Usage: bench/supervisor.py [--runs 30] [--idle-seconds 60]
Needs: the release binary (built if missing) and tini (apt-get install tini).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SV = os.path.join(ROOT, "target", "release", "sparkvisor")
TICK = os.sysconf("SC_CLK_TCK")


def ensure_tools():
    if not os.path.exists(SV):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if not shutil.which("tini"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "tini"], check=True)


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def setup(tmp, script):
    """A script-as-spark-submit home and a sparkvisor config using it."""
    home = os.path.join(tmp, "home")
    write(os.path.join(home, "bin", "spark-submit"), script, 0o755)
    app = os.path.join(tmp, "app.py")
    write(app, "# unused\n")
    cfg = os.path.join(tmp, "sv.toml")
    write(cfg, f"""
[spark]
home = "{home}"
app = "{app}"
[supervisor]
runtime_dir = "{tmp}/run"
exit_linger = "0s"
[probes]
listen = "127.0.0.1:0"
""")
    return os.path.join(home, "bin", "spark-submit"), cfg


def launch_overhead(runs):
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    out = os.path.join(tmp, "t")
    script = f'#!/bin/bash\necho "$EPOCHREALTIME" > {out}\n'
    child, cfg = setup(tmp, script)
    variants = {
        "direct": [child],
        "tini": ["tini", "-s", "--", child],
        "sparkvisor": [SV, "run", "--config", cfg],
    }
    results = {k: [] for k in variants}
    for _ in range(runs):
        for name, argv in variants.items():
            if os.path.exists(out):
                os.remove(out)
            t0 = time.time()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            with open(out) as f:
                t1 = float(f.read().strip())
            results[name].append((t1 - t0) * 1000.0)
    shutil.rmtree(tmp)
    return {k: statistics.median(v) for k, v in results.items()}


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    rss_kib = int(status["VmRSS"].split()[0])
    hwm_kib = int(status["VmHWM"].split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_ms = (int(fields[11]) + int(fields[12])) * 1000.0 / TICK
    return rss_kib, hwm_kib, cpu_ms


def idle(seconds):
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    child, cfg = setup(tmp, "#!/bin/sh\nexec sleep 100000\n")
    procs = {
        "tini": subprocess.Popen(["tini", "-s", "--", child]),
        "sparkvisor": subprocess.Popen([SV, "run", "--config", cfg], stderr=subprocess.DEVNULL),
    }
    time.sleep(seconds)  # the measured period itself, not synchronisation
    stats = {k: proc_stats(p.pid) for k, p in procs.items()}
    for p in procs.values():
        p.terminate()
        p.wait()
    shutil.rmtree(tmp)
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--idle-seconds", type=int, default=60)
    args = ap.parse_args()
    ensure_tools()

    lo = launch_overhead(args.runs)
    print(f"launch: supervisor start -> child's first instruction, median of {args.runs} interleaved runs")
    for k, v in lo.items():
        extra = "" if k == "direct" else f"  (+{v - lo['direct']:.2f} ms over direct)"
        print(f"  {k:<11} {v:7.2f} ms{extra}")
    d_tini = lo["tini"] - lo["direct"]
    d_sv = lo["sparkvisor"] - lo["direct"]
    print(f"  sparkvisor overhead - tini overhead = {d_sv - d_tini:.2f} ms")

    st = idle(args.idle_seconds)
    print(f"idle: supervising `sleep` for {args.idle_seconds} s")
    for k, (rss, hwm, cpu) in st.items():
        print(f"  {k:<11} RSS {rss / 1024:6.2f} MiB (peak {hwm / 1024:6.2f} MiB)  CPU {cpu:7.1f} ms")
    r = st["sparkvisor"][0] / max(st["tini"][0], 1)
    print(f"  RSS ratio sparkvisor/tini = {r:.1f}x   (target: sparkvisor under 15 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
