"""Records what Spark itself reports about a streaming query, from inside
the app: every new `query.lastProgress`, one JSON line per batch, appended
to a file (for the tests that compare sparkvisor's telemetry with it).

Usage (in an app):  import progress_log; progress_log.record(query, path)
"""

import json
import threading
import time


def _as_dict(progress):
    # pyspark 3.5 returns a dict; 4.x a dict-like StreamingQueryProgress.
    if isinstance(progress, dict):
        return json.loads(json.dumps(progress, default=str))
    return json.loads(progress.json)


def record(query, path, every=0.05):
    """Polls `query.lastProgress` every `every` seconds in a daemon thread."""

    def loop():
        last = None
        while True:
            try:
                p = query.lastProgress
            except Exception:
                return
            if p is not None:
                d = _as_dict(p)
                key = (d.get("runId"), d.get("batchId"))
                if key != last:
                    last = key
                    with open(path, "a") as f:
                        f.write(json.dumps(d) + "\n")
            time.sleep(every)

    threading.Thread(target=loop, name="progress-log", daemon=True).start()
