//! Stops that sparkvisor asks of itself, as opposed to a stop signal from
//! outside: a typed message from the task that decided it (today the S3
//! replicator, when another writer took the replica over) to the
//! supervisor, which stops the app through the same graceful path as for
//! SIGTERM (later with a drain first) and then exits with the reason's
//! code.
//!
//! Invariants: the sender never waits (the channel is unbounded: a handful
//! of messages per process at most); the supervisor alone decides what a
//! request means for the app (e.g. `checkpoint.s3.on_fenced`); this module
//! depends on nothing of sparkvisor's, so every task may send.

use tokio::sync::mpsc;

/// sparkvisor's exit code after it was fenced (EX_TEMPFAIL): another
/// process now owns the checkpoint replica.
pub const FENCED_EXIT_CODE: i32 = 75;

/// Who took the replica over, as the lease object names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// The new holder's writer id.
    pub holder: String,
    /// Its lease generation.
    pub generation: u64,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// The generation this process held (0 when it never held one).
    pub ours: u64,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writer {} (pod {}, node {}) holds lease generation {}",
            self.holder,
            self.pod.as_deref().unwrap_or("unknown"),
            self.node.as_deref().unwrap_or("unknown"),
            self.generation
        )
    }
}

/// Why sparkvisor wants to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The S3 replica was taken over: this process may no longer write it.
    Fenced(Takeover),
}

impl StopReason {
    /// sparkvisor's exit code once the app has stopped for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Fenced(_) => FENCED_EXIT_CODE,
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Fenced(t) => write!(f, "fenced: {t}"),
        }
    }
}

/// The sending side, cloned into every task that may ask for a stop.
#[derive(Clone, Debug)]
pub struct StopSender(mpsc::UnboundedSender<StopReason>);

impl StopSender {
    /// Asks the supervisor to stop; never waits. A supervisor that is
    /// already gone (sparkvisor exiting) is not an error.
    pub fn request(&self, reason: StopReason) {
        let _ = self.0.send(reason);
    }
}

/// The supervisor's side.
pub type StopReceiver = mpsc::UnboundedReceiver<StopReason>;

pub fn channel() -> (StopSender, StopReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (StopSender(tx), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_receiver_in_order() {
        let (tx, mut rx) = channel();
        let t = Takeover {
            holder: "b1".into(),
            generation: 4,
            pod: Some("pod-b".into()),
            node: None,
            ours: 3,
        };
        tx.clone().request(StopReason::Fenced(t.clone()));
        let got = rx.recv().await.unwrap();
        assert_eq!(got, StopReason::Fenced(t));
        assert_eq!(got.exit_code(), FENCED_EXIT_CODE);
        assert_eq!(
            got.to_string(),
            "fenced: writer b1 (pod pod-b, node unknown) holds lease generation 4"
        );
        drop(rx);
        // A gone supervisor is not an error for the sender.
        tx.request(StopReason::Fenced(got_takeover()));
    }

    fn got_takeover() -> Takeover {
        Takeover {
            holder: "c".into(),
            generation: 5,
            pod: None,
            node: None,
            ours: 4,
        }
    }
}
