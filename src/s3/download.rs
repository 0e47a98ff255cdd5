//! One object, or one byte range of it, into a local file, resumably: what
//! a restore and the artifact download do over links that are slow, that
//! stall single streams for seconds, or that cut them.
//!
//! Invariants:
//! - Bytes are appended to the part file in order, so its length is always
//!   how much of the range has arrived: a retry — or the next sparkvisor,
//!   finding the file — resumes there with a `Range` request. A server that
//!   ignores the range (200 with the whole object) is read from the start
//!   and the bytes already held are skipped.
//! - A request that yields no byte for [`Patience::stall`] (before its
//!   headers or between two pieces of its body) is abandoned and retried:
//!   one stalled stream never fails a whole restore.
//! - Failed tries are retried with capped, jittered backoff; a try that
//!   moved bytes resets the count, so only [`Patience::tries`] tries in a
//!   row without a byte of progress give up. A missing object is final at
//!   once (the caller decides what that means).
//! - The object must stay the same object: an ETag that changes between
//!   tries restarts the part from its first byte.
//! - An object whose size differs from the one expected fails at once
//!   (`WrongSize`): no retry makes it right.
//! - Every byte held is reported to the [`Beat`] (those already in the part
//!   file when it starts, then each one written); a transfer slot is
//!   held only while a request is out, never during a backoff pause.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{Body, Store, StoreError};
use crate::beat::Beat;

/// How a download reacts to a failing or stalled server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// No byte for this long: the request is abandoned and retried.
    pub stall: Duration,
    /// Tries in a row without a byte of progress before giving up.
    pub tries: u32,
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Patience {
    /// `stall` (`checkpoint.s3.read_stall_timeout`) with the usual retries.
    pub fn new(stall: Duration) -> Patience {
        Patience {
            stall,
            tries: 6,
            first_retry: Duration::from_millis(250),
            max_retry: Duration::from_secs(8),
        }
    }

    /// The pause after `failures` failed tries in a row (≥ 1), with
    /// `jitter` in [0, 1) spreading it over ±25 %.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let base = self
            .first_retry
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max_retry);
        base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Which bytes of the object: `[start, end)`, `end = None` to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: Option<u64>,
}

impl Span {
    pub fn whole() -> Span {
        Span {
            start: 0,
            end: None,
        }
    }

    pub fn len(&self) -> Option<u64> {
        self.end.map(|e| e.saturating_sub(self.start))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("GET s3://{bucket}/{key}: {tries} tries in a row without progress; the last: {last}")]
    GaveUp {
        bucket: String,
        key: String,
        tries: u32,
        last: String,
    },
    #[error("s3://{bucket}/{key} has {} bytes, expected {expected}", .size.map_or("fewer".to_string(), |n| n.to_string()))]
    WrongSize {
        bucket: String,
        key: String,
        /// The object's size, when the server said.
        size: Option<u64>,
        expected: u64,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished download holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes in the part file (the span's length).
    pub len: u64,
    /// Bytes that were already there when it started.
    pub resumed_from: u64,
}

/// One download: `span` of `key` into the part file `part`.
pub struct Download<'a> {
    pub store: &'a Store,
    pub key: &'a str,
    pub span: Span,
    pub part: &'a Path,
    /// The object's size as the caller knows it: another size is final.
    pub expect_size: Option<u64>,
    pub patience: Patience,
    /// Requests in flight across downloads; one is held per request.
    pub slots: &'a Semaphore,
    pub beat: &'a Beat,
}

/// How one try ended badly.
enum TryError {
    NotFound,
    /// The object's size is not the expected one (`None`: it ends before
    /// the requested range).
    WrongSize(Option<u64>),
    /// The object is not the one the earlier bytes came from.
    Changed,
    Io(std::io::Error),
    /// Worth another try.
    Transient(String),
}

/// What the tries learned about the object.
#[derive(Default)]
struct Known {
    etag: Option<String>,
    size: Option<u64>,
}

impl Download<'_> {
    /// Downloads what the part file lacks; returns once it holds the span.
    pub async fn run(&self) -> Result<Fetched, DownloadError> {
        let (mut file, mut have) = self.open_part().await?;
        let resumed_from = have;
        self.beat.bytes(have);
        let mut known = Known::default();
        let mut failures = 0u32;
        while !self.holds(have, &known) {
            let before = have;
            let err = match self.one_try(&mut file, &mut have, &mut known).await {
                Ok(()) => continue,
                Err(e) => self.settle(e, &mut file, &mut have, &mut known).await?,
            };
            failures = if have > before { 1 } else { failures + 1 };
            if failures >= self.patience.tries {
                return Err(DownloadError::GaveUp {
                    bucket: self.store.bucket().to_string(),
                    key: self.key.to_string(),
                    tries: failures,
                    last: err,
                });
            }
            let delay = self.patience.delay(failures, fastrand::f64());
            tracing::warn!(
                key = self.key,
                error = %err,
                at_byte = self.span.start + have,
                retry_in_ms = delay.as_millis() as u64,
                "download interrupted; retrying this object from its last byte"
            );
            tokio::time::sleep(delay).await;
        }
        file.flush().await.map_err(|e| self.io(e))?;
        file.sync_all().await.map_err(|e| self.io(e))?;
        Ok(Fetched {
            len: have,
            resumed_from,
        })
    }

    fn io(&self, source: std::io::Error) -> DownloadError {
        DownloadError::Io {
            path: self.part.to_path_buf(),
            source,
        }
    }

    /// The part file, positioned at its end (what it holds is kept unless
    /// it is longer than the span).
    async fn open_part(&self) -> Result<(tokio::fs::File, u64), DownloadError> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.part)
            .await
            .map_err(|e| self.io(e))?;
        let mut have = file.metadata().await.map_err(|e| self.io(e))?.len();
        if self.span.len().is_some_and(|len| have > len) {
            file.set_len(0).await.map_err(|e| self.io(e))?;
            have = 0;
        }
        file.seek(std::io::SeekFrom::Start(have))
            .await
            .map_err(|e| self.io(e))?;
        Ok((file, have))
    }

    /// Whether the part file holds the whole span.
    fn holds(&self, have: u64, known: &Known) -> bool {
        let want = self
            .span
            .len()
            .or(known.size.map(|s| s.saturating_sub(self.span.start)));
        want == Some(have)
    }

    /// A failed try: final errors out, the rest becomes the reason to retry
    /// (a changed object first empties the part).
    async fn settle(
        &self,
        e: TryError,
        file: &mut tokio::fs::File,
        have: &mut u64,
        known: &mut Known,
    ) -> Result<String, DownloadError> {
        match e {
            TryError::NotFound => Err(DownloadError::NotFound {
                bucket: self.store.bucket().to_string(),
                key: self.key.to_string(),
            }),
            TryError::WrongSize(size) => Err(DownloadError::WrongSize {
                bucket: self.store.bucket().to_string(),
                key: self.key.to_string(),
                size,
                expected: self.expect_size.unwrap_or_default(),
            }),
            TryError::Io(e) => Err(self.io(e)),
            TryError::Changed => {
                file.set_len(0).await.map_err(|e| self.io(e))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(|e| self.io(e))?;
                *have = 0;
                *known = Known::default();
                Ok("the object changed between requests; starting it again".to_string())
            }
            TryError::Transient(e) => Ok(e),
        }
    }

    /// One request for what is missing, its body appended to the file.
    async fn one_try(
        &self,
        file: &mut tokio::fs::File,
        have: &mut u64,
        known: &mut Known,
    ) -> Result<(), TryError> {
        // The semaphore is never closed.
        let _slot = self.slots.acquire().await.ok();
        let from = self.span.start + *have;
        let mut body = self.request(from, known).await?;
        // A server that ignored the range sends bytes we already hold.
        let mut skip = from - body.first_byte;
        let end = self.span.end.or(known.size);
        while end.is_none_or(|e| self.span.start + *have < e) {
            let chunk = match tokio::time::timeout(self.patience.stall, body.next_chunk()).await {
                Err(_) => return Err(self.stalled("no byte")),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(TryError::Transient(format!("reading the body: {e}")));
                }
                Ok(Some(Ok(c))) => c,
            };
            let mut data: &[u8] = &chunk;
            let n = (skip.min(data.len() as u64)) as usize;
            data = &data[n..];
            skip -= n as u64;
            if let Some(e) = end {
                let room = e.saturating_sub(self.span.start + *have);
                data = &data[..data.len().min(room as usize)];
            }
            if data.is_empty() {
                continue;
            }
            file.write_all(data).await.map_err(TryError::Io)?;
            *have += data.len() as u64;
            self.beat.bytes(data.len() as u64);
        }
        match end {
            Some(e) if self.span.start + *have < e => Err(TryError::Transient(format!(
                "the body ended at byte {} of {e}",
                self.span.start + *have
            ))),
            Some(_) => Ok(()),
            None => {
                // No size anywhere: the body's end is the object's end.
                known.size = Some(self.span.start + *have);
                Ok(())
            }
        }
    }

    fn stalled(&self, what: &str) -> TryError {
        TryError::Transient(format!(
            "{what} for {:.1}s",
            self.patience.stall.as_secs_f64()
        ))
    }

    /// Sends the GET from byte `from` and checks the answer is the object
    /// the earlier bytes came from, of the expected size.
    async fn request(&self, from: u64, known: &mut Known) -> Result<Body, TryError> {
        let open = self.store.open(self.key, from, self.span.end);
        let body = tokio::time::timeout(self.patience.stall, open)
            .await
            .map_err(|_| self.stalled("no response"))?
            .map_err(|e| match e {
                StoreError::NotFound { .. } => TryError::NotFound,
                StoreError::OutOfRange { .. } if self.expect_size.is_some() => {
                    TryError::WrongSize(None)
                }
                e => TryError::Transient(e.to_string()),
            })?;
        if let (Some(want), Some(size)) = (self.expect_size, body.object_size)
            && want != size
        {
            return Err(TryError::WrongSize(Some(size)));
        }
        if let (Some(seen), Some(now)) = (&known.etag, &body.etag)
            && seen != now
        {
            return Err(TryError::Changed);
        }
        if body.etag.is_some() {
            known.etag = body.etag.clone();
        }
        if body.object_size.is_some() {
            known.size = body.object_size;
        }
        if body.first_byte > from {
            return Err(TryError::Transient(format!(
                "asked for byte {from}, the answer starts at byte {}",
                body.first_byte
            )));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_grow_to_a_cap_with_bounded_jitter() {
        let p = Patience::new(Duration::from_secs(10));
        let mid: Vec<u128> = (1..=8).map(|n| p.delay(n, 0.5).as_millis()).collect();
        assert_eq!(mid, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(p.delay(1, 0.0), Duration::from_micros(187_500));
        assert_eq!(p.delay(1, 1.0), Duration::from_micros(312_500));
        assert!(p.delay(u32::MAX, 1.0) <= Duration::from_secs(10));
    }

    #[test]
    fn spans() {
        assert_eq!(Span::whole().len(), None);
        let s = Span {
            start: 8,
            end: Some(20),
        };
        assert_eq!(s.len(), Some(12));
        assert!(!s.is_empty());
        assert!(
            Span {
                start: 3,
                end: Some(3)
            }
            .is_empty()
        );
    }
}
