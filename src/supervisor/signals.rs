//! What asks the supervisor loop to act from outside: signals (TERM and
//! INT start a graceful stop; HUP, QUIT for a JVM thread dump, USR1, USR2
//! and WINCH are forwarded to the app) and the death of one of
//! sparkvisor's essential tasks (`crate::tasks`), which stops the app too.
//!
//! Invariant: handlers are installed first thing in `run`, before the
//! configuration is read, so a TERM during start-up is never lost (as
//! PID 1 an unhandled TERM is ignored by the kernel) and never kills
//! sparkvisor half-way through a step.

use std::io;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};
use tokio::sync::mpsc;

use crate::tasks::Died;

pub const FORWARDED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// What a received signal (or a dead task) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// TERM/INT: stop gracefully (a second one forces the kill).
    Stop(Signal),
    /// Pass the signal on to the app.
    Forward(Signal),
    /// An essential task died: stop the app gracefully, then exit non-zero.
    Failed(Died),
}

pub struct Signals {
    term: Stream,
    int: Stream,
    /// One stream per entry of [`FORWARDED`], same order.
    forwarded: [Stream; 5],
    /// Deaths of essential tasks, once they are spawned.
    deaths: Option<mpsc::UnboundedReceiver<Died>>,
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
            deaths: None,
        })
    }

    /// From now on, the deaths of essential tasks arrive here too.
    pub fn watch_tasks(&mut self, deaths: mpsc::UnboundedReceiver<Died>) {
        self.deaths = Some(deaths);
    }

    /// A request that is already waiting, without waiting for one.
    pub async fn pending(&mut self) -> Option<Request> {
        tokio::time::timeout(Duration::ZERO, self.recv()).await.ok()
    }

    pub async fn recv(&mut self) -> Request {
        let [hup, quit, usr1, usr2, winch] = &mut self.forwarded;
        let deaths = &mut self.deaths;
        let deaths = async move {
            match deaths.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(d) => d,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            d = deaths => Request::Failed(d),
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
