//! Restart pacing: capped exponential backoff with jitter, reset after a
//! healthy run, and the crash-loop budget. Pure; time is passed in.
//!
//! Invariants: the delay never exceeds `max`; without jitter, delays double
//! from `initial`; a run of at least `reset_after` resets the sequence; an
//! attempt that committed a batch (progress) is not part of a crash loop:
//! the next start is immediate and the sequence starts over (the caller
//! leaves such restarts out of the budget, too); the
//! budget refuses a restart once `max_restarts` restarts happened within
//! `window` (so `max_restarts = 0` never restarts).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Jitter spreads delays by ±20%, enough to de-synchronise many pods while
/// keeping consecutive delays strictly growing (1.2·d < 0.8·2d).
pub const JITTER: f64 = 0.2;

/// The delay before restart number `failures` (1 = first restart).
/// `sample` is a uniform random number in [0, 1).
pub fn delay(failures: u32, initial: Duration, max: Duration, sample: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let base = initial.as_secs_f64() * 2f64.powi(exp as i32);
    let base = base.min(max.as_secs_f64());
    let factor = 1.0 - JITTER + 2.0 * JITTER * sample.clamp(0.0, 1.0);
    Duration::from_secs_f64((base * factor).min(max.as_secs_f64()))
}

/// Consecutive-failure counter with reset after a healthy run.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            reset_after,
            failures: 0,
        }
    }

    /// Records an attempt that ran for `runtime` (and committed a batch
    /// when `progressed`) and returns the delay before the next start.
    pub fn next_delay(&mut self, runtime: Duration, progressed: bool, sample: f64) -> Duration {
        if progressed {
            self.failures = 0;
            return Duration::ZERO;
        }
        if runtime >= self.reset_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        delay(self.failures, self.initial, self.max, sample)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The crash-loop budget: at most `max_restarts` restarts per `window`.
#[derive(Debug, Clone)]
pub struct Budget {
    max_restarts: u32,
    window: Duration,
    restarts: VecDeque<Instant>,
}

impl Budget {
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        Budget {
            max_restarts,
            window,
            restarts: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(t) = self.restarts.front() {
            if now.duration_since(*t) >= self.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether another restart is allowed at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.prune(now);
        (self.restarts.len() as u64) < u64::from(self.max_restarts)
    }

    /// Records a restart at `now`.
    pub fn record(&mut self, now: Instant) {
        self.restarts.push_back(now);
    }

    /// Restarts counted in the current window.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.restarts.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_initial_up_to_max() {
        let d: Vec<u64> = (1..=8)
            .map(|n| delay(n, S(1), S(30), 0.5).as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn jitter_stays_in_band_and_under_max() {
        for i in 0..100 {
            let s = i as f64 / 100.0;
            let d = delay(3, S(1), S(60), s).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
            assert!(delay(20, S(1), S(60), s) <= S(60));
        }
    }

    #[test]
    fn consecutive_delays_grow_whatever_the_jitter() {
        for (a, b) in [(0.999, 0.0), (0.5, 0.5), (0.0, 0.999)] {
            for n in 1..5 {
                assert!(delay(n, S(1), S(600), a) < delay(n + 1, S(1), S(600), b));
            }
        }
    }

    #[test]
    fn healthy_run_resets_the_sequence() {
        let mut b = Backoff::new(S(1), S(60), S(120));
        assert_eq!(b.next_delay(S(5), false, 0.5), S(1));
        assert_eq!(b.next_delay(S(5), false, 0.5), S(2));
        assert_eq!(b.next_delay(S(5), false, 0.5), S(4));
        assert_eq!(b.next_delay(S(300), false, 0.5), S(1));
        assert_eq!(b.failures(), 1);
    }

    #[test]
    fn progress_restarts_at_once_and_starts_the_sequence_over() {
        let mut b = Backoff::new(S(1), S(60), S(120));
        assert_eq!(b.next_delay(S(5), false, 0.5), S(1));
        assert_eq!(b.next_delay(S(5), false, 0.5), S(2));
        // Committed a batch, however short the run: no delay.
        assert_eq!(b.next_delay(S(5), true, 0.5), Duration::ZERO);
        assert_eq!(b.failures(), 0);
        // The next attempt that dies without progress starts from initial.
        assert_eq!(b.next_delay(S(5), false, 0.5), S(1));
    }

    #[test]
    fn budget_counts_within_the_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, S(60));
        assert!(b.allows(t0));
        b.record(t0);
        assert!(b.allows(t0 + S(1)));
        b.record(t0 + S(1));
        assert!(!b.allows(t0 + S(2)));
        assert_eq!(b.used(t0 + S(2)), 2);
        // The first restart leaves the window.
        assert!(b.allows(t0 + S(60)));
        assert_eq!(b.used(t0 + S(60)), 1);
    }

    #[test]
    fn zero_budget_never_restarts() {
        let mut b = Budget::new(0, S(60));
        assert!(!b.allows(Instant::now()));
    }
}
