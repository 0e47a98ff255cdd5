//! "Falling behind": a query is behind when, for a whole window of its own
//! batches, it processed rows more slowly than they arrived, or its source
//! backlog grew and never emptied.
//!
//! Times are the batches' trigger times (Spark's own timestamps), so the
//! verdict depends only on what Spark reported, not on when sparkvisor
//! read it. The window is covered when the history holds a batch at least
//! `window` older than the newest; every batch from that one on must show
//! the symptom.
//!
//! Invariants: pure; an idle stream is never behind (a batch without input
//! rows, or an idle trigger, inside the window clears the verdict); a rate
//! Spark could not compute (the first batch of a run) breaks the rate
//! streak; a window of zero is never behind; a history shorter than the
//! window is not behind yet.

use std::collections::VecDeque;
use std::time::Duration;

/// What one batch (or idle trigger) tells about keeping up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The trigger's start (Unix milliseconds).
    pub at_ms: i64,
    pub rows: u64,
    pub input_rate: Option<f64>,
    pub processed_rate: Option<f64>,
    /// The source backlog, where the source reports one.
    pub backlog: Option<f64>,
    /// An idle trigger (no new data).
    pub idle: bool,
}

impl Sample {
    /// An idle trigger at `at_ms`.
    pub fn idle(at_ms: i64) -> Sample {
        Sample {
            at_ms,
            rows: 0,
            input_rate: None,
            processed_rate: None,
            backlog: None,
            idle: true,
        }
    }

    fn has_data(&self) -> bool {
        !self.idle && self.rows > 0
    }

    fn slower_than_input(&self) -> bool {
        matches!((self.processed_rate, self.input_rate), (Some(p), Some(i)) if p < i)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    CaughtUp,
    /// Rows were processed more slowly than they arrived in every batch of
    /// the window.
    SlowerThanInput,
    /// The backlog grew over the window and was never empty.
    BacklogGrowing {
        from: f64,
        to: f64,
    },
}

impl Verdict {
    pub fn is_behind(self) -> bool {
        self != Verdict::CaughtUp
    }

    /// Why, for `/status` and `/ready`.
    pub fn reason(self, window: Duration) -> Option<String> {
        let w = humantime::format_duration(window);
        match self {
            Verdict::CaughtUp => None,
            Verdict::SlowerThanInput => Some(format!(
                "processed rows more slowly than they arrived for {w}"
            )),
            Verdict::BacklogGrowing { from, to } => {
                Some(format!("backlog grew from {from} to {to} over {w}"))
            }
        }
    }
}

/// Judges a history ordered oldest first.
pub fn assess(history: &VecDeque<Sample>, window: Duration) -> Verdict {
    let Some(last) = history.back() else {
        return Verdict::CaughtUp;
    };
    let window_ms = window.as_millis().min(i64::MAX as u128) as i64;
    if window_ms == 0 {
        return Verdict::CaughtUp;
    }
    let start = last.at_ms.saturating_sub(window_ms);
    // The newest batch at least a window old opens the window.
    let Some(open) = history.iter().rposition(|s| s.at_ms <= start) else {
        return Verdict::CaughtUp;
    };
    let span: Vec<&Sample> = history.iter().skip(open).collect();
    if !span.iter().all(|s| s.has_data()) {
        return Verdict::CaughtUp;
    }
    if span.iter().all(|s| s.slower_than_input()) {
        return Verdict::SlowerThanInput;
    }
    let backlogs: Option<Vec<f64>> = span.iter().map(|s| s.backlog).collect();
    if let Some(b) = backlogs
        && b.iter().all(|&n| n > 0.0)
        && b[b.len() - 1] > b[0]
    {
        return Verdict::BacklogGrowing {
            from: b[0],
            to: b[b.len() - 1],
        };
    }
    Verdict::CaughtUp
}

/// Adds `sample` and forgets what no future verdict needs (batches older
/// than the one that opens the window). Out-of-order samples are dropped.
pub fn record(history: &mut VecDeque<Sample>, sample: Sample, window: Duration) {
    if history.back().is_some_and(|b| sample.at_ms < b.at_ms) {
        return;
    }
    history.push_back(sample);
    let window_ms = window.as_millis().min(i64::MAX as u128) as i64;
    let start = sample.at_ms.saturating_sub(window_ms);
    while history.len() > 1 && history[1].at_ms <= start {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn batch(at_s: i64, input: f64, processed: f64, backlog: Option<f64>) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            rows: 100,
            input_rate: Some(input),
            processed_rate: Some(processed),
            backlog,
            idle: false,
        }
    }

    fn history(samples: &[Sample]) -> VecDeque<Sample> {
        let mut h = VecDeque::new();
        for s in samples {
            record(&mut h, *s, W);
        }
        h
    }

    #[test]
    fn slower_than_input_for_the_whole_window() {
        let slow: Vec<Sample> = (0..=6).map(|i| batch(i * 10, 100.0, 80.0, None)).collect();
        assert_eq!(assess(&history(&slow), W), Verdict::SlowerThanInput);
        // Not yet: the history does not cover the window.
        assert_eq!(assess(&history(&slow[..6]), W), Verdict::CaughtUp);
        // One batch that kept up inside the window clears it.
        let mut mixed = slow.clone();
        mixed[3].processed_rate = Some(120.0);
        assert_eq!(assess(&history(&mixed), W), Verdict::CaughtUp);
        // ... but not once it has left the window.
        for t in [70, 80, 90] {
            mixed.push(batch(t, 100.0, 80.0, None));
            assert_eq!(assess(&history(&mixed), W), Verdict::CaughtUp, "{t}");
        }
        mixed.push(batch(100, 100.0, 80.0, None));
        assert_eq!(assess(&history(&mixed), W), Verdict::SlowerThanInput);
        // Back to keeping up: caught up at once.
        mixed.push(batch(110, 100.0, 300.0, None));
        assert_eq!(assess(&history(&mixed), W), Verdict::CaughtUp);
    }

    #[test]
    fn growing_backlog_that_never_empties() {
        // Rates equal (a capped batch size) but the backlog grows.
        let grow: Vec<Sample> = (0..=6)
            .map(|i| batch(i * 10, 100.0, 100.0, Some(1000.0 + 50.0 * i as f64)))
            .collect();
        assert_eq!(
            assess(&history(&grow), W),
            Verdict::BacklogGrowing {
                from: 1000.0,
                to: 1300.0
            }
        );
        // A backlog that emptied once in the window is caught up.
        let mut emptied = grow.clone();
        emptied[2].backlog = Some(0.0);
        assert_eq!(assess(&history(&emptied), W), Verdict::CaughtUp);
        // A steady backlog is not growing.
        let steady: Vec<Sample> = (0..=6)
            .map(|i| batch(i * 10, 100.0, 100.0, Some(500.0)))
            .collect();
        assert_eq!(assess(&history(&steady), W), Verdict::CaughtUp);
        // A source that stops reporting its backlog cannot grow.
        let mut unreported = grow;
        unreported[4].backlog = None;
        assert_eq!(assess(&history(&unreported), W), Verdict::CaughtUp);
    }

    #[test]
    fn an_idle_stream_is_never_behind() {
        let mut idle: Vec<Sample> = (0..=6)
            .map(|i| batch(i * 10, 100.0, 80.0, Some(10.0 * i as f64 + 1.0)))
            .collect();
        idle[4] = Sample::idle(40_000);
        assert_eq!(assess(&history(&idle), W), Verdict::CaughtUp);
        let mut empty_batch = idle.clone();
        empty_batch[4] = Sample {
            rows: 0,
            idle: false,
            ..batch(40, 0.0, 0.0, Some(0.0))
        };
        assert_eq!(assess(&history(&empty_batch), W), Verdict::CaughtUp);
        assert_eq!(assess(&VecDeque::new(), W), Verdict::CaughtUp);
    }

    #[test]
    fn unknown_rates_and_zero_window() {
        let mut first: Vec<Sample> = (0..=6).map(|i| batch(i * 10, 100.0, 80.0, None)).collect();
        first[1].input_rate = None;
        assert_eq!(assess(&history(&first), W), Verdict::CaughtUp);
        let slow: Vec<Sample> = (0..=6).map(|i| batch(i * 10, 100.0, 80.0, None)).collect();
        assert_eq!(assess(&history(&slow), Duration::ZERO), Verdict::CaughtUp);
    }

    #[test]
    fn history_keeps_only_what_the_window_needs() {
        let h = history(
            &(0..100)
                .map(|i| batch(i * 10, 1.0, 1.0, None))
                .collect::<Vec<_>>(),
        );
        // The opener (60 s before the newest) and everything after it.
        assert_eq!(h.len(), 7);
        assert_eq!(h.front().unwrap().at_ms, 930_000);
        let mut h = h;
        record(&mut h, batch(1, 1.0, 1.0, None), W);
        assert_eq!(h.len(), 7, "an older sample is dropped");
        assert!(Verdict::SlowerThanInput.reason(W).unwrap().contains("1m"));
    }
}
