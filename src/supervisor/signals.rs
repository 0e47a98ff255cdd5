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
    /// One stream per entry of [`FORWARDED`], same order.
    forwarded: [Stream; 5],
}

impl Signals {
    pub fn install() -> io::Result<Self> {
        let stream = |s: Signal| signal(SignalKind::from_raw(s as i32));
        let [hup, quit, usr1, usr2, winch] = FORWARDED;
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            forwarded: [
                stream(hup)?,
                stream(quit)?,
                stream(usr1)?,
                stream(usr2)?,
                stream(winch)?,
            ],
        })
    }

    pub async fn recv(&mut self) -> Request {
        let [hup, quit, usr1, usr2, winch] = &mut self.forwarded;
        tokio::select! {
            _ = self.term.recv() => Request::Stop(Signal::SIGTERM),
            _ = self.int.recv() => Request::Stop(Signal::SIGINT),
            _ = hup.recv() => Request::Forward(FORWARDED[0]),
            _ = quit.recv() => Request::Forward(FORWARDED[1]),
            _ = usr1.recv() => Request::Forward(FORWARDED[2]),
            _ = usr2.recv() => Request::Forward(FORWARDED[3]),
            _ = winch.recv() => Request::Forward(FORWARDED[4]),
        }
    }
}
