//! Classification of an attempt's end. Pure.
//!
//! Invariants: anything that ends after a stop was requested is `stopped`;
//! a kill by sparkvisor for lack of progress is `stalled`; a SIGKILL with
//! the cgroup OOM counter risen is `oom_killed`; otherwise exit code 0 is
//! `completed`, another code `failed`, a signal `signaled`.

use nix::sys::signal::Signal;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitClass {
    Stopped,
    Completed,
    Failed,
    Signaled,
    OomKilled,
    Stalled,
}

impl ExitClass {
    pub const ALL: [ExitClass; 6] = [
        ExitClass::Stopped,
        ExitClass::Completed,
        ExitClass::Failed,
        ExitClass::Signaled,
        ExitClass::OomKilled,
        ExitClass::Stalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitClass::Stopped => "stopped",
            ExitClass::Completed => "completed",
            ExitClass::Failed => "failed",
            ExitClass::Signaled => "signaled",
            ExitClass::OomKilled => "oom_killed",
            ExitClass::Stalled => "stalled",
        }
    }

    /// Whether `on-failure` restarts after this class.
    pub fn is_failure(self) -> bool {
        !matches!(self, ExitClass::Stopped | ExitClass::Completed)
    }
}

/// How the main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl Termination {
    /// The shell convention: the code, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            Termination::Exited(c) => c,
            Termination::Signaled(s) => 128 + s,
        }
    }
}

/// What the supervisor knew when the process ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    pub stop_requested: bool,
    pub killed_for_stall: bool,
    pub oom_kills_before: Option<u64>,
    pub oom_kills_after: Option<u64>,
}

pub fn classify(t: Termination, ctx: Context) -> ExitClass {
    if ctx.stop_requested {
        return ExitClass::Stopped;
    }
    if ctx.killed_for_stall {
        return ExitClass::Stalled;
    }
    let oom_rose = matches!(
        (ctx.oom_kills_before, ctx.oom_kills_after),
        (Some(b), Some(a)) if a > b
    );
    match t {
        Termination::Signaled(s) if s == Signal::SIGKILL as i32 && oom_rose => ExitClass::OomKilled,
        Termination::Exited(137) if oom_rose => ExitClass::OomKilled,
        Termination::Exited(0) => ExitClass::Completed,
        Termination::Exited(_) => ExitClass::Failed,
        Termination::Signaled(_) => ExitClass::Signaled,
    }
}

/// sparkvisor's own exit code after a requested stop: 0 when the app ended
/// cleanly (0, 128+stop signal, or killed by the stop signal — the JVM's 143
/// after SIGTERM counts as clean), else the app's code.
pub fn stop_exit_code(t: Termination, stop_signal: Signal) -> i32 {
    let s = stop_signal as i32;
    match t {
        Termination::Exited(0) => 0,
        Termination::Exited(c) if c == 128 + s => 0,
        Termination::Signaled(sig) if sig == s => 0,
        other => other.code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::default()
    }

    #[test]
    fn classes() {
        assert_eq!(
            classify(Termination::Exited(0), ctx()),
            ExitClass::Completed
        );
        assert_eq!(classify(Termination::Exited(1), ctx()), ExitClass::Failed);
        assert_eq!(
            classify(Termination::Signaled(9), ctx()),
            ExitClass::Signaled
        );
        assert_eq!(
            classify(Termination::Signaled(11), ctx()),
            ExitClass::Signaled
        );
        let stop = Context {
            stop_requested: true,
            ..ctx()
        };
        assert_eq!(classify(Termination::Exited(143), stop), ExitClass::Stopped);
        assert_eq!(classify(Termination::Exited(1), stop), ExitClass::Stopped);
        let stall = Context {
            killed_for_stall: true,
            ..ctx()
        };
        assert_eq!(
            classify(Termination::Signaled(9), stall),
            ExitClass::Stalled
        );
    }

    #[test]
    fn oom_needs_the_counter_to_rise() {
        let rose = Context {
            oom_kills_before: Some(1),
            oom_kills_after: Some(2),
            ..ctx()
        };
        assert_eq!(
            classify(Termination::Signaled(9), rose),
            ExitClass::OomKilled
        );
        let same = Context {
            oom_kills_before: Some(2),
            oom_kills_after: Some(2),
            ..ctx()
        };
        assert_eq!(
            classify(Termination::Signaled(9), same),
            ExitClass::Signaled
        );
        assert_eq!(
            classify(Termination::Signaled(9), ctx()),
            ExitClass::Signaled
        );
    }

    #[test]
    fn stop_codes() {
        let term = Signal::SIGTERM;
        assert_eq!(stop_exit_code(Termination::Exited(143), term), 0);
        assert_eq!(stop_exit_code(Termination::Exited(0), term), 0);
        assert_eq!(stop_exit_code(Termination::Signaled(15), term), 0);
        assert_eq!(stop_exit_code(Termination::Signaled(9), term), 137);
        assert_eq!(stop_exit_code(Termination::Exited(3), term), 3);
        assert_eq!(Termination::Signaled(9).code(), 137);
    }
}
