//! Per-query telemetry while the app runs: follows the current attempt's
//! event log, reads the streaming query events Spark writes there, and
//! publishes each query's latest progress into the `sparkvisor_query_*`
//! metrics and `/status` `queries[]`, with the "behind" verdict
//! (`crate::telemetry::behind`) and, for `/ready`, the queries that are
//! behind.
//!
//! Which log is the attempt's: the logs present when the attempt started
//! are remembered, and the new one that appears is followed (the one of
//! the app id Spark's REST API gives, when several appear).
//!
//! Invariants: reads only (never writes where Spark writes); file I/O runs
//! off the async threads and each poll reads a bounded amount; a query's
//! window history is per run (a restart starts it again), and nothing is
//! behind while no attempt runs; values are copied into `Shared` only.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::attempt::{Current, SparkApi};
use crate::config::TelemetryConfig;
use crate::eventlog::Site;
use crate::eventlog::layout::{self, Log};
use crate::eventlog::ship::set_section;
use crate::eventlog::tail::Tailer;
use crate::status::Shared;
use crate::status::metrics::Metrics;
use crate::telemetry::behind::{self, Sample, Verdict};
use crate::telemetry::progress::{self, Event, Progress};

/// Most bytes of event log read per poll (the rest waits for the next).
const READ_BUDGET: usize = 32 * 1024 * 1024;

/// What the task reads from the other tasks.
pub struct Inputs {
    pub current: watch::Receiver<Current>,
    pub spark: watch::Receiver<SparkApi>,
}

/// One streaming query as its events describe it.
#[derive(Debug)]
struct Query {
    id: String,
    run_id: String,
    name: Option<String>,
    last: Option<Progress>,
    history: VecDeque<Sample>,
    verdict: Verdict,
    behind_since_ms: Option<i64>,
    active: bool,
    /// The label its metrics carry.
    exported: Option<String>,
}

impl Query {
    fn new(id: &str, run_id: &str) -> Query {
        Query {
            id: id.to_string(),
            run_id: run_id.to_string(),
            name: None,
            last: None,
            history: VecDeque::new(),
            verdict: Verdict::CaughtUp,
            behind_since_ms: None,
            active: true,
            exported: None,
        }
    }

    fn label(&self) -> &str {
        progress::label(self.name.as_deref(), &self.id)
    }

    /// A new run (a restart) starts the window over.
    fn run(&mut self, run_id: &str) {
        if self.run_id != run_id {
            self.run_id = run_id.to_string();
            self.history.clear();
            self.verdict = Verdict::CaughtUp;
            self.behind_since_ms = None;
        }
        self.active = true;
    }

    fn judge(&mut self, window: Duration, at_ms: Option<i64>) {
        let was = self.verdict.is_behind();
        self.verdict = behind::assess(&self.history, window);
        match (was, self.verdict.is_behind()) {
            (false, true) => self.behind_since_ms = at_ms,
            (true, false) => self.behind_since_ms = None,
            _ => {}
        }
        if was != self.verdict.is_behind() {
            info!(
                query = self.label(),
                behind = self.verdict.is_behind(),
                reason = self.verdict.reason(window).unwrap_or_default(),
                "streaming query {} behind",
                if self.verdict.is_behind() {
                    "fell"
                } else {
                    "is no longer"
                }
            );
        }
    }

    fn to_json(&self, window: Duration) -> serde_json::Value {
        serde_json::json!({
            "name": self.label(),
            "id": self.id,
            "run_id": self.run_id,
            "active": self.active,
            "behind": self.verdict.is_behind(),
            "behind_reason": self.verdict.reason(window),
            "behind_since_unix": self.behind_since_ms.map(|ms| ms as f64 / 1000.0),
            "progress": self.last.as_ref().map(Progress::to_json),
        })
    }
}

/// Which log the current attempt writes.
struct Follow {
    attempt: u32,
    before: HashSet<String>,
    tailer: Option<Tailer>,
}

/// Runs until the runtime stops.
pub async fn watch(shared: Arc<Shared>, cfg: TelemetryConfig, site: Site, mut inputs: Inputs) {
    let Some(dir) = site.dir.clone() else {
        let why = site.problem.unwrap_or_default();
        warn!(reason = %why, "no per-query telemetry: sparkvisor cannot read Spark's event log");
        shared.update(|s| {
            s.queries = serde_json::json!([]);
            set_section(
                &mut s.eventlog,
                "telemetry",
                serde_json::json!({"error": why}),
            );
        });
        return;
    };
    let window = cfg.behind_window.get();
    let mut tick = tokio::time::interval(cfg.poll_interval.get().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow: Option<Follow> = None;
    let mut queries: BTreeMap<String, Query> = BTreeMap::new();
    let mut problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = inputs.current.changed() => if changed.is_err() { return },
        }
        let attempt = *inputs.current.borrow_and_update();
        let Some(attempt) = attempt else {
            if follow.take().is_some() {
                for q in queries.values_mut() {
                    q.active = false;
                    q.history.clear();
                    q.verdict = Verdict::CaughtUp;
                    q.behind_since_ms = None;
                }
                publish(&shared, &mut queries, window);
            }
            continue;
        };
        if follow.as_ref().is_none_or(|f| f.attempt != attempt.number) {
            let d = dir.clone();
            let before = tokio::task::spawn_blocking(move || names(&d))
                .await
                .unwrap_or_default();
            follow = Some(Follow {
                attempt: attempt.number,
                before,
                tailer: None,
            });
        }
        let Some(f) = follow.as_mut() else { continue };
        let app_id = inputs
            .spark
            .borrow()
            .of(attempt.number)
            .and_then(|s| s.app_id.clone());
        let d = dir.clone();
        let before = f.before.clone();
        let tailer = f.tailer.take();
        let read = tokio::task::spawn_blocking(move || read_new(&d, before, app_id, tailer)).await;
        let Ok((tailer, events, issue)) = read else {
            continue;
        };
        f.tailer = tailer;
        if issue != problem {
            if let Some(p) = &issue {
                warn!(problem = %p, "per-query telemetry cannot read the event log");
            }
            problem = issue.clone();
            let followed = f.tailer.as_ref().map(|t| t.log().to_string());
            let doc = serde_json::json!({"error": issue, "log": followed});
            shared.update(|s| set_section(&mut s.eventlog, "telemetry", doc));
        }
        if events.is_empty() {
            continue;
        }
        for e in events {
            apply(&mut queries, e, window);
        }
        publish(&shared, &mut queries, window);
    }
}

fn names(dir: &std::path::Path) -> HashSet<String> {
    layout::scan(dir)
        .map(|e| layout::logs(&e).into_iter().map(|l| l.name).collect())
        .unwrap_or_default()
}

/// Finds the attempt's log (if not yet found) and reads its new events.
fn read_new(
    dir: &Path,
    before: HashSet<String>,
    app_id: Option<String>,
    tailer: Option<Tailer>,
) -> (Option<Tailer>, Vec<Event>, Option<String>) {
    let logs = match layout::scan(dir) {
        Ok(e) => layout::logs(&e),
        Err(e) => {
            return (
                tailer,
                Vec::new(),
                Some(format!("cannot list {}: {e}", dir.display())),
            );
        }
    };
    let mut tailer = tailer;
    if tailer.is_none() {
        let fresh: Vec<&Log> = logs.iter().filter(|l| !before.contains(&l.name)).collect();
        let pick = match app_id.as_deref() {
            Some(id) => fresh.iter().find(|l| l.belongs_to(id)).or(fresh.last()),
            None => fresh.last(),
        };
        match pick {
            Some(l) => tailer = Some(Tailer::new(dir, l)),
            None => return (None, Vec::new(), None),
        }
    }
    let Some(t) = tailer.as_mut() else {
        return (None, Vec::new(), None);
    };
    let Some(log) = logs.iter().find(|l| l.name == t.log()) else {
        return (tailer, Vec::new(), None);
    };
    if let Some(codec) = log.codec() {
        return (
            tailer,
            Vec::new(),
            Some(format!(
                "the event log is compressed ({codec}; spark.eventLog.compress = true): progress cannot be read while Spark writes it"
            )),
        );
    }
    let mut events = Vec::new();
    let res = t.poll(log, READ_BUDGET, |line| {
        if let Some(e) = progress::parse_line(line) {
            events.push(e);
        }
    });
    let issue = res.err().map(|e| format!("reading {}: {e}", log.name));
    (tailer, events, issue)
}

fn apply(queries: &mut BTreeMap<String, Query>, e: Event, window: Duration) {
    match e {
        Event::Started { id, run_id, name } => {
            let q = queries
                .entry(id.clone())
                .or_insert_with(|| Query::new(&id, &run_id));
            q.run(&run_id);
            if name.is_some() {
                q.name = name;
            }
        }
        Event::Progress(p) => {
            let q = queries
                .entry(p.id.clone())
                .or_insert_with(|| Query::new(&p.id, &p.run_id));
            q.run(&p.run_id);
            if p.name.is_some() {
                q.name = p.name.clone();
            }
            if let Some(at_ms) = p.timestamp_ms {
                behind::record(
                    &mut q.history,
                    Sample {
                        at_ms,
                        rows: p.num_input_rows.unwrap_or(0),
                        input_rate: p.input_rows_per_second,
                        processed_rate: p.processed_rows_per_second,
                        backlog: p.backlog(),
                        idle: false,
                    },
                    window,
                );
            }
            let at = p.timestamp_ms;
            q.last = Some(*p);
            q.judge(window, at);
        }
        Event::Idle { id, run_id, at_ms } => {
            let q = queries
                .entry(id.clone())
                .or_insert_with(|| Query::new(&id, &run_id));
            q.run(&run_id);
            let at = at_ms.or_else(|| q.history.back().map(|s| s.at_ms));
            if let Some(at) = at {
                behind::record(&mut q.history, Sample::idle(at), window);
            }
            q.judge(window, at);
        }
        Event::Terminated { id, run_id, error } => {
            if let Some(q) = queries.get_mut(&id)
                && q.run_id == run_id
            {
                q.active = false;
                q.history.clear();
                q.verdict = Verdict::CaughtUp;
                q.behind_since_ms = None;
                if let Some(e) = error {
                    warn!(query = q.label(), error = %e, "streaming query terminated with an error");
                }
            }
        }
    }
}

/// Copies every query into the metrics and `/status`.
fn publish(shared: &Shared, queries: &mut BTreeMap<String, Query>, window: Duration) {
    let m = &shared.metrics;
    for q in queries.values_mut() {
        let label = q.label().to_string();
        if let Some(old) = q.exported.as_deref()
            && old != label
        {
            forget(m, old);
        }
        q.exported = Some(label.clone());
        export(m, &label, q);
    }
    let mut docs: Vec<serde_json::Value> = queries.values().map(|q| q.to_json(window)).collect();
    docs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let behind: Vec<String> = queries
        .values()
        .filter(|q| q.verdict.is_behind())
        .map(|q| q.label().to_string())
        .collect();
    shared.update(|s| {
        s.queries = serde_json::Value::Array(docs);
        s.behind = behind;
    });
}

fn export(m: &Metrics, label: &str, q: &Query) {
    let l = [label];
    m.query_behind
        .with_label_values(&l)
        .set(i64::from(q.verdict.is_behind()));
    let Some(p) = &q.last else { return };
    let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    m.query_input_rows_per_second
        .with_label_values(&l)
        .set(or_nan(p.input_rows_per_second));
    m.query_processed_rows_per_second
        .with_label_values(&l)
        .set(or_nan(p.processed_rows_per_second));
    if let Some(d) = p.batch_duration_ms {
        m.query_batch_duration_seconds
            .with_label_values(&l)
            .set(d / 1000.0);
    }
    for (phase, ms) in &p.durations_ms {
        m.query_batch_phase_seconds
            .with_label_values(&[label, phase.as_str()])
            .set(ms / 1000.0);
    }
    if let Some(n) = p.num_input_rows {
        m.query_batch_rows.with_label_values(&l).set(n as i64);
    }
    if let Some(n) = p.state_rows {
        m.query_state_rows.with_label_values(&l).set(n as i64);
    }
    if let Some(n) = p.state_memory_bytes {
        m.query_state_memory_bytes
            .with_label_values(&l)
            .set(n as i64);
    }
    if let Some(w) = p.watermark_ms {
        m.query_watermark_timestamp_seconds
            .with_label_values(&l)
            .set(w as f64 / 1000.0);
    }
    if let Some(lag) = p.watermark_lag_seconds() {
        m.query_watermark_lag_seconds.with_label_values(&l).set(lag);
    }
    if let Some(b) = p.backlog() {
        m.query_backlog.with_label_values(&l).set(b);
    }
}

/// Drops a label's series (a query renamed).
fn forget(m: &Metrics, label: &str) {
    let l = [label];
    let _ = m.query_behind.remove_label_values(&l);
    let _ = m.query_input_rows_per_second.remove_label_values(&l);
    let _ = m.query_processed_rows_per_second.remove_label_values(&l);
    let _ = m.query_batch_duration_seconds.remove_label_values(&l);
    let _ = m.query_batch_rows.remove_label_values(&l);
    let _ = m.query_state_rows.remove_label_values(&l);
    let _ = m.query_state_memory_bytes.remove_label_values(&l);
    let _ = m.query_watermark_timestamp_seconds.remove_label_values(&l);
    let _ = m.query_watermark_lag_seconds.remove_label_values(&l);
    let _ = m.query_backlog.remove_label_values(&l);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress_line(
        id: &str,
        run: &str,
        batch: i64,
        t: &str,
        input: f64,
        processed: f64,
    ) -> Event {
        let line = format!(
            r#"{{"Event":"org.apache.spark.sql.streaming.StreamingQueryListener$QueryProgressEvent","progress":{{"id":"{id}","runId":"{run}","name":"rate","timestamp":"{t}","batchId":{batch},"batchDuration":900,"durationMs":{{"addBatch":700,"triggerExecution":900}},"eventTime":{{}},"stateOperators":[],"sources":[{{"description":"rate","startOffset":"1","endOffset":"2","latestOffset":"2","numInputRows":10,"inputRowsPerSecond":{input},"processedRowsPerSecond":{processed},"metrics":{{}}}}],"sink":{{"description":"noop","numOutputRows":0}},"observedMetrics":{{}}}}}}"#
        );
        progress::parse_line(line.as_bytes()).expect("a progress event")
    }

    #[test]
    fn progress_into_metrics_status_and_verdicts() {
        let shared = Shared::new();
        let w = Duration::from_secs(2);
        let mut qs = BTreeMap::new();
        for (i, t) in ["00", "01", "02", "03"].iter().enumerate() {
            let e = progress_line(
                "q1",
                "r1",
                i as i64,
                &format!("2026-12-01T10:00:{t}.000Z"),
                20.0,
                10.0,
            );
            apply(&mut qs, e, w);
        }
        publish(&shared, &mut qs, w);
        let text = shared.metrics.render();
        assert!(
            text.contains("sparkvisor_query_behind{query=\"rate\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "sparkvisor_query_batch_phase_seconds{phase=\"addBatch\",query=\"rate\"} 0.7"
        ));
        assert!(text.contains("sparkvisor_query_backlog{query=\"rate\"} 0"));
        let s = shared.snapshot();
        assert_eq!(s.behind, ["rate"]);
        assert_eq!(s.queries[0]["progress"]["batch_id"], 3);
        assert_eq!(s.queries[0]["behind"], true);
        // A new run (restart) starts the window over.
        apply(
            &mut qs,
            progress_line("q1", "r2", 4, "2026-12-01T10:00:04.000Z", 20.0, 10.0),
            w,
        );
        publish(&shared, &mut qs, w);
        assert!(shared.snapshot().behind.is_empty());
        // Idle triggers keep it caught up.
        apply(
            &mut qs,
            Event::Idle {
                id: "q1".into(),
                run_id: "r2".into(),
                at_ms: Some(1_796_119_207_000),
            },
            w,
        );
        assert!(!qs["q1"].verdict.is_behind());
        apply(
            &mut qs,
            Event::Terminated {
                id: "q1".into(),
                run_id: "r2".into(),
                error: None,
            },
            w,
        );
        publish(&shared, &mut qs, w);
        assert_eq!(shared.snapshot().queries[0]["active"], false);
    }
}
