"""Three stateful queries in one checkpoint root, one per state store flavour.

The checkpoint fixtures of every supported Spark version are made with it
(tests/fixtures/checkpoints/generate.py), and the per-version tests resume
them and run it under sparkvisor across kills, repairs and restores. All
queries read the same file source (JSON lines `{"id", "file"}` from
exactly_once_gen.py: every id in two different files), `FILES_PER_TRIGGER`
files per micro-batch, and keep their sinks inside their own checkpoint
folder, so a copy of the checkpoint root carries sink and state together.

Queries (each checkpoints to $SPARKVISOR_CHECKPOINT_DIR/<name>):
  dedup   dropDuplicates(id) with the HDFS-backed state store -> Parquet file
          sink <root>/dedup/output (append).
  counts  count per key (id % 5) with RocksDB and changelog checkpointing,
          complete mode -> foreachBatch writing each batch's whole table to
          <root>/counts/output/batch=<id> (overwritten when a batch is
          replayed).
  tws     (Spark 4.0+) transformWithState counting rows per key in a
          ValueState, RocksDB with changelog checkpointing -> Parquet file
          sink <root>/tws/output (append): one (key, count) row per key and
          batch.
With Spark 4.0+ the RocksDB queries use state checkpoint format v2
(spark.sql.streaming.stateStore.checkpointFormatVersion = 2: state files
with unique ids, the ids in the commit log; the HDFS-backed store has no
v2). Where Spark has the offset log's v2 format (after 4.0), `dedup` uses
it (spark.sql.streaming.offsetLog.formatVersion = 2: `<source id>:<offset>`
lines).

VERIFY=1 (with AVAILABLE_NOW=1): once every query has consumed its input,
the app checks exactly-once results against the input in the same JVM and
prints one line `VERDICT {json}` (`"ok"` true or false); it still exits 0,
so a supervisor does not restart it: the line is the result. The checks:
  dedup   every input id exactly once;
  counts  the table of the newest committed batch holds, per key, the number
          of input rows with that key (a replayed or lost batch shows as a
          wrong count);
  tws     per key the largest count equals the number of input rows with
          that key, and no (key, count) row is there twice.

Environment:
  SPARKVISOR_CHECKPOINT_DIR  checkpoint root (required)
  INPUT_DIR                  input folder (required)
  FILES_PER_TRIGGER          files per micro-batch (default 1)
  AVAILABLE_NOW              "1": process what is there, then stop (default: run forever)
  VERIFY                     "1": check the results after AVAILABLE_NOW (see above)
  SHUFFLE_PARTITIONS         state store partitions, frozen in the checkpoint at the first run (default 2)
  TRIGGER_SECONDS            micro-batch interval without AVAILABLE_NOW (default 1)
  HANG_COUNTS_AT_BATCH       (fixture generation) `counts` hangs in its sink at this batch,
                             after the batch's state is written, once it has created HANG_MARKER
"""

import json
import os
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
input_dir = os.environ["INPUT_DIR"]
files_per_trigger = int(os.environ.get("FILES_PER_TRIGGER", "1"))
available_now = os.environ.get("AVAILABLE_NOW", "") == "1"
verify = os.environ.get("VERIFY", "") == "1"
partitions = os.environ.get("SHUFFLE_PARTITIONS", "2")
trigger_seconds = os.environ.get("TRIGGER_SECONDS", "1")
KEYS = 5

spark = (
    SparkSession.builder.appName("state-stores")
    .config("spark.sql.shuffle.partitions", partitions)
    .getOrCreate()
)
spark.sparkContext.setLogLevel("WARN")
major, minor = (int(p) for p in spark.version.split(".")[:2])
has_tws = major >= 4
has_format_v2 = major >= 4
# The offset log's v2 format (`<source id>:<offset>` lines) is new after 4.0.
OFFSET_LOG_FORMAT = "spark.sql.streaming.offsetLog.formatVersion"
has_offset_log_v2 = spark.conf.isModifiable(OFFSET_LOG_FORMAT)  # a known SQL conf

HDFS = "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"
ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def use_store(provider, format_v2=False, offset_log_v2=False):
    """Session confs for the next query start (each query keeps a copy of
    the session's confs from its start, and the checkpoint records them)."""
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", provider)
    if has_offset_log_v2:
        spark.conf.set(OFFSET_LOG_FORMAT, "2" if offset_log_v2 else "1")
    spark.conf.set("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
    if has_format_v2:
        spark.conf.set("spark.sql.streaming.stateStore.checkpointFormatVersion", "2" if format_v2 else "1")


def source():
    return (
        spark.readStream.schema("id LONG, file INT")
        .option("maxFilesPerTrigger", files_per_trigger)
        .json(input_dir)
    )


def start(writer, name):
    writer = writer.queryName(name).option("checkpointLocation", os.path.join(root, name))
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{trigger_seconds} seconds")
    return writer.start()


queries = []

use_store(HDFS, offset_log_v2=True)
queries.append(
    start(
        source().dropDuplicates(["id"]).writeStream.format("parquet")
        .option("path", os.path.join(root, "dedup", "output")).outputMode("append"),
        "dedup",
    )
)


hang_at = os.environ.get("HANG_COUNTS_AT_BATCH")


def write_counts(df, batch_id):
    df.coalesce(1).write.mode("overwrite").json(os.path.join(root, "counts", "output", f"batch={batch_id}"))
    if hang_at is not None and batch_id == int(hang_at):
        # The batch's state is written (its tasks ran); the commit is not.
        open(os.environ["HANG_MARKER"], "w").close()
        while True:
            time.sleep(60)


use_store(ROCKSDB, format_v2=True)
queries.append(
    start(
        source().groupBy((F.col("id") % KEYS).alias("key")).count()
        .writeStream.outputMode("complete").foreachBatch(write_counts),
        "counts",
    )
)

if has_tws:
    from pyspark.sql.streaming.stateful_processor import StatefulProcessor

    row_api = (major, minor) >= (4, 1)

    class CountPerKey(StatefulProcessor):
        def init(self, handle):
            self.count = handle.getValueState("count", "count LONG")

        def handleInputRows(self, key, rows, timerValues):
            n = self.count.get()[0] if self.count.exists() else 0
            if row_api:
                n += sum(1 for _ in rows)
            else:
                n += sum(len(pdf) for pdf in rows)
            self.count.update((n,))
            if row_api:
                from pyspark.sql import Row

                yield Row(key=key[0], count=n)
            else:
                import pandas as pd

                yield pd.DataFrame({"key": [key[0]], "count": [n]})

        def close(self):
            pass

    grouped = source().select((F.col("id") % KEYS).alias("key")).groupBy("key")
    transform = grouped.transformWithState if row_api else grouped.transformWithStateInPandas
    use_store(ROCKSDB, format_v2=True)
    queries.append(
        start(
            transform(
                statefulProcessor=CountPerKey(),
                outputStructType="key LONG, count LONG",
                outputMode="Append",
                timeMode="None",
            ).writeStream.format("parquet").option("path", os.path.join(root, "tws", "output")).outputMode("append"),
            "tws",
        )
    )

# Until every query has stopped; the first that fails ends the app (with
# its error), so a failed query never leaves the others running alone.
while any(q.isActive for q in queries):
    spark.streams.awaitAnyTermination()
    spark.streams.resetTerminated()
if not available_now or not verify:
    sys.exit(0)


def newest_commit(name):
    commits = os.path.join(root, name, "commits")
    done = [int(n) for n in os.listdir(commits) if n.isdigit() and os.path.getsize(os.path.join(commits, n)) > 0]
    return max(done)


records = spark.read.schema("id LONG, file INT").json(input_dir)
rows_per_key = {r["key"]: r["count"] for r in records.groupBy((F.col("id") % KEYS).alias("key")).count().collect()}
expected_ids = {r.id for r in records.select("id").distinct().collect()}
verdict = {"spark": spark.version, "input_rows": sum(rows_per_key.values()), "ids": len(expected_ids)}

dedup = {r.id: r["count"] for r in spark.read.parquet(os.path.join(root, "dedup", "output")).groupBy("id").count().collect()}
verdict["dedup"] = {
    "rows": sum(dedup.values()),
    "missing": sorted(expected_ids - dedup.keys())[:20],
    "duplicated": sorted(i for i, c in dedup.items() if c > 1)[:20],
    "unexpected": sorted(dedup.keys() - expected_ids)[:20],
}
verdict["dedup"]["ok"] = not any(verdict["dedup"][k] for k in ("missing", "duplicated", "unexpected"))

batch = newest_commit("counts")
table = spark.read.json(os.path.join(root, "counts", "output", f"batch={batch}"))
counts = {r["key"]: r["count"] for r in table.collect()}
verdict["counts"] = {"batch": batch, "counts": counts, "expected": rows_per_key, "ok": counts == rows_per_key}

if has_tws:
    out = spark.read.parquet(os.path.join(root, "tws", "output"))
    pairs = [(r["key"], r["count"]) for r in out.collect()]
    largest = {}
    for k, c in pairs:
        largest[k] = max(largest.get(k, 0), c)
    twice = sorted({p for p in pairs if pairs.count(p) > 1})
    verdict["tws"] = {
        "rows": len(pairs),
        "largest": largest,
        "repeated": twice[:20],
        "ok": largest == rows_per_key and not twice,
    }

verdict["ok"] = all(v["ok"] for v in verdict.values() if isinstance(v, dict) and "ok" in v)
print("VERDICT " + json.dumps(verdict, sort_keys=True), flush=True)
spark.stop()
