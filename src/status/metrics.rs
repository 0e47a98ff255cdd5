//! The Prometheus metrics of DESIGN.md (prefix `sparkvisor_`), in a registry
//! of their own.
//!
//! Invariants: names and types follow the contract (counters end in
//! `_total`); the only labels are `class` (six values), `query` (one per
//! streaming query) and `phase` (the keys of Spark's `durationMs`, about
//! seven), so cardinality stays small; every metric has HELP text.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::exit::ExitClass;

pub struct Metrics {
    registry: Registry,
    pub child_up: IntGauge,
    pub child_starts_total: IntCounter,
    pub child_exits_total: IntCounterVec,
    pub restart_backoff_seconds: Gauge,
    pub ready: IntGauge,
    pub cgroup_cpu_limit_cores: Gauge,
    pub cgroup_memory_limit_bytes: Gauge,
    pub spark_local_threads: IntGauge,
    pub spark_driver_memory_bytes: IntGauge,
    pub checkpoint_last_committed_batch: IntGaugeVec,
    pub checkpoint_last_commit_age_seconds: GaugeVec,
    pub checkpoint_inflight_batch_age_seconds: GaugeVec,
    pub checkpoint_repairs_total: IntCounter,
    pub s3_sync_files_total: IntCounter,
    pub s3_sync_bytes_total: IntCounter,
    pub s3_sync_errors_total: IntCounter,
    pub s3_last_sync_timestamp_seconds: Gauge,
    pub s3_restore_seconds: Gauge,
    pub s3_fenced: IntGauge,
    pub jvm_cds_archive_used: IntGauge,
    pub drain_seconds: Gauge,
    pub drain_timeouts_total: IntCounter,
    pub recovery_seconds: Gauge,
    pub recovery_duration_seconds: Histogram,
    pub query_input_rows_per_second: GaugeVec,
    pub query_processed_rows_per_second: GaugeVec,
    pub query_batch_duration_seconds: GaugeVec,
    pub query_batch_phase_seconds: GaugeVec,
    pub query_batch_rows: IntGaugeVec,
    pub query_state_rows: IntGaugeVec,
    pub query_state_memory_bytes: IntGaugeVec,
    pub query_watermark_lag_seconds: GaugeVec,
    pub query_watermark_timestamp_seconds: GaugeVec,
    pub query_backlog: GaugeVec,
    pub query_behind: IntGaugeVec,
    pub eventlog_sync_files_total: IntCounter,
    pub eventlog_sync_bytes_total: IntCounter,
    pub eventlog_sync_errors_total: IntCounter,
    pub eventlog_last_sync_timestamp_seconds: Gauge,
    pub eventlog_local_bytes: IntGauge,
    pub eventlog_dropped_files_total: IntCounter,
    /// Every registered family's full name.
    names: Vec<String>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("sparkvisor")
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let n = std::cell::RefCell::new(Vec::new());
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            names: &std::cell::RefCell<Vec<String>>,
            c: T,
        ) -> T {
            names
                .borrow_mut()
                .extend(c.desc().iter().map(|d| d.fq_name.clone()));
            r.register(Box::new(c.clone()))
                .expect("metric names are unique and valid");
            c
        }
        let q = |name: &str, help: &str| {
            reg(&r, &n, GaugeVec::new(opts(name, help), &["query"]).unwrap())
        };
        let qi = |name: &str, help: &str| {
            reg(
                &r,
                &n,
                IntGaugeVec::new(opts(name, help), &["query"]).unwrap(),
            )
        };
        let m = Metrics {
            child_up: reg(&r, &n, IntGauge::with_opts(opts("child_up", "1 while the Spark app's process runs")).unwrap()),
            child_starts_total: reg(&r, &n, IntCounter::with_opts(opts("child_starts_total", "Starts of spark-submit, the first one included")).unwrap()),
            child_exits_total: reg(
                &r,
                &n,
                IntCounterVec::new(
                    opts("child_exits_total", "Ends of the Spark app by class: stopped, completed, failed, signaled, oom_killed, stalled"),
                    &["class"],
                )
                .unwrap(),
            ),
            restart_backoff_seconds: reg(&r, &n, Gauge::with_opts(opts("restart_backoff_seconds", "Delay before the pending restart (0 when none is pending)")).unwrap()),
            ready: reg(&r, &n, IntGauge::with_opts(opts("ready", "1 when /ready answers 200")).unwrap()),
            cgroup_cpu_limit_cores: reg(&r, &n, Gauge::with_opts(opts("cgroup_cpu_limit_cores", "CPU limit used for sizing (host CPUs when there is no limit)")).unwrap()),
            cgroup_memory_limit_bytes: reg(&r, &n, Gauge::with_opts(opts("cgroup_memory_limit_bytes", "Memory limit used for sizing (host memory when there is no limit)")).unwrap()),
            spark_local_threads: reg(&r, &n, IntGauge::with_opts(opts("spark_local_threads", "N in local[N,F] (the driver's processor count in client mode)")).unwrap()),
            spark_driver_memory_bytes: reg(&r, &n, IntGauge::with_opts(opts("spark_driver_memory_bytes", "Driver heap (--driver-memory)")).unwrap()),
            checkpoint_last_committed_batch: reg(
                &r,
                &n,
                IntGaugeVec::new(opts("checkpoint_last_committed_batch", "Latest committed batch id per streaming query"), &["query"]).unwrap(),
            ),
            checkpoint_last_commit_age_seconds: reg(
                &r,
                &n,
                GaugeVec::new(opts("checkpoint_last_commit_age_seconds", "Seconds since the latest commit per streaming query"), &["query"]).unwrap(),
            ),
            checkpoint_inflight_batch_age_seconds: reg(
                &r,
                &n,
                GaugeVec::new(
                    opts("checkpoint_inflight_batch_age_seconds", "Age of the planned but not yet committed batch per query (0 when none)"),
                    &["query"],
                )
                .unwrap(),
            ),
            checkpoint_repairs_total: reg(&r, &n, IntCounter::with_opts(opts("checkpoint_repairs_total", "Torn checkpoint files quarantined or temp files removed before a start")).unwrap()),
            s3_sync_files_total: reg(&r, &n, IntCounter::with_opts(opts("s3_sync_files_total", "Checkpoint files uploaded to S3")).unwrap()),
            s3_sync_bytes_total: reg(&r, &n, IntCounter::with_opts(opts("s3_sync_bytes_total", "Checkpoint bytes uploaded to S3")).unwrap()),
            s3_sync_errors_total: reg(&r, &n, IntCounter::with_opts(opts("s3_sync_errors_total", "Failed S3 sync cycles")).unwrap()),
            s3_last_sync_timestamp_seconds: reg(&r, &n, Gauge::with_opts(opts("s3_last_sync_timestamp_seconds", "Unix time of the last successful S3 sync (0 before the first)")).unwrap()),
            s3_restore_seconds: reg(&r, &n, Gauge::with_opts(opts("s3_restore_seconds", "Duration of the restore from S3 at start (0 when none ran)")).unwrap()),
            jvm_cds_archive_used: reg(&r, &n, IntGauge::with_opts(opts("jvm_cds_archive_used", "1 when the current attempt's JVM uses a class-data-sharing archive")).unwrap()),
            query_input_rows_per_second: q("query_input_rows_per_second", "Rows per second that arrived in the latest batch (Spark's inputRowsPerSecond, over all sources)"),
            query_processed_rows_per_second: q("query_processed_rows_per_second", "Rows per second the latest batch processed (Spark's processedRowsPerSecond)"),
            query_batch_duration_seconds: q("query_batch_duration_seconds", "Duration of the latest batch (Spark's batchDuration)"),
            query_batch_phase_seconds: reg(
                &r,
                &n,
                GaugeVec::new(
                    opts("query_batch_phase_seconds", "Phases of the latest batch (Spark's durationMs: addBatch, latestOffset, walCommit, ...)"),
                    &["query", "phase"],
                )
                .unwrap(),
            ),
            query_batch_rows: qi("query_batch_rows", "Input rows of the latest batch"),
            query_state_rows: qi("query_state_rows", "Rows in the state stores of the query (Spark's numRowsTotal over its stateful operators)"),
            query_state_memory_bytes: qi("query_state_memory_bytes", "Memory used by the state stores of the query (Spark's memoryUsedBytes)"),
            query_watermark_lag_seconds: q("query_watermark_lag_seconds", "How far the watermark trailed the start of the latest batch"),
            query_watermark_timestamp_seconds: q("query_watermark_timestamp_seconds", "The query's event-time watermark (Unix time)"),
            query_backlog: q("query_backlog", "What the sources report as not yet read: offsets behind latest (Kafka-like sources) or pending files"),
            query_behind: qi("query_behind", "1 while the query falls behind (backlog growing, or processing slower than input, for telemetry.behind_window)"),
            eventlog_sync_files_total: reg(&r, &n, IntCounter::with_opts(opts("eventlog_sync_files_total", "Spark event log files uploaded to S3 (a growing file counts at each upload)")).unwrap()),
            eventlog_sync_bytes_total: reg(&r, &n, IntCounter::with_opts(opts("eventlog_sync_bytes_total", "Spark event log bytes uploaded to S3")).unwrap()),
            eventlog_sync_errors_total: reg(&r, &n, IntCounter::with_opts(opts("eventlog_sync_errors_total", "Failed event log uploads to S3")).unwrap()),
            eventlog_last_sync_timestamp_seconds: reg(&r, &n, Gauge::with_opts(opts("eventlog_last_sync_timestamp_seconds", "Unix time of the last event log sync to S3 without errors (0 before the first)")).unwrap()),
            eventlog_local_bytes: reg(&r, &n, IntGauge::with_opts(opts("eventlog_local_bytes", "Bytes of Spark event logs kept in eventlog.dir")).unwrap()),
            eventlog_dropped_files_total: reg(&r, &n, IntCounter::with_opts(opts("eventlog_dropped_files_total", "Event log files deleted locally (eventlog.local_retention) before they were uploaded")).unwrap()),
            s3_fenced: reg(&r, &n, IntGauge::with_opts(opts("s3_fenced", "1 when another sparkvisor took the checkpoint replica over: this one writes and deletes nothing more in S3")).unwrap()),
            drain_seconds: reg(&r, &n, Gauge::with_opts(opts("drain_seconds", "Duration of the last drain: from the stop request until the batches then in flight committed (or the timeout)")).unwrap()),
            drain_timeouts_total: reg(&r, &n, IntCounter::with_opts(opts("drain_timeouts_total", "Drains that reached supervisor.drain_timeout with batches uncommitted")).unwrap()),
            recovery_seconds: reg(&r, &n, Gauge::with_opts(opts("recovery_seconds", "The last recovery: from a failed attempt's end to the next committed batch (0 before the first)")).unwrap()),
            recovery_duration_seconds: reg(
                &r,
                &n,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "recovery_duration_seconds",
                        "Recoveries: from a failed attempt's end to the next committed batch",
                    )
                    .namespace("sparkvisor")
                    .buckets(crate::status::RECOVERY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            names: Vec::new(),
            registry: r,
        };
        let mut m = m;
        m.names = n.into_inner();
        // Every class is exported from the start, so rates work without gaps.
        for c in ExitClass::ALL {
            m.child_exits_total.with_label_values(&[c.as_str()]);
        }
        m
    }

    /// The full name of every metric family sparkvisor exports
    /// (`sparkvisor_…`), labelled ones included before their first value.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let m = Metrics::new();
        m.checkpoint_last_committed_batch
            .with_label_values(&["q"])
            .set(3);
        m.checkpoint_last_commit_age_seconds
            .with_label_values(&["q"])
            .set(1.0);
        m.checkpoint_inflight_batch_age_seconds
            .with_label_values(&["q"])
            .set(0.0);
        let text = m.render();
        for name in [
            "child_up",
            "child_starts_total",
            "child_exits_total",
            "restart_backoff_seconds",
            "ready",
            "cgroup_cpu_limit_cores",
            "cgroup_memory_limit_bytes",
            "spark_local_threads",
            "spark_driver_memory_bytes",
            "checkpoint_last_committed_batch",
            "checkpoint_last_commit_age_seconds",
            "checkpoint_inflight_batch_age_seconds",
            "checkpoint_repairs_total",
            "s3_sync_files_total",
            "s3_sync_bytes_total",
            "s3_sync_errors_total",
            "s3_last_sync_timestamp_seconds",
            "s3_restore_seconds",
            "drain_seconds",
            "drain_timeouts_total",
            "s3_fenced",
            "recovery_seconds",
            "recovery_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP sparkvisor_{name} ")),
                "{name}"
            );
        }
        assert!(text.contains("sparkvisor_child_exits_total{class=\"oom_killed\"} 0"));
        // Labelled families are named before their first value.
        for name in [
            "query_input_rows_per_second",
            "query_processed_rows_per_second",
            "query_batch_duration_seconds",
            "query_batch_rows",
            "query_state_rows",
            "query_state_memory_bytes",
            "query_watermark_lag_seconds",
            "query_backlog",
            "query_behind",
            "checkpoint_last_committed_batch",
            "child_up",
        ] {
            let full = format!("sparkvisor_{name}");
            assert!(m.names().contains(&full), "{full}");
        }
        assert!(!text.contains("sparkvisor_query_behind"));
        assert_eq!(
            m.names().len(),
            m.names()
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
        assert!(text.contains("# TYPE sparkvisor_child_starts_total counter"));
    }
}
