"""A stateful rate-source stream for the telemetry tests and benchmark.

Reads Spark's `rate` source, filters every row through a Python UDF (which
sleeps while SLOW_FILE exists, so a test can make the query fall behind and
catch up again without touching Spark; the file is checked per row, so it
takes effect inside a running batch), and counts rows per 5-second event
time window with a watermark (state rows, state memory, a watermark), into
the no-op sink. The query is named "rate"; its checkpoint is
$SPARKVISOR_CHECKPOINT_DIR/rate.

Environment:
  ROWS_PER_SECOND   rate of the source (default 20)
  TRIGGER_SECONDS   micro-batch interval (default 1; 0 = back to back)
  SLOW_FILE         while this file exists, the UDF sleeps SLOW_MS per row
  SLOW_MS           (default 100)
  PROGRESS_LOG      append every new query.lastProgress here (progress_log.py)
"""

import os
import time

from pyspark.sql import SparkSession, functions as F

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
rate = int(os.environ.get("ROWS_PER_SECOND", "20"))
trigger = float(os.environ.get("TRIGGER_SECONDS", "1"))
slow_file = os.environ.get("SLOW_FILE", "")
slow_s = float(os.environ.get("SLOW_MS", "100")) / 1000.0

spark = SparkSession.builder.appName("telemetry-stream").getOrCreate()
spark.sparkContext.setLogLevel("WARN")


@F.udf("long")
def touch(v):
    if slow_file and os.path.exists(slow_file):
        time.sleep(slow_s)
    return v


rows = spark.readStream.format("rate").option("rowsPerSecond", rate).load()
counts = (
    rows.where(touch("value") >= 0)  # a filter: the optimizer cannot drop the UDF
    .withWatermark("timestamp", "10 seconds")
    .groupBy(F.window("timestamp", "5 seconds"))
    .count()
)
writer = (
    counts.writeStream.queryName("rate")
    .format("noop")
    .outputMode("append")
    .option("checkpointLocation", os.path.join(checkpoint_root, "rate"))
)
if trigger > 0:
    writer = writer.trigger(processingTime=f"{trigger} seconds")
query = writer.start()
if os.environ.get("PROGRESS_LOG"):
    import progress_log

    progress_log.record(query, os.environ["PROGRESS_LOG"])
query.awaitTermination()
