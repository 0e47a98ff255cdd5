//! Graceful drain: on a stop request, wait until the batch each query has
//! in flight is committed before the app gets its stop signal, so a sink
//! that is not idempotent never sees that batch twice.
//!
//! What "in flight" means is read from the checkpoint: `offsets/N` planned,
//! `commits/N` not yet written. [`pending`] is the pure decision: the
//! batches in flight when the stop was requested, minus those committed
//! since. Batches Spark plans after the stop request are not waited for
//! (under a backlog a new one starts right after each commit, and the
//! drain would never end); the app is signalled as soon as the batches
//! that were in flight at the request have committed.
//!
//! Invariants: a drain never outlives its timeout (`supervisor.drain_timeout`,
//! counted from the stop request, inside `stop_grace`); a root that cannot
//! be read drains nothing (the stop goes ahead at once); the checkpoint is
//! only listed (`offsets/` and `commits/`), never written.

use std::path::Path;
use std::time::{Duration, Instant};

use super::commits::{CommitWatch, read};
use crate::checkpoint::QueryProgress;

use super::commits::POLL;

/// A batch the drain waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub query: String,
    pub batch: u64,
}

/// The batches in flight at the stop request (`at_stop`) that `now` does
/// not show committed yet. A query gone from `now` no longer holds the stop.
pub fn pending(at_stop: &[QueryProgress], now: &[QueryProgress]) -> Vec<Waiting> {
    at_stop
        .iter()
        .filter_map(|q| {
            let batch = q.inflight_batch?;
            let current = now.iter().find(|n| n.path == q.path)?;
            let done = current.latest_committed_batch.is_some_and(|c| c >= batch);
            (!done).then(|| Waiting {
                query: q.name.clone(),
                batch,
            })
        })
        .collect()
}

/// How a drain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was in flight (or there is no checkpoint to read).
    Idle,
    /// Every batch in flight at the request committed.
    Drained {
        batches: Vec<Waiting>,
        took: Duration,
    },
    /// The timeout came first; these were still uncommitted.
    TimedOut {
        waiting: Vec<Waiting>,
        took: Duration,
    },
}

/// The batches in flight now under `root` (the start of a drain).
pub async fn in_flight(root: &Path) -> Vec<QueryProgress> {
    read(root)
        .await
        .into_iter()
        .filter(|q| q.inflight_batch.is_some())
        .collect()
}

/// Waits until every batch of `at_stop` has committed, or `deadline`.
pub async fn wait(root: &Path, at_stop: Vec<QueryProgress>, deadline: Instant) -> Outcome {
    let started = Instant::now();
    let batches = pending(&at_stop, &at_stop);
    if batches.is_empty() {
        return Outcome::Idle;
    }
    let watch = CommitWatch::new(&at_stop);
    loop {
        let left = pending(&at_stop, &read(root).await);
        if left.is_empty() {
            return Outcome::Drained {
                batches,
                took: started.elapsed(),
            };
        }
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut {
                waiting: left,
                took: started.elapsed(),
            };
        }
        let limit = POLL.min(deadline - now);
        match &watch {
            Some(w) => w.changed(limit).await,
            None => tokio::time::sleep(limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn q(name: &str, planned: Option<u64>, committed: Option<u64>) -> QueryProgress {
        let inflight_batch = match (planned, committed) {
            (Some(p), None) => Some(p),
            (Some(p), Some(c)) if p > c => Some(p),
            _ => None,
        };
        QueryProgress {
            name: name.into(),
            path: PathBuf::from(format!("/ckpt/{name}")),
            id: None,
            latest_offsets_batch: planned,
            planned_at: None,
            latest_committed_batch: committed,
            last_commit: None,
            inflight_batch,
        }
    }

    #[test]
    fn nothing_in_flight_waits_for_nothing() {
        let at = [q("a", Some(4), Some(4)), q("b", None, None)];
        assert!(pending(&at, &at).is_empty());
    }

    #[test]
    fn waits_for_each_query_until_its_batch_commits() {
        let at = [q("a", Some(5), Some(4)), q("b", Some(9), Some(8))];
        let w = pending(&at, &at);
        assert_eq!(
            w,
            vec![
                Waiting {
                    query: "a".into(),
                    batch: 5
                },
                Waiting {
                    query: "b".into(),
                    batch: 9
                }
            ]
        );
        let now = [q("a", Some(6), Some(5)), q("b", Some(9), Some(8))];
        assert_eq!(
            pending(&at, &now),
            vec![Waiting {
                query: "b".into(),
                batch: 9
            }]
        );
        let now = [q("a", Some(6), Some(5)), q("b", Some(10), Some(9))];
        assert!(pending(&at, &now).is_empty());
    }

    #[test]
    fn batches_planned_after_the_request_do_not_hold_the_stop() {
        let at = [q("a", Some(5), Some(4))];
        // Batch 5 committed and Spark planned 6 at once (a backlog).
        let now = [q("a", Some(6), Some(5))];
        assert!(pending(&at, &now).is_empty());
    }

    #[test]
    fn a_query_that_vanished_does_not_hold_the_stop() {
        let at = [q("a", Some(5), Some(4))];
        assert!(pending(&at, &[]).is_empty());
    }

    #[tokio::test]
    async fn a_real_checkpoint_drains_when_the_commit_lands() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ckpt");
        let query = root.join("q");
        std::fs::create_dir_all(query.join("offsets")).unwrap();
        std::fs::create_dir_all(query.join("commits")).unwrap();
        let offsets = "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1795219000000,\"conf\":{}}\n{\"logOffset\":0}\n";
        std::fs::write(query.join("offsets/0"), offsets).unwrap();
        std::fs::write(
            query.join("commits/0"),
            "v1\n{\"nextBatchWatermarkMs\":0}\n",
        )
        .unwrap();
        std::fs::write(query.join("offsets/1"), offsets).unwrap();
        let at = in_flight(&root).await;
        assert_eq!(at.len(), 1);
        let q2 = query.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(q2.join("commits/1"), "v1\n{\"nextBatchWatermarkMs\":0}\n").unwrap();
        });
        let out = wait(&root, at, Instant::now() + Duration::from_secs(20)).await;
        writer.await.unwrap();
        assert!(
            matches!(out, Outcome::Drained { ref batches, .. } if batches.len() == 1),
            "{out:?}"
        );

        // Batch 2 never commits: the deadline ends the drain.
        std::fs::write(query.join("offsets/2"), offsets).unwrap();
        let at = in_flight(&root).await;
        let out = wait(&root, at, Instant::now() + Duration::from_millis(300)).await;
        assert!(
            matches!(out, Outcome::TimedOut { ref waiting, .. } if waiting[0].batch == 2),
            "{out:?}"
        );
    }
}
