"""A stateful Structured Streaming job with two queries in one checkpoint root.

Used by the S3 replication tests: its checkpoint has state store files
(`state/<op>/<partition>/<version>.delta`) as well as offsets, commits,
sources and metadata, and one subfolder per query.

Queries (each checkpoints to $SPARKVISOR_CHECKPOINT_DIR/<name>):
  counts   rate -> count per key (value % 10), update mode; each micro-batch is
           written to OUTPUT_DIR/counts/batch=<id> (overwritten when a batch
           is replayed, so the output is exactly-once per batch id)
  events   rate -> Parquet files under OUTPUT_DIR/events (stateless)

Environment:
  OUTPUT_DIR          where the sinks write (default: <checkpoint dir>/../output)
  ROWS_PER_SECOND     rate of each source (default 5)
  TRIGGER_SECONDS     micro-batch interval (default 1)
  SHUFFLE_PARTITIONS  state store partitions of `counts` (default 4)
"""

import os

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
output = os.environ.get("OUTPUT_DIR", os.path.join(os.path.dirname(checkpoint_root.rstrip("/")), "output"))
rate = int(os.environ.get("ROWS_PER_SECOND", "5"))
trigger = os.environ.get("TRIGGER_SECONDS", "1")
partitions = os.environ.get("SHUFFLE_PARTITIONS", "4")

spark = (
    SparkSession.builder.appName("stateful-stream")
    .config("spark.sql.shuffle.partitions", partitions)
    .getOrCreate()
)
spark.sparkContext.setLogLevel("WARN")


def write_counts(df, batch_id):
    df.coalesce(1).write.mode("overwrite").json(os.path.join(output, "counts", f"batch={batch_id}"))


counts = (
    spark.readStream.format("rate").option("rowsPerSecond", rate).load()
    .groupBy((F.col("value") % 10).alias("key"))
    .count()
    .writeStream.queryName("counts")
    .outputMode("update")
    .foreachBatch(write_counts)
    .option("checkpointLocation", os.path.join(checkpoint_root, "counts"))
    .trigger(processingTime=f"{trigger} seconds")
    .start()
)
events = (
    spark.readStream.format("rate").option("rowsPerSecond", rate).load()
    .writeStream.queryName("events")
    .format("parquet")
    .option("path", os.path.join(output, "events"))
    .option("checkpointLocation", os.path.join(checkpoint_root, "events"))
    .trigger(processingTime=f"{trigger} seconds")
    .start()
)
spark.streams.awaitAnyTermination()
