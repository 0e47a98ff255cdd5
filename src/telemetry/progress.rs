//! Spark's streaming query events as Spark writes them to its event log
//! (`StreamingQueryListener$QueryStartedEvent`, `…$QueryProgressEvent`,
//! `…$QueryIdleEvent`, `…$QueryTerminatedEvent`), read into typed values.
//!
//! The progress object has the shape of `StreamingQueryProgress.json` (what
//! `query.lastProgress` returns), with two differences the event log
//! brings: source offsets are JSON text inside strings, and non-finite
//! rates are the strings `"NaN"` / `"Infinity"`. Both shapes are accepted.
//! Totals follow Spark's own definitions: a query's input rows and rates
//! are the sums over its sources (a rate Spark could not compute makes the
//! sum unknown, as `NaN` does in Spark).
//!
//! Invariants: pure; a line that is not a query event, or misses the ids,
//! is `None`; a field that is absent or malformed is `None` (never a
//! made-up zero).

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde_json::Value;

/// The event class names, after this prefix.
const LISTENER: &str = "org.apache.spark.sql.streaming.StreamingQueryListener$";

/// A streaming query event.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Started {
        id: String,
        run_id: String,
        name: Option<String>,
    },
    Progress(Box<Progress>),
    /// A trigger that found no new data (Spark 3.5+; older versions write
    /// a progress event with no input rows instead).
    Idle {
        id: String,
        run_id: String,
        at_ms: Option<i64>,
    },
    Terminated {
        id: String,
        run_id: String,
        error: Option<String>,
    },
}

/// One micro-batch as Spark reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    /// When the trigger started (Unix milliseconds).
    pub timestamp_ms: Option<i64>,
    pub batch_id: i64,
    /// `batchDuration`, else `durationMs.triggerExecution`.
    pub batch_duration_ms: Option<f64>,
    /// `durationMs`: the phases of the trigger.
    pub durations_ms: BTreeMap<String, f64>,
    /// Input rows of the batch, over all sources.
    pub num_input_rows: Option<u64>,
    pub input_rows_per_second: Option<f64>,
    pub processed_rows_per_second: Option<f64>,
    /// Over all stateful operators; `None` without any.
    pub state_rows: Option<u64>,
    pub state_memory_bytes: Option<u64>,
    /// `eventTime.watermark` (Unix milliseconds); `None` without a
    /// watermark or before the first one (Spark reports the epoch).
    pub watermark_ms: Option<i64>,
    pub sources: Vec<SourceProgress>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SourceProgress {
    pub description: String,
    pub num_input_rows: Option<u64>,
    /// What the source reports of the data not yet read.
    pub backlog: Option<Backlog>,
}

/// A source's backlog, in the units the source reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backlog {
    /// `latestOffset − endOffset`, summed over partitions (Kafka-like
    /// sources, the rate source).
    Offsets(f64),
    /// `numFilesOutstanding` in the source's metrics (file sources that
    /// report it).
    Files(f64),
}

impl Backlog {
    pub fn amount(self) -> f64 {
        match self {
            Backlog::Offsets(n) | Backlog::Files(n) => n,
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Backlog::Offsets(_) => "offsets",
            Backlog::Files(_) => "files",
        }
    }
}

impl Progress {
    /// The label sparkvisor uses: the query's name, else its id.
    pub fn label(&self) -> &str {
        label(self.name.as_deref(), &self.id)
    }

    /// The sum of the sources' backlogs, when at least one reports one.
    pub fn backlog(&self) -> Option<f64> {
        let reported: Vec<f64> = self
            .sources
            .iter()
            .filter_map(|s| s.backlog.map(Backlog::amount))
            .collect();
        (!reported.is_empty()).then(|| reported.iter().sum())
    }

    /// Reads a progress object (the event's `progress`, or what
    /// `StreamingQueryProgress.json` gives).
    pub fn from_json(v: &Value) -> Option<Progress> {
        let id = v.get("id")?.as_str()?.to_string();
        let run_id = v.get("runId")?.as_str()?.to_string();
        let batch_id = v.get("batchId").and_then(number)? as i64;
        let durations_ms: BTreeMap<String, f64> = v
            .get("durationMs")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), number(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let batch_duration_ms = v
            .get("batchDuration")
            .and_then(number)
            .or_else(|| durations_ms.get("triggerExecution").copied());
        let sources: Vec<&Value> = v
            .get("sources")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let state: Vec<&Value> = v
            .get("stateOperators")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        Some(Progress {
            id,
            run_id,
            name: v
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            timestamp_ms: v.get("timestamp").and_then(Value::as_str).and_then(time_ms),
            batch_id,
            batch_duration_ms,
            durations_ms,
            num_input_rows: sum_u64(sources.iter().map(|s| s.get("numInputRows"))),
            input_rows_per_second: sum_f64(sources.iter().map(|s| s.get("inputRowsPerSecond"))),
            processed_rows_per_second: sum_f64(
                sources.iter().map(|s| s.get("processedRowsPerSecond")),
            ),
            state_rows: sum_u64(state.iter().map(|s| s.get("numRowsTotal"))),
            state_memory_bytes: sum_u64(state.iter().map(|s| s.get("memoryUsedBytes"))),
            watermark_ms: v
                .get("eventTime")
                .and_then(|e| e.get("watermark"))
                .and_then(Value::as_str)
                .and_then(time_ms)
                .filter(|&ms| ms > 0),
            sources: sources.iter().map(|s| source(s)).collect(),
        })
    }

    /// The `/status` view (`queries[].progress`).
    pub fn to_json(&self) -> Value {
        let secs = |ms: Option<f64>| ms.map(|m| m / 1000.0);
        serde_json::json!({
            "run_id": self.run_id,
            "batch_id": self.batch_id,
            "timestamp_unix": self.timestamp_ms.map(|ms| ms as f64 / 1000.0),
            "batch_rows": self.num_input_rows,
            "input_rows_per_second": self.input_rows_per_second,
            "processed_rows_per_second": self.processed_rows_per_second,
            "batch_duration_seconds": secs(self.batch_duration_ms),
            "phases_seconds": self
                .durations_ms
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v / 1000.0)))
                .collect::<serde_json::Map<_, _>>(),
            "state_rows": self.state_rows,
            "state_memory_bytes": self.state_memory_bytes,
            "watermark_unix": self.watermark_ms.map(|ms| ms as f64 / 1000.0),
            "watermark_lag_seconds": self.watermark_lag_seconds(),
            "backlog": self.backlog(),
            "sources": self.sources.iter().map(|s| serde_json::json!({
                "description": s.description,
                "rows": s.num_input_rows,
                "backlog": s.backlog.map(Backlog::amount),
                "backlog_unit": s.backlog.map(Backlog::unit),
            })).collect::<Vec<_>>(),
        })
    }

    /// How far the watermark trailed the trigger's start.
    pub fn watermark_lag_seconds(&self) -> Option<f64> {
        let (t, w) = (self.timestamp_ms?, self.watermark_ms?);
        Some((t - w).max(0) as f64 / 1000.0)
    }
}

/// The name, else the id.
pub fn label<'a>(name: Option<&'a str>, id: &'a str) -> &'a str {
    name.filter(|n| !n.is_empty()).unwrap_or(id)
}

/// True when the event-log line is one of the query events (checked on
/// its first bytes, so the many other events are skipped unparsed).
pub fn is_query_event(line: &[u8]) -> bool {
    let head = &line[..line.len().min(160)];
    head.windows(LISTENER.len())
        .any(|w| w == LISTENER.as_bytes())
}

/// Reads one event-log line.
pub fn parse_line(line: &[u8]) -> Option<Event> {
    if !is_query_event(line) {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    parse_event(&v)
}

/// Reads one event object.
pub fn parse_event(v: &Value) -> Option<Event> {
    let kind = v.get("Event")?.as_str()?.strip_prefix(LISTENER)?;
    let ids = || -> Option<(String, String)> {
        Some((
            v.get("id")?.as_str()?.to_string(),
            v.get("runId")?.as_str()?.to_string(),
        ))
    };
    match kind {
        "QueryProgressEvent" => {
            Progress::from_json(v.get("progress")?).map(|p| Event::Progress(Box::new(p)))
        }
        "QueryStartedEvent" => {
            let (id, run_id) = ids()?;
            Some(Event::Started {
                id,
                run_id,
                name: v
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            })
        }
        "QueryIdleEvent" => {
            let (id, run_id) = ids()?;
            Some(Event::Idle {
                id,
                run_id,
                at_ms: v.get("timestamp").and_then(Value::as_str).and_then(time_ms),
            })
        }
        "QueryTerminatedEvent" => {
            let (id, run_id) = ids()?;
            Some(Event::Terminated {
                id,
                run_id,
                error: v
                    .get("exception")
                    .and_then(Value::as_str)
                    .map(|e| e.lines().next().unwrap_or("").to_string()),
            })
        }
        _ => None,
    }
}

fn source(s: &Value) -> SourceProgress {
    SourceProgress {
        description: s
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        num_input_rows: s.get("numInputRows").and_then(number).map(|n| n as u64),
        backlog: backlog(s),
    }
}

/// Offsets behind latest when the source reports its latest offset, else
/// the pending files its metrics report.
fn backlog(s: &Value) -> Option<Backlog> {
    let offsets = |k: &str| s.get(k).and_then(offset_value);
    if let (Some(end), Some(latest)) = (offsets("endOffset"), offsets("latestOffset"))
        && let Some(n) = offsets_behind(&end, &latest)
    {
        return Some(Backlog::Offsets(n));
    }
    let metrics = s.get("metrics")?;
    metrics
        .get("numFilesOutstanding")
        .and_then(number)
        .map(Backlog::Files)
}

/// An offset as JSON: the event log writes it as JSON text in a string.
fn offset_value(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(serde_json::from_str(s).unwrap_or(Value::String(s.clone()))),
        other => Some(other.clone()),
    }
}

/// Σ (latest − end) over the numeric leaves both offsets have (a number,
/// or `{"topic": {"0": 12, …}}`); `None` when they share no number.
fn offsets_behind(end: &Value, latest: &Value) -> Option<f64> {
    match (end, latest) {
        (Value::Number(_), Value::Number(_)) => Some((number(latest)? - number(end)?).max(0.0)),
        (Value::Object(e), Value::Object(l)) => {
            let parts: Vec<f64> = l
                .iter()
                .filter_map(|(k, lv)| offsets_behind(e.get(k)?, lv))
                .collect();
            (!parts.is_empty()).then(|| parts.iter().sum())
        }
        _ => None,
    }
}

/// A JSON number, or a number in a string (`"NaN"` and infinities are
/// `None`).
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn sum_u64<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for v in values {
        total += v.and_then(number)?.max(0.0) as u64;
        any = true;
    }
    any.then_some(total)
}

fn sum_f64<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for v in values {
        total += v.and_then(number)?;
        any = true;
    }
    any.then_some(total)
}

/// `2026-12-01T10:34:49.000Z` as Unix milliseconds.
fn time_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A progress event as Spark 4.0.1 wrote it (shortened).
    const EVENT: &str = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryProgressEvent","progress":{"id":"c61781fc-cfcf-4d71-a5e4-e7ba5e346e45","runId":"f772a2a7-b86c-416a-85a6-41607506172d","name":"probe","timestamp":"2026-12-01T10:34:49.000Z","batchId":25,"batchDuration":792,"durationMs":{"triggerExecution":792,"queryPlanning":27,"getBatch":0,"commitOffsets":108,"latestOffset":0,"addBatch":526,"walCommit":130},"eventTime":{"min":"2026-12-01T10:34:47.768Z","avg":"2026-12-01T10:34:48.258Z","watermark":"2026-12-01T10:34:42.748Z","max":"2026-12-01T10:34:48.748Z"},"stateOperators":[{"operatorName":"stateStoreSave","numRowsTotal":2,"numRowsUpdated":1,"memoryUsedBytes":2328,"customMetrics":{}}],"sources":[{"description":"RateStreamV2[rowsPerSecond=50, rampUpTimeSeconds=0, numPartitions=default","startOffset":"40","endOffset":"41","latestOffset":"41","numInputRows":50,"inputRowsPerSecond":61.80469715698393,"processedRowsPerSecond":63.13131313131313,"metrics":{}}],"sink":{"description":"MemorySink","numOutputRows":0,"metrics":{}},"observedMetrics":{}}}"#;

    #[test]
    fn progress_event_as_spark_writes_it() {
        let Some(Event::Progress(p)) = parse_line(EVENT.as_bytes()) else {
            panic!("not a progress event");
        };
        assert_eq!(p.label(), "probe");
        assert_eq!(p.batch_id, 25);
        assert_eq!(p.timestamp_ms, Some(1_796_121_289_000));
        assert_eq!(p.batch_duration_ms, Some(792.0));
        assert_eq!(p.durations_ms["addBatch"], 526.0);
        assert_eq!(p.num_input_rows, Some(50));
        assert_eq!(p.input_rows_per_second, Some(61.80469715698393));
        assert_eq!(p.processed_rows_per_second, Some(63.13131313131313));
        assert_eq!((p.state_rows, p.state_memory_bytes), (Some(2), Some(2328)));
        assert_eq!(p.watermark_ms, Some(1_796_121_282_748));
        assert_eq!(p.watermark_lag_seconds(), Some(6.252));
        // The rate source reports its latest offset: nothing behind.
        assert_eq!(p.sources[0].backlog, Some(Backlog::Offsets(0.0)));
        assert_eq!(p.backlog(), Some(0.0));
        let j = p.to_json();
        assert_eq!(j["batch_duration_seconds"], 0.792);
        assert_eq!(j["phases_seconds"]["walCommit"], 0.13);
    }

    #[test]
    fn first_batch_rates_and_missing_watermark() {
        // Spark writes NaN for a rate it cannot compute (the first batch),
        // and the epoch as the watermark before the first one.
        let line = EVENT
            .replace("61.80469715698393", "\"NaN\"")
            .replace("2026-12-01T10:34:42.748Z", "1970-01-01T00:00:00.000Z")
            .replace(r#""stateOperators":[{"operatorName":"stateStoreSave","numRowsTotal":2,"numRowsUpdated":1,"memoryUsedBytes":2328,"customMetrics":{}}]"#, r#""stateOperators":[]"#);
        let Some(Event::Progress(p)) = parse_line(line.as_bytes()) else {
            panic!("not a progress event");
        };
        assert_eq!(p.input_rows_per_second, None);
        assert_eq!(p.watermark_ms, None);
        assert_eq!(p.watermark_lag_seconds(), None);
        assert_eq!((p.state_rows, p.state_memory_bytes), (None, None));
    }

    #[test]
    fn kafka_offsets_behind_latest_and_pending_files() {
        let kafka = serde_json::json!({
            "description": "KafkaV2[Subscribe[orders]]",
            "startOffset": r#"{"orders":{"0":10,"1":20}}"#,
            "endOffset": r#"{"orders":{"0":15,"1":25}}"#,
            "latestOffset": r#"{"orders":{"0":115,"1":45}}"#,
            "numInputRows": 10,
            "metrics": {"avgOffsetsBehindLatest": "60.0"}
        });
        assert_eq!(backlog(&kafka), Some(Backlog::Offsets(120.0)));
        // lastProgress gives offsets as JSON rather than text.
        let parsed = serde_json::json!({
            "endOffset": {"orders": {"0": 15}},
            "latestOffset": {"orders": {"0": 16}},
        });
        assert_eq!(backlog(&parsed), Some(Backlog::Offsets(1.0)));
        let files = serde_json::json!({
            "description": "FileStreamSource[s3://in]",
            "endOffset": {"logOffset": 3},
            "latestOffset": null,
            "metrics": {"numFilesOutstanding": "238", "numBytesOutstanding": "1000"}
        });
        assert_eq!(backlog(&files), Some(Backlog::Files(238.0)));
        // The open-source file source reports neither.
        let plain =
            serde_json::json!({"endOffset": {"logOffset": 3}, "latestOffset": null, "metrics": {}});
        assert_eq!(backlog(&plain), None);
    }

    #[test]
    fn other_query_events() {
        let started = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryStartedEvent","id":"a","runId":"r","name":null,"timestamp":"2026-12-01T10:34:49.000Z","jobTags":[]}"#;
        assert_eq!(
            parse_line(started.as_bytes()),
            Some(Event::Started {
                id: "a".into(),
                run_id: "r".into(),
                name: None
            })
        );
        let idle = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryIdleEvent","id":"a","runId":"r","timestamp":"2026-12-01T10:34:49.000Z"}"#;
        assert!(matches!(
            parse_line(idle.as_bytes()),
            Some(Event::Idle {
                at_ms: Some(1_796_121_289_000),
                ..
            })
        ));
        let ended = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryTerminatedEvent","id":"a","runId":"r","exception":"boom\n\tat x","errorClassOnException":null}"#;
        assert!(matches!(
            parse_line(ended.as_bytes()),
            Some(Event::Terminated { error: Some(e), .. }) if e == "boom"
        ));
        for junk in [
            &br#"{"Event":"SparkListenerTaskEnd","Stage ID":1}"#[..],
            b"{\"Event\":\"org.apache.spark.sql.streaming.StreamingQueryListener$QueryProgressEvent\",\"progress\":",
            b"",
            b"\x00\x00",
        ] {
            assert_eq!(parse_line(junk), None);
        }
        assert_eq!(label(Some(""), "id-1"), "id-1");
    }

    /// What Spark 3.5.9 (Scala 2.12) and 4.3.0 wrote for the same query.
    const SPARK_3_5: &str = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryProgressEvent","progress":{"id":"90b05dd0-dda5-4f54-a8ce-ca2f0f3a12e9","runId":"b337ce59-f03a-45fc-bd30-77af2921d639","name":"probe","timestamp":"2026-12-01T12:29:14.001Z","batchId":22,"batchDuration":314,"durationMs":{"triggerExecution":314,"queryPlanning":18,"getBatch":0,"commitOffsets":63,"latestOffset":0,"addBatch":196,"walCommit":36},"eventTime":{"min":"2026-12-01T12:29:12.408Z","avg":"2026-12-01T12:29:12.883Z","watermark":"2026-12-01T12:29:07.358Z","max":"2026-12-01T12:29:13.358Z"},"stateOperators":[{"operatorName":"stateStoreSave","numRowsTotal":2,"numRowsUpdated":1,"allUpdatesTimeMs":20,"numRowsRemoved":0,"allRemovalsTimeMs":5,"commitTimeMs":118,"memoryUsedBytes":1432,"numRowsDroppedByWatermark":0,"numShufflePartitions":2,"numStateStoreInstances":2,"customMetrics":{"stateOnCurrentVersionSizeBytes":640,"loadedMapCacheHitCount":88,"loadedMapCacheMissCount":0}}],"sources":[{"description":"RateStreamV2[rowsPerSecond=20, rampUpTimeSeconds=0, numPartitions=default","startOffset":"22","endOffset":"23","latestOffset":"23","numInputRows":20,"inputRowsPerSecond":19.980019980019982,"processedRowsPerSecond":63.69426751592356,"metrics":{}}],"sink":{"description":"org.apache.spark.sql.execution.datasources.noop.NoopTable$@74b753dc","numOutputRows":0,"metrics":{}},"observedMetrics":{}}}"#;
    const SPARK_4_3: &str = r#"{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryProgressEvent","progress":{"id":"c3270465-6401-4ecd-8b18-3f21eb5dcb75","runId":"86d8ea6d-6b08-4969-bcb9-148f07fec693","name":"probe","timestamp":"2026-12-01T12:29:49.000Z","batchId":23,"batchDuration":335,"durationMs":{"triggerExecution":335,"queryPlanning":34,"getBatch":0,"commitOffsets":44,"latestOffset":0,"addBatch":206,"walCommit":49},"eventTime":{"min":"2026-12-01T12:29:47.889Z","avg":"2026-12-01T12:29:48.364Z","watermark":"2026-12-01T12:29:42.839Z","max":"2026-12-01T12:29:48.839Z"},"stateOperators":[{"operatorName":"stateStoreSave","numRowsTotal":2,"numRowsUpdated":1,"allUpdatesTimeMs":22,"numRowsRemoved":0,"allRemovalsTimeMs":4,"commitTimeMs":104,"memoryUsedBytes":1592,"numRowsDroppedByWatermark":0,"numShufflePartitions":2,"numStateStoreInstances":2,"customMetrics":{"stateOnCurrentVersionSizeBytes":744,"forceSnapshotCount":0,"loadedMapCacheMissCount":0,"SnapshotLastUploaded.partition_0_default":-1,"loadedMapCacheHitCount":92,"SnapshotLastUploaded.partition_1_default":-1,"numSnapshotsAutoRepaired":0},"snapshotCustomMetricNames":["stateOnCurrentVersionSizeBytes","SnapshotLastUploaded.partition_0_default","SnapshotLastUploaded.partition_1_default"]}],"sources":[{"description":"RateStreamV2[rowsPerSecond=20, rampUpTimeSeconds=0, numPartitions=default","startOffset":"23","endOffset":"24","latestOffset":"24","numInputRows":20,"inputRowsPerSecond":20.0,"processedRowsPerSecond":59.70149253731343,"metrics":{}}],"sink":{"description":"NoopTable","numOutputRows":0,"metrics":{}},"observedMetrics":{}}}"#;

    #[test]
    fn the_same_events_from_spark_3_5_and_4_3() {
        for (line, batch, state_bytes, input) in [
            (SPARK_3_5, 22, 1432, 19.980019980019982),
            (SPARK_4_3, 23, 1592, 20.0),
        ] {
            let Some(Event::Progress(p)) = parse_line(line.as_bytes()) else {
                panic!("not a progress event: {line}");
            };
            assert_eq!((p.label(), p.batch_id), ("probe", batch));
            assert_eq!(p.state_memory_bytes, Some(state_bytes));
            assert_eq!(p.input_rows_per_second, Some(input));
            assert_eq!(p.num_input_rows, Some(20));
            assert_eq!(p.backlog(), Some(0.0));
            assert!(p.watermark_lag_seconds().unwrap() > 5.0);
            assert_eq!(p.durations_ms.len(), 7);
        }
    }
}
