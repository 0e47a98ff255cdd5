//! Follows one application's event log while Spark writes it: the lines
//! appended since the last read, across rolled files (`events_1_…`,
//! `events_2_…`) and the rename of a single-file log at its end.
//!
//! Spark flushes its event log after every query progress event (they are
//! "other" events to its `EventLoggingListener`, which flushes those), so
//! the progress of a batch is readable as soon as Spark reports it.
//!
//! Invariants: only complete lines are handed out (a line still being
//! written waits for its newline); every byte is read once; a rolled file is
//! read to its end before the next; a file that disappears (local
//! retention) is skipped, never an error; each read is bounded.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::layout::{Kind, Log};

const CHUNK: usize = 256 * 1024;
/// A line longer than this is dropped (no event sparkvisor reads is near it).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Where reading stands in one log.
#[derive(Debug)]
pub struct Tailer {
    root: PathBuf,
    log: String,
    /// The events file index being read (0 for a single-file log).
    index: u64,
    offset: u64,
    partial: Vec<u8>,
    skipping_long_line: bool,
}

impl Tailer {
    /// Starts at the beginning of `log` under the event log directory `root`.
    pub fn new(root: &Path, log: &Log) -> Tailer {
        let first = log
            .files
            .iter()
            .filter_map(|f| match f.kind {
                Kind::Events { index } => Some(index),
                _ => None,
            })
            .min()
            .unwrap_or(0);
        Tailer {
            root: root.to_path_buf(),
            log: log.name.clone(),
            index: first,
            offset: 0,
            partial: Vec::new(),
            skipping_long_line: false,
        }
    }

    /// The log being followed.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// Reads at most `budget` bytes appended to `log` (the current listing
    /// of the followed log) and hands every complete line to `on_line`.
    /// Returns the bytes read.
    pub fn poll(
        &mut self,
        log: &Log,
        budget: usize,
        mut on_line: impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        let mut read = 0;
        loop {
            let current = log.files.iter().find(|f| match f.kind {
                Kind::Events { index } => index == self.index,
                Kind::Single { .. } => true,
                Kind::AppStatus { .. } => false,
            });
            let next = log
                .files
                .iter()
                .filter_map(|f| match f.kind {
                    Kind::Events { index } if index > self.index => Some(index),
                    _ => None,
                })
                .min();
            let Some(file) = current else {
                // Gone (or not there yet): go on with the next one, if any.
                match next {
                    Some(n) => {
                        self.roll_to(n, &mut on_line);
                        continue;
                    }
                    None => return Ok(read),
                }
            };
            let n = self.read_file(&self.root.join(&file.rel), budget - read, &mut on_line)?;
            read += n;
            if read >= budget {
                return Ok(read);
            }
            match next {
                // Spark opened the next file, so this one is complete (and
                // was just read to its end).
                Some(idx) if n == 0 || self.at_end(&self.root.join(&file.rel)) => {
                    self.roll_to(idx, &mut on_line);
                }
                _ => return Ok(read),
            }
        }
    }

    fn at_end(&self, path: &Path) -> bool {
        std::fs::metadata(path).map_or(true, |m| m.len() <= self.offset)
    }

    fn roll_to(&mut self, index: u64, on_line: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() && !self.skipping_long_line {
            on_line(&self.partial);
        }
        self.partial.clear();
        self.skipping_long_line = false;
        self.index = index;
        self.offset = 0;
    }

    fn read_file(
        &mut self,
        path: &Path,
        budget: usize,
        on_line: &mut impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; CHUNK.min(budget.max(1))];
        let mut total = 0;
        while total < budget {
            let want = buf.len().min(budget - total);
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            total += n;
            self.offset += n as u64;
            self.take_lines(&buf[..n], on_line);
        }
        Ok(total)
    }

    fn take_lines(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(nl);
            if self.skipping_long_line {
                self.skipping_long_line = false;
            } else if self.partial.is_empty() {
                on_line(line);
            } else {
                self.partial.extend_from_slice(line);
                on_line(&self.partial);
            }
            self.partial.clear();
            data = &rest[1..];
        }
        if self.skipping_long_line {
            return;
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
            self.skipping_long_line = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::layout::{logs, scan};
    use std::io::Write;

    fn log_of(root: &Path) -> Log {
        logs(&scan(root).unwrap()).pop().unwrap()
    }

    fn lines(t: &mut Tailer, root: &Path, budget: usize) -> Vec<String> {
        let mut out = Vec::new();
        t.poll(&log_of(root), budget, |l| {
            out.push(String::from_utf8_lossy(l).into_owned())
        })
        .unwrap();
        out
    }

    #[test]
    fn follows_appends_and_rolls() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("eventlog_v2_local-1");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("appstatus_local-1.inprogress"), "").unwrap();
        let mut f1 = std::fs::File::create(d.join("events_1_local-1")).unwrap();
        write!(f1, "a\nb\npart").unwrap();
        let mut t = Tailer::new(root.path(), &log_of(root.path()));
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["a", "b"]);
        assert!(lines(&mut t, root.path(), 1 << 20).is_empty());
        write!(f1, "ial\nc").unwrap();
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["partial"]);
        // Spark rolls: the rest of file 1 (even without a newline), then 2.
        let mut f2 = std::fs::File::create(d.join("events_2_local-1")).unwrap();
        writeln!(f2, "d\ne").unwrap();
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["c", "d", "e"]);
        // A small budget reads in steps, nothing lost or repeated.
        writeln!(f2, "ffff\ngggg\nhhhh").unwrap();
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(lines(&mut t, root.path(), 4));
        }
        assert_eq!(got, ["ffff", "gggg", "hhhh"]);
        // Retention deleted files 2 and 3 before they were read: go on at 4.
        std::fs::write(d.join("events_4_local-1"), "x\n").unwrap();
        std::fs::remove_file(d.join("events_2_local-1")).unwrap();
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["x"]);
    }

    #[test]
    fn single_file_log_renamed_at_the_end() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("local-2.inprogress");
        std::fs::write(&p, "one\ntw").unwrap();
        let mut t = Tailer::new(root.path(), &log_of(root.path()));
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["one"]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "o").unwrap();
        std::fs::rename(&p, root.path().join("local-2")).unwrap();
        assert_eq!(lines(&mut t, root.path(), 1 << 20), ["two"]);
        assert_eq!(t.log(), "local-2");
    }
}
