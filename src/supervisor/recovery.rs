//! Recovery time: from the end of a failed attempt to the next attempt's
//! first committed batch, and the phases in between. Pure: the supervisor
//! passes the instants in as it sees them.
//!
//! Phases, as offsets from the failure: `cleaned_up` (every process of the
//! failed attempt gone), `submitted` (the next spark-submit started, after
//! the backoff), `spark_api_up` (Spark's REST API answered), `first_commit`
//! (a query committed a batch newer than any before the start). Spark's own
//! query restart lies between the last two; with the batch in flight
//! re-run from its planned offsets there is no file that marks it.
//!
//! Invariants: a recovery starts only at a failure that is followed by a
//! restart; a later failure before the first commit keeps the first
//! failure's start (the user waited all along); offsets never go backwards.

use std::time::Instant;

use serde::Serialize;

/// A recovery in progress.
#[derive(Clone, Debug)]
pub struct Pending {
    failed: Instant,
    failed_unix: f64,
    /// How the attempt that began it ended (its exit class).
    class: String,
    cleaned_up: Option<Instant>,
    submitted: Option<Instant>,
    /// Attempts started during this recovery.
    attempts: u32,
}

/// One phase of a finished recovery.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    pub phase: &'static str,
    /// Seconds since the failure.
    pub at_seconds: f64,
}

/// A finished recovery, as `/status` `last_recovery` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finished {
    pub seconds: f64,
    pub failed_at_unix: f64,
    pub class: String,
    /// The attempt whose first commit ended it.
    pub attempt: u32,
    /// Attempts started before a batch committed (1 = the first restart).
    pub attempts: u32,
    pub phases: Vec<Mark>,
}

impl Pending {
    pub fn new(failed: Instant, failed_unix: f64, class: &str) -> Pending {
        Pending {
            failed,
            failed_unix,
            class: class.to_string(),
            cleaned_up: None,
            submitted: None,
            attempts: 0,
        }
    }

    pub fn cleaned_up(&mut self, at: Instant) {
        self.cleaned_up.get_or_insert(at);
    }

    /// A spark-submit of this recovery started.
    pub fn submitted(&mut self, at: Instant) {
        self.attempts += 1;
        self.submitted = Some(at);
    }

    /// The recovery ended with `attempt`'s first commit.
    pub fn finish(
        &self,
        attempt: u32,
        spark_api_up: Option<Instant>,
        first_commit: Instant,
    ) -> Finished {
        let off = |t: Instant| t.saturating_duration_since(self.failed).as_secs_f64();
        let mut phases = vec![Mark {
            phase: "failed",
            at_seconds: 0.0,
        }];
        let mut last = 0.0f64;
        for (phase, at) in [
            ("cleaned_up", self.cleaned_up),
            ("submitted", self.submitted),
            (
                "spark_api_up",
                spark_api_up.filter(|t| Some(*t) >= self.submitted),
            ),
            ("first_commit", Some(first_commit)),
        ] {
            if let Some(t) = at {
                last = last.max(off(t));
                phases.push(Mark {
                    phase,
                    at_seconds: round(last),
                });
            }
        }
        Finished {
            seconds: round(off(first_commit)),
            failed_at_unix: self.failed_unix,
            class: self.class.clone(),
            attempt,
            attempts: self.attempts,
            phases,
        }
    }
}

fn round(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// The log line of a finished recovery.
pub fn describe(f: &Finished) -> String {
    let mut out = format!(
        "recovered in {:.1} s after a failure ({}):",
        f.seconds, f.class
    );
    let mut prev = 0.0;
    for m in f.phases.iter().skip(1) {
        out.push_str(&format!(
            " {} +{:.1} s ({:.1})",
            m.phase,
            m.at_seconds - prev,
            m.at_seconds
        ));
        prev = m.at_seconds;
    }
    if f.attempts > 1 {
        out.push_str(&format!("; {} attempts", f.attempts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn phases_are_offsets_from_the_failure() {
        let t0 = Instant::now();
        let mut p = Pending::new(t0, 1000.0, "crashed");
        p.cleaned_up(t0 + MS(100));
        p.submitted(t0 + MS(150));
        let f = p.finish(2, Some(t0 + MS(9_000)), t0 + MS(12_500));
        assert_eq!(f.seconds, 12.5);
        assert_eq!(f.attempts, 1);
        let names: Vec<_> = f.phases.iter().map(|m| m.phase).collect();
        assert_eq!(
            names,
            [
                "failed",
                "cleaned_up",
                "submitted",
                "spark_api_up",
                "first_commit"
            ]
        );
        assert_eq!(f.phases[3].at_seconds, 9.0);
        let line = describe(&f);
        assert!(line.contains("recovered in 12.5 s"), "{line}");
        assert!(line.contains("first_commit +3.5 s (12.5)"), "{line}");
    }

    #[test]
    fn a_second_failure_keeps_the_first_start() {
        let t0 = Instant::now();
        let mut p = Pending::new(t0, 0.0, "crashed");
        p.cleaned_up(t0 + MS(100));
        p.submitted(t0 + MS(200));
        // That attempt died before committing; the recovery goes on.
        p.cleaned_up(t0 + MS(5_000));
        p.submitted(t0 + MS(7_000));
        let f = p.finish(3, None, t0 + MS(20_000));
        assert_eq!(f.seconds, 20.0);
        assert_eq!(f.attempts, 2);
        assert_eq!(f.phases[1].at_seconds, 0.1, "the first cleanup");
        assert_eq!(f.phases[2].at_seconds, 7.0, "the last start");
        assert!(describe(&f).contains("2 attempts"));
    }

    #[test]
    fn an_api_answer_from_before_the_start_is_not_this_recovery_s() {
        let t0 = Instant::now();
        let mut p = Pending::new(t0 + MS(1_000), 0.0, "crashed");
        p.submitted(t0 + MS(1_200));
        let f = p.finish(2, Some(t0), t0 + MS(5_000));
        assert!(f.phases.iter().all(|m| m.phase != "spark_api_up"));
    }
}
