"""The workload of bench/telemetry_overhead.py: as many micro-batches as
Spark can run, back to back, each a fixed number of rows through a
stateful windowed count (state store, watermark) into the no-op sink. Small
batches make per-batch costs (such as Spark writing its event log) weigh as
much as they ever do. JVM only (no Python UDF), so the numbers are Spark's.

Environment:
  SPARKVISOR_CHECKPOINT_DIR  checkpoint root (the query uses <root>/bench)
  ROWS_PER_BATCH             rows per micro-batch (default 20000)
  PROGRESS_LOG               append every new query.lastProgress here
"""

import os
import sys

from pyspark.sql import SparkSession, functions as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import progress_log  # noqa: E402

rows = int(os.environ.get("ROWS_PER_BATCH", "20000"))
spark = SparkSession.builder.appName("telemetry-bench").getOrCreate()
spark.sparkContext.setLogLevel("WARN")
counts = (
    spark.readStream.format("rate-micro-batch")
    .option("rowsPerBatch", rows)
    .option("numPartitions", 2)
    .load()
    .withWatermark("timestamp", "10 seconds")
    .groupBy(F.window("timestamp", "5 seconds"), (F.col("value") % 16).alias("k"))
    .count()
)
query = (
    counts.writeStream.queryName("bench")
    .format("noop")
    .outputMode("append")
    .option("checkpointLocation", os.path.join(os.environ["SPARKVISOR_CHECKPOINT_DIR"], "bench"))
    .start()
)
progress_log.record(query, os.environ["PROGRESS_LOG"])
query.awaitTermination()
