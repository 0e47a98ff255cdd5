//! Logging setup: tracing to stderr, as text or JSON lines, and the panic
//! hook.
//!
//! Invariants: initialised once, before anything logs; the filter comes
//! from `log.level` unless `SPARKVISOR_LOG` is set (same syntax as
//! RUST_LOG). A panic anywhere is logged with its thread and location
//! (through tracing once a subscriber is set, in the same format as every
//! other line; on stderr by the default hook before that), and its location
//! is kept for the task that catches it (`crate::tasks`).

use std::cell::RefCell;
use std::io::IsTerminal;
use std::sync::Once;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("SPARKVISOR_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

thread_local! {
    /// Where the last panic on this thread happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The location (`file:line:col`) of the last panic on this thread, once.
pub fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(|l| l.borrow_mut().take())
}

/// Installs the panic hook (once per process; later calls do nothing).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|l| *l.borrow_mut() = location.clone());
            if !tracing::dispatcher::has_been_set() {
                default(info);
                return;
            }
            let thread = std::thread::current();
            let message = panic_message(info.payload());
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| backtrace.to_string());
            tracing::error!(
                panic.message = %message,
                panic.location = location.as_deref().unwrap_or("unknown"),
                panic.thread = thread.name().unwrap_or("unnamed"),
                panic.backtrace = backtrace,
                "panic in sparkvisor"
            );
        }));
    });
}

/// The message of a panic payload (`panic!` with a literal or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
