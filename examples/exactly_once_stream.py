"""Exactly-once streaming job for the crash tests.

A file-source stream of JSON records `{"id", "file"}` (see
exactly_once_gen.py: every id is in two different files), deduplicated on
`id` with `dropDuplicates` and appended to a Parquet file sink. Across crashes
the output must hold every id exactly once:

- the file source replays exactly the files of an uncommitted batch
  (offsets/N lists them), so nothing is lost;
- the state store remembers every id already emitted, so the second copy of
  an id - in a later file, so usually a later batch - is dropped;
- the file sink's `_spark_metadata` log lists only the files of committed
  batches, so files written by a batch that crashed are ignored by readers.

No watermark on purpose: with one, state for old ids would be purged and a
duplicate arriving after the watermark passed would be emitted again, so
"exactly once" would depend on timing. The ids here are bounded, so keeping
all of them in state is cheap.

Done: with F input files and FILES_PER_TRIGGER=k the input is consumed once
batch ceil(F/k)-1 is committed (a batch re-run after a crash replays the same
files, so the batch count does not change); with AVAILABLE_NOW=1 the app then
exits 0. Check the result with exactly_once_verify.py, or with VERIFY=1 in
this JVM: once the input is consumed the app prints `VERDICT {json}` (the
verifier's report) and still exits 0, so a supervisor does not restart it;
the line is the result.

Environment:
  SPARKVISOR_CHECKPOINT_DIR  checkpoint root (required); the query uses <root>/dedup
  INPUT_DIR                  input folder (required)
  OUTPUT_DIR                 sink folder (required)
  FILES_PER_TRIGGER          files per micro-batch (default 2)
  AVAILABLE_NOW              "1": process what is there, then exit 0 (default: run forever)
  VERIFY                     "1" (with AVAILABLE_NOW): check the sink as exactly_once_verify.py does
  SHUFFLE_PARTITIONS         state store partitions, frozen in the checkpoint at the first run (default 4)
  PROGRESS_LOG               append every new query.lastProgress here (progress_log.py)
"""

import json
import os

from pyspark.sql import SparkSession

from exactly_once_verify import verify

checkpoint_root = os.environ["SPARKVISOR_CHECKPOINT_DIR"]
input_dir = os.environ["INPUT_DIR"]
output_dir = os.environ["OUTPUT_DIR"]
files_per_trigger = int(os.environ.get("FILES_PER_TRIGGER", "2"))
available_now = os.environ.get("AVAILABLE_NOW", "") == "1"
check = os.environ.get("VERIFY", "") == "1"
shuffle_partitions = os.environ.get("SHUFFLE_PARTITIONS", "4")

spark = (
    SparkSession.builder.appName("exactly-once")
    .config("spark.sql.shuffle.partitions", shuffle_partitions)
    .getOrCreate()
)
spark.sparkContext.setLogLevel("WARN")

records = (
    spark.readStream.schema("id LONG, file INT")
    .option("maxFilesPerTrigger", files_per_trigger)
    .json(input_dir)
)
writer = (
    records.dropDuplicates(["id"])
    .writeStream.queryName("dedup")
    .format("parquet")
    .option("path", output_dir)
    .option("checkpointLocation", os.path.join(checkpoint_root, "dedup"))
    .outputMode("append")
)
writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime="1 second")
query = writer.start()
if os.environ.get("PROGRESS_LOG"):
    import progress_log

    progress_log.record(query, os.environ["PROGRESS_LOG"])
query.awaitTermination()
if available_now and check:
    print("VERDICT " + json.dumps(verify(spark, input_dir, output_dir)), flush=True)
