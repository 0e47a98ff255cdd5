"""A small Structured Streaming job for the demo and the tests.

Reads Spark's `rate` source and appends each micro-batch to a Parquet sink.
The checkpoint lives under $SPARKVISOR_CHECKPOINT_DIR (set by sparkvisor), in
a subfolder named after the query, so a restarted driver resumes from it.

Environment:
  OUTPUT_DIR        where the sink writes (default: <checkpoint dir>/../output)
  ROWS_PER_SECOND   rate of the source (default 5)
  TRIGGER_SECONDS   micro-batch interval (default 2)
"""

import os

from pyspark.sql import SparkSession

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
output = os.environ.get("OUTPUT_DIR", os.path.join(os.path.dirname(checkpoint_root.rstrip("/")), "output"))
rate = int(os.environ.get("ROWS_PER_SECOND", "5"))
trigger = os.environ.get("TRIGGER_SECONDS", "2")

spark = SparkSession.builder.appName("rate-stream").getOrCreate()
spark.sparkContext.setLogLevel("WARN")

stream = spark.readStream.format("rate").option("rowsPerSecond", rate).load()
query = (
    stream.writeStream.queryName("rate")
    .format("parquet")
    .option("path", output)
    .option("checkpointLocation", os.path.join(checkpoint_root, "rate"))
    .trigger(processingTime=f"{trigger} seconds")
    .start()
)
query.awaitTermination()
