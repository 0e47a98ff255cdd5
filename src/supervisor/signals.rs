//! Signals sparkvisor handles: TERM and INT start a graceful stop; HUP,
//! QUIT (JVM thread dump), USR1, USR2 and WINCH are forwarded to the app.
//!
//! Invariant: handlers are installed before the app starts, so as PID 1
//! (where unhandled signals are ignored by the kernel) nothing is lost.

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

pub const FORWARDED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// What a received signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// TERM/INT: stop gracefully (a second one forces the kill).
    Stop(Signal),
    /// Pass the signal on to the app.
    Forward(Signal),
}

pub struct Signals {
    term: Stream,
    int: Stream,
    forwarded: Vec<(Signal, Stream)>,
}

impl Signals {
    pub fn install() -> io::Result<Self> {
        let mut forwarded = Vec::new();
        for s in FORWARDED {
            forwarded.push((s, signal(SignalKind::from_raw(s as i32))?));
        }
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            forwarded,
        })
    }

    pub async fn recv(&mut self) -> Request {
        let Signals {
            term,
            int,
            forwarded,
        } = self;
        let (a, b, c, d, e) = match forwarded.as_mut_slice() {
            [a, b, c, d, e] => (a, b, c, d, e),
            _ => unreachable!("five forwarded signals are installed"),
        };
        tokio::select! {
            _ = term.recv() => Request::Stop(Signal::SIGTERM),
            _ = int.recv() => Request::Stop(Signal::SIGINT),
            _ = a.1.recv() => Request::Forward(a.0),
            _ = b.1.recv() => Request::Forward(b.0),
            _ = c.1.recv() => Request::Forward(c.0),
            _ = d.1.recv() => Request::Forward(d.0),
            _ = e.1.recv() => Request::Forward(e.0),
        }
    }
}
