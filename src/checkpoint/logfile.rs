//! File formats of a Structured Streaming checkpoint, as pure functions over
//! names and bytes: the `v<N>` metadata logs (`offsets/N`, `commits/N`), the
//! query `metadata` file, checksum (`.N.crc`) and temp file names.
//!
//! Versions: `offsets/N` is `v1` (one line per source, in source order)
//! in every Spark; Spark 4.1+ can write `v2` (lines `<source id>:<offset>`,
//! with `spark.sql.streaming.offsetLog.formatVersion = 2`). `commits/N` is
//! `v1`, or `v2` with the state stores' unique ids
//! (`{"nextBatchWatermarkMs":0,"stateUniqueIds":{…}}`) under state
//! checkpoint format v2 (Spark 4.0+). A log version above those is a
//! newer Spark's: its body is not judged.
//!
//! Invariants: nothing here touches the file system; every input is
//! untrusted (a crash can leave empty, zero-filled or cut files) and bad
//! input is an `Err(Malformed)`, never a panic. A file is malformed exactly
//! when Spark could not read it back: a checksum mismatch alone is not (Spark
//! reads these logs without verifying `.crc` files), and an unknown log
//! version is not either (that is a newer Spark, not a torn write).

use serde_json::Value;

/// What a name inside `offsets/` or `commits/` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogName {
    /// `N`: the log entry of batch N (Spark parses the whole name as a number).
    Batch(u64),
    /// `.N.crc`: the Hadoop checksum of entry N.
    Checksum(u64),
    /// A temp file of an interrupted write (see [`is_temp_name`]).
    Temp,
    /// Anything else: Spark ignores it; it is reported.
    Other,
}

/// Classifies a file name found in a metadata log folder.
pub fn classify_log_name(name: &str) -> LogName {
    if let Some(n) = parse_batch(name) {
        return LogName::Batch(n);
    }
    if is_temp_name(name) {
        return LogName::Temp;
    }
    if let Some(n) = name
        .strip_prefix('.')
        .and_then(|s| s.strip_suffix(".crc"))
        .and_then(parse_batch)
    {
        return LogName::Checksum(n);
    }
    LogName::Other
}

/// A batch number: ASCII digits only (Spark writes plain decimal names).
pub fn parse_batch(name: &str) -> Option<u64> {
    if name.is_empty() || name.len() > 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The checksum file name Hadoop's local file system keeps beside `name`.
pub fn checksum_name(name: &str) -> String {
    format!(".{name}.crc")
}

/// Whether `name` is a temp file of Spark's atomic writes, or its checksum.
///
/// Spark writes every checkpoint file as `.<name>.<uuid>.tmp` (state store
/// files: `.<name>.<uuid>.TID<task>.tmp`) and renames it into place; Hadoop
/// keeps the checksum as `..<same>.tmp.crc` and renames it after the data.
/// A crash before the renames leaves these behind; they were never part of
/// the checkpoint. Requiring the UUID keeps other dot-files out.
pub fn is_temp_name(name: &str) -> bool {
    let data = match name.strip_suffix(".crc") {
        Some(inner) => match inner.strip_prefix('.') {
            Some(d) => d,
            None => return false,
        },
        None => name,
    };
    let Some(middle) = data.strip_prefix('.').and_then(|s| s.strip_suffix(".tmp")) else {
        return false;
    };
    middle.split('.').any(is_uuid)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Why a log or metadata file cannot be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty file")]
    Empty,
    #[error("only zero bytes (a write lost in a crash)")]
    ZeroFilled,
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("first line {0:?} is not a log version like \"v1\"")]
    BadVersion(String),
    #[error("ends after the version line (no batch metadata)")]
    MissingMetadata,
    #[error("no source offsets after the batch metadata")]
    NoSourceOffsets,
    #[error("line {line} ({text:?}) is not `<source id>:<offset>` (offset log v2)")]
    BadSourceLine { line: usize, text: String },
    #[error("line {line} is not valid JSON: {error}")]
    BadJson { line: usize, error: String },
    #[error("no string \"id\" in the query metadata")]
    MissingId,
}

/// The newest `offsets/N` version whose source lines are known.
pub const OFFSETS_MAX_KNOWN: u32 = 2;
/// The newest `commits/N` version known.
pub const COMMITS_MAX_KNOWN: u32 = 2;

/// The parsed content of `offsets/N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetsEntry {
    pub version: u32,
    /// When Spark planned the batch (its trigger time), from the file itself.
    pub batch_timestamp_ms: Option<u64>,
    pub batch_watermark_ms: Option<i64>,
    /// One per source; `-` (no offset yet) counts.
    pub sources: usize,
}

/// The parsed content of `commits/N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitEntry {
    pub version: u32,
    pub next_batch_watermark_ms: Option<i64>,
}

/// Lines as Spark's reader sees them: split on `\n`, a final newline does
/// not start another line, `\r` before it is dropped.
fn lines(bytes: &[u8]) -> Result<Vec<&str>, Malformed> {
    if bytes.is_empty() {
        return Err(Malformed::Empty);
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err(Malformed::ZeroFilled);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed::NotUtf8)?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    Ok(text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect())
}

fn version(line: &str) -> Result<u32, Malformed> {
    let t = line.trim();
    t.strip_prefix('v')
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| Malformed::BadVersion(t.chars().take(40).collect()))
}

fn json(line: &str, number: usize) -> Result<Value, Malformed> {
    serde_json::from_str(line.trim()).map_err(|e| Malformed::BadJson {
        line: number,
        error: e.to_string(),
    })
}

/// Parses `offsets/N`: `v1`, a JSON line of batch metadata (empty in very
/// old checkpoints), then one line per source: JSON, or `-` for none. In
/// `v2` the metadata is required and each source line is
/// `<source id>:<offset>`. Later versions: only the version line is read.
pub fn parse_offsets(bytes: &[u8]) -> Result<OffsetsEntry, Malformed> {
    let lines = lines(bytes)?;
    let version = version(lines[0])?;
    if version > OFFSETS_MAX_KNOWN {
        return Ok(OffsetsEntry {
            version,
            batch_timestamp_ms: None,
            batch_watermark_ms: None,
            sources: lines.len().saturating_sub(2),
        });
    }
    let meta = lines.get(1).ok_or(Malformed::MissingMetadata)?;
    let meta = if meta.trim().is_empty() {
        if version >= 2 {
            return Err(Malformed::MissingMetadata);
        }
        Value::Null
    } else {
        json(meta, 2)?
    };
    let sources = &lines[2..];
    if sources.is_empty() {
        return Err(Malformed::NoSourceOffsets);
    }
    for (i, line) in sources.iter().enumerate() {
        let offset = if version >= 2 {
            match line.split_once(':') {
                Some((_, offset)) => offset,
                None => {
                    return Err(Malformed::BadSourceLine {
                        line: i + 3,
                        text: line.chars().take(40).collect(),
                    });
                }
            }
        } else {
            line
        };
        if offset.trim() != "-" {
            json(offset, i + 3)?;
        }
    }
    Ok(OffsetsEntry {
        version,
        batch_timestamp_ms: meta.get("batchTimestampMs").and_then(Value::as_u64),
        batch_watermark_ms: meta.get("batchWatermarkMs").and_then(Value::as_i64),
        sources: sources.len(),
    })
}

/// The source offsets of an `offsets/N` text, keyed as `sources/` names
/// them: by position in `v1` (`"0"`, `"1"`, …), by the id before the colon
/// in `v2`. `-` (no offset yet) is `None`. Unparsable text gives what could
/// be read; a later version gives nothing.
pub fn source_offsets(text: &str) -> Vec<(String, Option<&str>)> {
    let mut lines = text.lines();
    let Some(Ok(version)) = lines.next().map(version) else {
        return Vec::new();
    };
    if version > OFFSETS_MAX_KNOWN {
        return Vec::new();
    }
    lines
        .skip(1)
        .enumerate()
        .filter_map(|(i, line)| {
            let (key, offset) = if version >= 2 {
                let (k, o) = line.split_once(':')?;
                (k.to_string(), o)
            } else {
                (i.to_string(), line)
            };
            let offset = offset.trim();
            Some((key, (offset != "-").then_some(offset)))
        })
        .collect()
}

/// Parses `commits/N`: `v1` (or later), then an optional JSON line.
pub fn parse_commit(bytes: &[u8]) -> Result<CommitEntry, Malformed> {
    let lines = lines(bytes)?;
    let version = version(lines[0])?;
    if version > COMMITS_MAX_KNOWN {
        return Ok(CommitEntry {
            version,
            next_batch_watermark_ms: None,
        });
    }
    let meta = match lines.get(1) {
        Some(l) if !l.trim().is_empty() => json(l, 2)?,
        _ => Value::Null,
    };
    Ok(CommitEntry {
        version,
        next_batch_watermark_ms: meta.get("nextBatchWatermarkMs").and_then(Value::as_i64),
    })
}

/// Parses the query's `metadata` file (`{"id":"<uuid>"}`) into the query id.
pub fn parse_metadata(bytes: &[u8]) -> Result<String, Malformed> {
    let lines = lines(bytes)?;
    let v = json(&lines.join("\n"), 1)?;
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(Malformed::MissingId)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Byte-for-byte what Spark 4.0.1 wrote in a real checkpoint (conf shortened).
    const OFFSETS: &str = "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1795219281002,\"conf\":{\"spark.sql.shuffle.partitions\":\"200\"}}\n{\"logOffset\":4}";
    const COMMIT: &str = "v1\n{\"nextBatchWatermarkMs\":0}";
    const METADATA: &str = "{\"id\":\"a0b9a9ca-301a-409e-9851-a46e6e2fd037\"}\n";

    #[test]
    fn names() {
        assert_eq!(classify_log_name("0"), LogName::Batch(0));
        assert_eq!(classify_log_name("17"), LogName::Batch(17));
        assert_eq!(classify_log_name(".17.crc"), LogName::Checksum(17));
        assert_eq!(
            classify_log_name(".4.c05413d0-b6a1-46a4-b1f6-d0d1f21e5703.tmp"),
            LogName::Temp
        );
        assert_eq!(
            classify_log_name("..4.c05413d0-b6a1-46a4-b1f6-d0d1f21e5703.tmp.crc"),
            LogName::Temp
        );
        for other in [
            "", "x", "-1", "+1", "1.5", "1 ", ".crc", "..crc", ".x.crc", "4.tmp",
        ] {
            assert_eq!(classify_log_name(other), LogName::Other, "{other:?}");
        }
        assert_eq!(
            classify_log_name("99999999999999999999999"),
            LogName::Other,
            "overflow"
        );
        assert_eq!(checksum_name("7"), ".7.crc");
    }

    #[test]
    fn temp_names_follow_spark() {
        // Names seen with strace on Spark 4.0.1.
        for t in [
            ".metadata.822bad2d-242e-49e4-ab24-5f34597b5f30.tmp",
            "..metadata.822bad2d-242e-49e4-ab24-5f34597b5f30.tmp.crc",
            ".1.delta.d4ca9355-9bdf-4a70-99f5-2a90f0a14656.TID3.tmp",
            "..1.delta.d4ca9355-9bdf-4a70-99f5-2a90f0a14656.TID3.tmp.crc",
            ".schema.1c386533-27ce-4f6a-aa9a-b801db392ff5.tmp",
        ] {
            assert!(is_temp_name(t), "{t}");
        }
        for t in [
            ".1.delta.crc",
            "1.delta",
            ".notes.tmp",
            "x.822bad2d-242e-49e4-ab24-5f34597b5f30.tmp",
            ".x.822bad2d-242e-49e4-ab24-5f34597b5f30.tmp.crc",
            ".x.822bad2d-242e-49e4-ab24-5f34597b5f3g.tmp",
        ] {
            assert!(!is_temp_name(t), "{t}");
        }
    }

    #[test]
    fn real_offsets_parse() {
        let o = parse_offsets(OFFSETS.as_bytes()).unwrap();
        assert_eq!(o.version, 1);
        assert_eq!(o.batch_timestamp_ms, Some(1795219281002));
        assert_eq!(o.batch_watermark_ms, Some(0));
        assert_eq!(o.sources, 1);
        // Trailing newline, CRLF, several sources, a source with no offset, a
        // plain-number offset (rate source), empty metadata of old checkpoints.
        let o = parse_offsets(b"v1\r\n{}\r\n9\r\n-\r\n{\"t\":{\"0\":5}}\r\n").unwrap();
        assert_eq!((o.sources, o.batch_timestamp_ms), (3, None));
        assert_eq!(parse_offsets(b"v1\n\n-").unwrap().sources, 1);
    }

    #[test]
    fn torn_offsets() {
        assert_eq!(parse_offsets(b""), Err(Malformed::Empty));
        assert_eq!(parse_offsets(&[0u8; 783]), Err(Malformed::ZeroFilled));
        assert_eq!(parse_offsets(b"v1"), Err(Malformed::MissingMetadata));
        assert_eq!(parse_offsets(b"v1\n"), Err(Malformed::MissingMetadata));
        assert_eq!(
            parse_offsets(b"v1\n{\"batchWatermarkMs\":0}\n"),
            Err(Malformed::NoSourceOffsets)
        );
        // Cut in the middle of the metadata line or of a source line.
        let cut = &OFFSETS.as_bytes()[..40];
        assert!(matches!(
            parse_offsets(cut),
            Err(Malformed::BadJson { line: 2, .. })
        ));
        let cut = &OFFSETS.as_bytes()[..OFFSETS.len() - 3];
        assert!(matches!(
            parse_offsets(cut),
            Err(Malformed::BadJson { line: 3, .. })
        ));
        assert!(matches!(parse_offsets(b"v"), Err(Malformed::BadVersion(_))));
        assert!(matches!(
            parse_offsets(b"garbage\n{}\n1"),
            Err(Malformed::BadVersion(_))
        ));
        assert_eq!(
            parse_offsets(&[b'v', b'1', b'\n', 0xff]),
            Err(Malformed::NotUtf8)
        );
    }

    // Spark 4.3.0 with spark.sql.streaming.offsetLog.formatVersion = 2 and
    // state checkpoint format v2 (conf shortened).
    const OFFSETS_V2: &str = "v2\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1796121960997,\"conf\":{\"spark.sql.shuffle.partitions\":\"2\"},\"sourceMetadataInfo\":{}}\n0:{\"logOffset\":1}";
    const COMMIT_V2: &str = "v2\n{\"nextBatchWatermarkMs\":0,\"stateUniqueIds\":{\"0\":[[\"62a4188f-8be9-40d5-9ee9-9a9cf616d875\"],[\"62556cdd-db27-4b5f-a33d-321de3499252\"]]}}";

    #[test]
    fn offset_log_v2_and_commit_log_v2() {
        let o = parse_offsets(OFFSETS_V2.as_bytes()).unwrap();
        assert_eq!((o.version, o.sources), (2, 1));
        assert_eq!(o.batch_timestamp_ms, Some(1796121960997));
        let c = parse_commit(COMMIT_V2.as_bytes()).unwrap();
        assert_eq!((c.version, c.next_batch_watermark_ms), (2, Some(0)));
        // Named sources and a source without an offset.
        let o = parse_offsets(b"v2\n{\"batchWatermarkMs\":0}\nclicks:{\"logOffset\":4}\nviews:-")
            .unwrap();
        assert_eq!(o.sources, 2);
        // A line without a source id, v2 without metadata, a cut offset.
        assert!(matches!(
            parse_offsets(b"v2\n{}\n17"),
            Err(Malformed::BadSourceLine { line: 3, .. })
        ));
        assert_eq!(
            parse_offsets(b"v2\n\n0:{\"logOffset\":1}"),
            Err(Malformed::MissingMetadata)
        );
        let cut = &OFFSETS_V2.as_bytes()[..OFFSETS_V2.len() - 2];
        assert!(matches!(
            parse_offsets(cut),
            Err(Malformed::BadJson { line: 3, .. })
        ));
        assert_eq!(
            source_offsets(OFFSETS_V2),
            vec![("0".to_string(), Some("{\"logOffset\":1}"))]
        );
        assert_eq!(
            source_offsets("v1\n{}\n{\"logOffset\":7}\n42\n-\n"),
            vec![
                ("0".to_string(), Some("{\"logOffset\":7}")),
                ("1".to_string(), Some("42")),
                ("2".to_string(), None)
            ]
        );
        assert!(source_offsets("v9\n{}\nwhatever").is_empty());
        assert!(source_offsets("").is_empty());
    }

    #[test]
    fn newer_versions_are_not_torn() {
        assert_eq!(parse_commit(b"v2\n{}").unwrap().version, 2);
        assert_eq!(parse_commit(b"v3\nnot json").unwrap().version, 3);
        assert_eq!(parse_offsets(b"v7\n{}\n1").unwrap().version, 7);
        assert_eq!(parse_offsets(b"v7\nnot json").unwrap().version, 7);
        assert!(matches!(
            parse_commit(b"v0\n{}"),
            Err(Malformed::BadVersion(_))
        ));
    }

    #[test]
    fn commits() {
        let c = parse_commit(COMMIT.as_bytes()).unwrap();
        assert_eq!((c.version, c.next_batch_watermark_ms), (1, Some(0)));
        // Spark accepts a commit without the JSON line.
        assert_eq!(parse_commit(b"v1\n").unwrap().next_batch_watermark_ms, None);
        assert_eq!(parse_commit(b""), Err(Malformed::Empty));
        assert!(matches!(
            parse_commit(b"v1\n{\"nextBatchWatermarkMs\":X}"),
            Err(Malformed::BadJson { line: 2, .. })
        ));
        assert!(matches!(
            parse_commit(&COMMIT.as_bytes()[..12]),
            Err(Malformed::BadJson { .. })
        ));
        assert_eq!(parse_commit(&[0u8; 29]), Err(Malformed::ZeroFilled));
    }

    #[test]
    fn metadata() {
        assert_eq!(
            parse_metadata(METADATA.as_bytes()).unwrap(),
            "a0b9a9ca-301a-409e-9851-a46e6e2fd037"
        );
        assert_eq!(parse_metadata(b""), Err(Malformed::Empty));
        assert_eq!(parse_metadata(b"{\"id\":5}"), Err(Malformed::MissingId));
        assert!(matches!(
            parse_metadata(b"{\"id\":\"a0b9"),
            Err(Malformed::BadJson { .. })
        ));
    }
}
