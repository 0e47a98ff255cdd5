"""Verifier for exactly_once_stream.py.

Reads the sink with Spark's batch reader, which honours the sink's
`_spark_metadata` log (only files of committed batches count), and the input
files, then checks that every input id is in the output exactly once.

Prints one JSON line {"expected", "rows", "distinct", "missing", "duplicated",
"ok"} (missing/duplicated: up to 20 example ids) and exits 0 when ok, 1 when
not, 2 when the sink has no `_spark_metadata` log (not a streaming file sink).

Usage: spark-submit exactly_once_verify.py INPUT_DIR OUTPUT_DIR
"""

import json
import os
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

if len(sys.argv) != 3:
    sys.exit("usage: exactly_once_verify.py INPUT_DIR OUTPUT_DIR")
input_dir, output_dir = sys.argv[1], sys.argv[2]
if not os.path.isdir(os.path.join(output_dir, "_spark_metadata")):
    print(json.dumps({"ok": False, "error": f"{output_dir} has no _spark_metadata log"}))
    sys.exit(2)

spark = SparkSession.builder.appName("exactly-once-verify").getOrCreate()
spark.sparkContext.setLogLevel("WARN")

expected = {r.id for r in spark.read.schema("id LONG, file INT").json(input_dir).select("id").distinct().collect()}
counts = {r.id: r["count"] for r in spark.read.parquet(output_dir).groupBy("id").count().collect()}

missing = sorted(expected - counts.keys())
duplicated = sorted(i for i, c in counts.items() if c > 1)
unexpected = sorted(counts.keys() - expected)
report = {
    "expected": len(expected),
    "rows": sum(counts.values()),
    "distinct": len(counts),
    "missing": missing[:20],
    "duplicated": duplicated[:20],
    "unexpected": unexpected[:20],
    "ok": not missing and not duplicated and not unexpected and len(expected) > 0,
}
print(json.dumps(report))
spark.stop()
sys.exit(0 if report["ok"] else 1)
