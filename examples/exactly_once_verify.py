"""Verifier for exactly_once_stream.py.

Reads the sink with Spark's batch reader, which honours the sink's
`_spark_metadata` log (only files of committed batches count), and the input
files, then checks that every input id is in the output exactly once.

Prints one JSON line {"expected", "rows", "distinct", "missing", "duplicated",
"ok"} (missing/duplicated: up to 20 example ids) per INPUT_DIR OUTPUT_DIR
pair and exits 0 when all are ok, 1 when one is not, 2 when a sink has no
`_spark_metadata` log (not a streaming file sink). Several pairs share one
JVM. exactly_once_stream.py runs the same check in its own JVM with VERIFY=1.

Usage: spark-submit exactly_once_verify.py INPUT_DIR OUTPUT_DIR [INPUT_DIR OUTPUT_DIR ...]
"""

import json
import os
import sys


def verify(spark, input_dir, output_dir):
    """The verdict for one input folder and file sink (a dict, see above)."""
    if not os.path.isdir(os.path.join(output_dir, "_spark_metadata")):
        return {"ok": False, "error": f"{output_dir} has no _spark_metadata log"}
    expected = {r.id for r in spark.read.schema("id LONG, file INT").json(input_dir).select("id").distinct().collect()}
    counts = {r.id: r["count"] for r in spark.read.parquet(output_dir).groupBy("id").count().collect()}
    missing = sorted(expected - counts.keys())
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    unexpected = sorted(counts.keys() - expected)
    return {
        "expected": len(expected),
        "rows": sum(counts.values()),
        "distinct": len(counts),
        "missing": missing[:20],
        "duplicated": duplicated[:20],
        "unexpected": unexpected[:20],
        "ok": not missing and not duplicated and not unexpected and len(expected) > 0,
    }


def main():
    from pyspark.sql import SparkSession

    pairs = sys.argv[1:]
    if not pairs or len(pairs) % 2:
        sys.exit("usage: exactly_once_verify.py INPUT_DIR OUTPUT_DIR [INPUT_DIR OUTPUT_DIR ...]")
    spark = SparkSession.builder.appName("exactly-once-verify").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    code = 0
    for input_dir, output_dir in zip(pairs[::2], pairs[1::2]):
        report = verify(spark, input_dir, output_dir)
        print(json.dumps(report), flush=True)
        if "error" in report:
            code = max(code, 2)
        elif not report["ok"]:
            code = max(code, 1)
    spark.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
