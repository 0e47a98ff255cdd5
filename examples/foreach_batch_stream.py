"""A streaming job with a sink that is NOT idempotent, for the drain tests.

A file-source stream of JSON records `{"id", "file"}` (one input file per
micro-batch). `foreachBatch` appends every row's id to SINK_FILE, one line
per id, with no batch-id deduplication (like an INSERT into a database or a
POST to an HTTP API), then works WORK_SECONDS more before the batch
commits. A batch that is interrupted after its rows were written and
replayed after a restart therefore writes them a second time: duplicate
lines in SINK_FILE. Across graceful stops under sparkvisor (which drains:
it waits for the batch in flight to commit before signalling the app) every
id must be in SINK_FILE exactly once.

Environment:
  SPARKVISOR_CHECKPOINT_DIR  checkpoint root (required); the query uses <root>/sink
  INPUT_DIR                  input folder (required)
  SINK_FILE                  the file the sink appends to (required)
  WORK_SECONDS               work after the rows are written (default 2)
  TRIGGER_SECONDS            processing-time trigger (default 4)
"""

import os
import time

from pyspark.sql import SparkSession

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
input_dir = os.environ["INPUT_DIR"]
sink_file = os.environ["SINK_FILE"]
work_seconds = float(os.environ.get("WORK_SECONDS", "2"))
trigger_seconds = os.environ.get("TRIGGER_SECONDS", "4")

spark = SparkSession.builder.appName("foreach-batch").getOrCreate()
spark.sparkContext.setLogLevel("WARN")


def append(batch, batch_id):
    ids = [r.id for r in batch.select("id").collect()]
    with open(sink_file, "a") as f:
        for i in ids:
            f.write(f"{i}\n")
        f.flush()
        os.fsync(f.fileno())
    # The rest of the batch's work: the rows are out, the commit is not.
    time.sleep(work_seconds)


query = (
    spark.readStream.schema("id LONG, file INT")
    .option("maxFilesPerTrigger", 1)
    .json(input_dir)
    .writeStream.queryName("sink")
    .foreachBatch(append)
    .option("checkpointLocation", os.path.join(checkpoint_root, "sink"))
    .trigger(processingTime=f"{trigger_seconds} seconds")
    .start()
)
query.awaitTermination()
