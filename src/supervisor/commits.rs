//! Watching a checkpoint's `commits/` folders: the progress of every query
//! read off the async threads, an inotify watch that wakes a waiter when a
//! commit lands, and the wait for the first commit after a point (how a
//! recovery ends). Used by the drain and by the recovery measurement.
//!
//! Invariants: the checkpoint is only listed (`offsets/`, `commits/`),
//! never written; a root that cannot be read has no queries; batch ids,
//! not file times, decide what is new (a clock step changes nothing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::checkpoint::{self, QueryProgress};
pub use crate::jvm::cds::committed_since;

/// How often the checkpoint is read when no file event arrives (the
/// fallback; inotify wakes a waiter at once).
pub const POLL: Duration = Duration::from_millis(100);

/// How often a query folder that does not exist yet is looked for.
const NEW_QUERY_POLL: Duration = Duration::from_millis(250);

/// Reads the checkpoint's progress off the async threads; empty when it
/// cannot be read.
pub async fn read(root: &Path) -> Vec<QueryProgress> {
    let dir = root.to_path_buf();
    tokio::task::spawn_blocking(move || checkpoint::refresh(&dir))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The newest committed batch of each query.
pub fn newest(queries: &[QueryProgress]) -> BTreeMap<PathBuf, u64> {
    queries
        .iter()
        .filter_map(|q| Some((q.path.clone(), q.latest_committed_batch?)))
        .collect()
}

/// Waits until a query under `root` commits a batch newer than `before`
/// and returns when it was seen (within milliseconds of the commit where
/// inotify works).
pub async fn first_after(root: &Path, before: BTreeMap<PathBuf, u64>) -> Instant {
    loop {
        let queries = read(root).await;
        if committed_since(&before, &newest(&queries)) {
            return Instant::now();
        }
        match CommitWatch::new(&queries).filter(|_| !queries.is_empty()) {
            Some(w) => w.changed(NEW_QUERY_POLL.max(POLL)).await,
            None => tokio::time::sleep(NEW_QUERY_POLL).await,
        }
    }
}

/// Wakes a waiter as soon as a file lands in a watched `commits/` folder
/// (Spark renames each commit into place); the poll stays the fallback
/// where inotify is unavailable.
pub struct CommitWatch {
    fd: tokio::io::unix::AsyncFd<Watched>,
}

/// The inotify instance, as tokio's reactor needs it.
struct Watched(Inotify);

impl std::os::fd::AsRawFd for Watched {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl CommitWatch {
    pub fn new(queries: &[QueryProgress]) -> Option<CommitWatch> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        for q in queries {
            ino.add_watch(
                &q.path.join("commits"),
                AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .ok()?;
        }
        // SAFETY: `Watched` owns the inotify instance, so its descriptor
        // stays open and the same for as long as the AsyncFd holds it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                Watched(ino),
                tokio::io::Interest::READABLE,
            )
        }
        .ok()?;
        Some(CommitWatch { fd })
    }

    /// Until something happened in a watched folder (or at most `limit`).
    pub async fn changed(&self, limit: Duration) {
        let ready = async {
            loop {
                let Ok(mut guard) = self.fd.readable().await else {
                    return;
                };
                match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from))
                {
                    Ok(_) => return,
                    Err(_would_block) => continue,
                }
            }
        };
        let _ = tokio::time::timeout(limit, ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_commit_after_a_point_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path();
        for sub in ["offsets", "commits"] {
            std::fs::create_dir_all(q.join(sub)).unwrap();
        }
        std::fs::write(q.join("metadata"), "{\"id\":\"x\"}").unwrap();
        std::fs::write(q.join("offsets/0"), "v1\n{}\n{}").unwrap();
        std::fs::write(q.join("commits/0"), "v1\n{}").unwrap();
        let before = newest(&read(q).await);
        let root = q.to_path_buf();
        let wait = tokio::spawn(async move { first_after(&root, before).await });
        tokio::task::yield_now().await;
        let written = Instant::now();
        std::fs::write(q.join("offsets/1"), "v1\n{}\n{}").unwrap();
        std::fs::write(q.join("commits/1"), "v1\n{}").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("seen within the deadline")
            .unwrap();
        assert!(seen >= written, "the commit written last, not the old one");
    }
}
