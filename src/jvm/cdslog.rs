//! Reading the JVM's own CDS log (`-Xlog:cds…:file=…`), which sparkvisor
//! sends to a file of its own so it neither floods the app's stdout nor
//! gets lost: did the JVM map the dynamic archive, and did a dump finish.
//!
//! Invariants: pure functions over the log text; "used" needs positive
//! evidence (a mapped dynamic region) and the absence of every known
//! rejection, because the JVM maps the archive before validating the class
//! path and unmaps it when the check fails.

/// What the log says about the dynamic archive offered to the JVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (the JVM has not reached that point).
    Pending,
    /// The JVM runs with the archive.
    Used,
    /// The JVM rejected it; the text is its reason.
    Rejected(String),
}

/// Lines by which the JVM gives up on an archive (Java 13–25 wording).
const REJECTIONS: &[&str] = &[
    // HotSpot's prefix for every reason it gives up on an archive.
    "UseSharedSpaces:",
    "top archive failed to load",
    "Unable to use shared archive",
    "Loading dynamic archive failed",
    "Unable to map shared spaces",
    "An error has occurred while processing the shared archive",
    "Not a valid shared archive file",
    "dynamic archive validation failed",
    "Checksum verification failed",
];

/// The JVM maps the top archive, checks the class path, and when it keeps
/// the archive it finally unmaps the relocation bitmaps ("Unmapping region
/// #2 … (Bitmap)"); a rejected archive is unmapped with a reason first.
const MAPPED: &str = "Mapped dynamic region #0";
const DONE: &str = "Unmapping region #2";

/// Why the JVM rejected the archive: the most specific line it logged.
fn reason(log: &str) -> String {
    let specific = log
        .lines()
        .find(|l| l.contains("UseSharedSpaces:") || l.contains("mismatch"))
        .or_else(|| {
            log.lines()
                .find(|l| REJECTIONS.iter().any(|r| l.contains(r)))
        })
        .unwrap_or("");
    strip_decorations(specific).to_string()
}

/// The message of a unified-logging line, without `[uptime][level][tags]`.
pub fn strip_decorations(line: &str) -> &str {
    let mut rest = line.trim();
    while rest.starts_with('[') {
        match rest.find(']') {
            Some(i) => rest = rest[i + 1..].trim_start(),
            None => break,
        }
    }
    rest
}

/// The verdict so far. `settled` is true once the JVM has certainly passed
/// its archive checks (the caller's clock: long after the mapping, or long
/// after the log appeared without one); a mapped archive without a
/// rejection then counts as used. Lines written before the mapping (Spark's
/// module options make the JVM log some at once) do not count as progress.
pub fn verdict(log: &str, settled: bool) -> Verdict {
    if log
        .lines()
        .any(|l| REJECTIONS.iter().any(|r| l.contains(r)))
    {
        return Verdict::Rejected(reason(log));
    }
    match log.find(MAPPED) {
        Some(at) if settled || log[at..].contains(DONE) => Verdict::Used,
        Some(_) => Verdict::Pending,
        None if settled => Verdict::Rejected(
            "the JVM did not map the archive (no \"Mapped dynamic region\" in its log)".into(),
        ),
        None => Verdict::Pending,
    }
}

/// Whether the JVM has mapped the archive (it may still reject it).
pub fn mapped(log: &str) -> bool {
    log.contains(MAPPED)
}

/// The JVM finished writing a dynamic archive ("Written dynamic archive").
pub fn dump_written(log: &str) -> bool {
    log.contains("Written dynamic archive")
}

/// The JVM refused to dump because of its class path (a non-empty directory
/// on it kills a running JVM when a dump is requested).
pub fn dump_blocker(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("non-empty directory") || l.contains("Cannot dump shared archive"))
        .map(|l| strip_decorations(l).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as written by OpenJDK 17.0.15 with
    // -Xlog:cds=info,cds+dynamic=info,class+path=info.
    const USED: &str = "\
[0.004s][info][cds       ] trying to map /tmp/a.jsa
[0.004s][info][cds       ] Opened archive /tmp/a.jsa.
[0.011s][info][cds       ] Mapped dynamic region #0 at base 0x00007f958fbc7000 top 0x00007f958fbd5000 (ReadWrite)
[0.011s][info][class,path] checking shared classpath entry: hello.jar
[0.011s][info][class,path] ok
[0.011s][info][cds       ] optimized module handling: enabled
[0.011s][info][cds       ] full module graph: enabled
[0.012s][info][cds       ] Unmapping region #2 at base 0x00007f9617236000 (Bitmap)
[0.012s][info][cds       ] Unmapping region #2 at base 0x00007f9618789000 (Bitmap)
";

    const MISMATCH: &str = "\
[0.013s][info][cds       ] Mapped dynamic region #0 at base 0x00007fd347bc7000 top 0x00007fd347bd7000 (ReadWrite)
[0.013s][info][class,path] checking shared classpath entry: hello.jar
[0.013s][info][cds       ] UseSharedSpaces: A jar file is not the one used while building the shared archive file: hello.jar
[0.013s][info][cds       ] Unmapping region #0 at base 0x00007fd347bc7000 (ReadWrite)
[0.013s][warning][cds,dynamic] Unable to use shared archive. The top archive failed to load: /tmp/good.jsa
[0.013s][info   ][cds        ] optimized module handling: enabled
[0.014s][info   ][cds        ] Unmapping region #2 at base 0x00007fd3cd168000 (Bitmap)
";

    #[test]
    fn used_needs_the_mapping_and_the_validation() {
        assert_eq!(verdict(USED, false), Verdict::Used);
        let early = &USED[..USED.find("[0.011s][info][class,path] checking").unwrap()];
        assert_eq!(
            verdict(early, false),
            Verdict::Pending,
            "mapped, not yet validated"
        );
        assert_eq!(
            verdict(early, true),
            Verdict::Used,
            "settled without a rejection"
        );
        assert_eq!(verdict("", false), Verdict::Pending);
    }

    #[test]
    fn a_mapped_archive_can_still_be_rejected() {
        assert_eq!(
            verdict(MISMATCH, true),
            Verdict::Rejected(
                "UseSharedSpaces: A jar file is not the one used while building the shared archive file: hello.jar"
                    .into()
            )
        );
        let bad_magic = "[0.004s][info][cds] UseSharedSpaces: The shared archive file has a bad magic number.\n\
                         [0.004s][info][cds] UseSharedSpaces: Unable to map shared spaces\n";
        assert!(
            matches!(verdict(bad_magic, false), Verdict::Rejected(r) if r.contains("bad magic"))
        );
        let jdk25 = "[0.004s][error  ][cds] An error has occurred while processing the shared archive file. Run with -Xlog:aot,cds for details.\n\
                     [0.004s][error  ][cds] Loading dynamic archive failed.\n";
        assert!(matches!(verdict(jdk25, false), Verdict::Rejected(_)));
    }

    #[test]
    fn lines_before_the_mapping_are_not_progress() {
        // Spark's --add-opens make the JVM log these before anything else.
        let early = "[0.001s][info][cds] optimized module handling: disabled due to incompatible property: jdk.module.addmods.0=jdk.incubator.vector\n\
                     [0.005s][info][cds] trying to map /x.jsa\n";
        assert_eq!(verdict(early, false), Verdict::Pending);
        assert!(matches!(verdict(early, true), Verdict::Rejected(r) if r.contains("did not map")));
        assert!(!mapped(early));
        // A header from another JVM build: rejected without a "failed" line.
        let version = "[0.004s][info][cds       ] _version expected: 11\n\
                       [0.004s][info][cds       ] UseSharedSpaces: The shared archive file has the wrong version.\n";
        assert_eq!(
            verdict(version, false),
            Verdict::Rejected(
                "UseSharedSpaces: The shared archive file has the wrong version.".into()
            )
        );
    }

    #[test]
    fn dumps_and_their_blockers() {
        assert!(dump_written(
            "[28.546s][info   ][cds,dynamic] Written dynamic archive 0x0000000800bc7000 - 0x0000000807564518 [984 bytes header, 110744856 bytes total]"
        ));
        assert!(!dump_written(
            "[2.3s][info][cds,dynamic] Copying 9396 klasses"
        ));
        assert_eq!(
            dump_blocker("[1.867s][error][cds] Error: non-empty directory '/opt/spark/conf'"),
            Some("Error: non-empty directory '/opt/spark/conf'".into())
        );
        assert_eq!(dump_blocker(USED), None);
    }

    #[test]
    fn decorations_are_stripped() {
        assert_eq!(
            strip_decorations("[0.1s][info][cds] hello [x]"),
            "hello [x]"
        );
        assert_eq!(strip_decorations("plain"), "plain");
    }
}
