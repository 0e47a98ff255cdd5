"""A streaming job whose batch hangs once, for the stall tests.

Reads Spark's `rate` source, passes every value through a Python UDF and
appends to a Parquet sink. The UDF blocks forever on the first row whose
value is at least STALL_AT_VALUE, but only if it is the first to create the
marker file STALL_MARKER (O_EXCL, so exactly one task of one attempt hangs).
That batch is planned (offsets/N written) and never committed: a stall. After
the app is restarted, Spark re-runs the same batch; the marker exists, so the
UDF passes and the stream progresses normally.

Environment:
  SPARKVISOR_CHECKPOINT_DIR  checkpoint root (required); the query uses <root>/stall
  OUTPUT_DIR                 sink folder (default: <checkpoint root>/../stall-output)
  STALL_MARKER               marker file (default: <checkpoint root>/../stall.marker)
  STALL_AT_VALUE             first rate value that hangs (default 20)
  ROWS_PER_SECOND            rate of the source (default 5)
  TRIGGER_SECONDS            micro-batch interval (default 2)
"""

import os
import time

from pyspark.sql import SparkSession
from pyspark.sql.functions import col, udf
from pyspark.sql.types import LongType

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
parent = os.path.dirname(checkpoint_root.rstrip("/"))
output = os.environ.get("OUTPUT_DIR", os.path.join(parent, "stall-output"))
marker = os.environ.get("STALL_MARKER", os.path.join(parent, "stall.marker"))
stall_at = int(os.environ.get("STALL_AT_VALUE", "20"))
rate = int(os.environ.get("ROWS_PER_SECOND", "5"))
trigger = os.environ.get("TRIGGER_SECONDS", "2")


def hang_once(value):
    if value is not None and value >= stall_at:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return value
        os.write(fd, f"stalled at value {value}, pid {os.getpid()}\n".encode())
        os.close(fd)
        while True:
            time.sleep(3600)
    return value


hang = udf(hang_once, LongType())

spark = SparkSession.builder.appName("stall").getOrCreate()
spark.sparkContext.setLogLevel("WARN")

stream = spark.readStream.format("rate").option("rowsPerSecond", rate).load()
query = (
    stream.select(col("timestamp"), hang(col("value")).alias("value"))
    .writeStream.queryName("stall")
    .format("parquet")
    .option("path", output)
    .option("checkpointLocation", os.path.join(checkpoint_root, "stall"))
    .trigger(processingTime=f"{trigger} seconds")
    .start()
)
query.awaitTermination()
