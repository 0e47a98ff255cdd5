//! The CDS decision (on or off, which strategy, and why) and the JVM
//! options of one attempt. Pure functions of what was detected.
//!
//! Strategies, by the Java version of the driver's JVM:
//! - Java 19+: `-XX:+AutoCreateSharedArchive -XX:SharedArchiveFile=A`; the
//!   JVM validates A and rewrites it at exit when it is missing or stale.
//! - Java 17+ without an archive: `-XX:+RecordDynamicDumpInfo`, and
//!   sparkvisor asks the running driver to dump (`VM.cds dynamic_dump`)
//!   once it has committed a batch (on Java 17–18 after having it link
//!   its loaded classes: see `link`). A streaming driver rarely exits
//!   normally (it is killed, or crashes), and an archive written only at
//!   exit would then never exist; this one exists minutes after the first
//!   start. (On Java 19+ it is added to AutoCreateSharedArchive.)
//! - Java 13–16, or 17–18 when the user's options rule out attaching:
//!   `-XX:ArchiveClassesAtExit=<partial>` until an archive exists (written
//!   when the JVM exits normally: graceful stop, app exit), then
//!   `-XX:SharedArchiveFile=A`.
//! - Older or unknown JVMs: off.
//!
//! Invariants: every attempt gets `-Xshare:auto` (a rejected archive means
//! a cold start, never a failed one) and its CDS log goes to a file, not
//! to the app's stdout; sparkvisor never adds CDS options when the user's
//! own options manage CDS.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::java::JavaVersion;
use super::options;
use crate::config::CdsMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    AutoCreate,
    DumpWhileRunning,
    DumpAtExit,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::AutoCreate => "auto-create",
            Strategy::DumpWhileRunning => "dump-while-running",
            Strategy::DumpAtExit => "dump-at-exit",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Off {
        reason: String,
    },
    On {
        strategy: Strategy,
        /// sparkvisor may ask the running JVM to dump (attach usable).
        runtime_dump: bool,
        why: String,
    },
}

impl Decision {
    pub fn is_on(&self) -> bool {
        matches!(self, Decision::On { .. })
    }

    pub fn text(&self) -> String {
        match self {
            Decision::Off { reason } => format!("off: {reason}"),
            Decision::On { strategy, why, .. } => format!("on ({}): {why}", strategy.as_str()),
        }
    }
}

/// What the decision looks at.
pub struct Facts<'a> {
    pub mode: CdsMode,
    /// The detected JVM, or why it could not be detected.
    pub java: Result<&'a JavaVersion, String>,
    /// The driver's JVM options (sizing and user), split.
    pub jvm_options: &'a [String],
    /// Paths that go into JVM options (archive dir, log file).
    pub paths: &'a [&'a Path],
    /// Non-empty directories on the driver's class path.
    pub nonempty_class_path_dirs: &'a [PathBuf],
}

pub fn decide(f: &Facts) -> Decision {
    let off = |reason: String| Decision::Off { reason };
    if f.mode == CdsMode::Off {
        return off("jvm.cds = \"off\"".into());
    }
    let java = match &f.java {
        Ok(j) => *j,
        Err(why) => return off(format!("cannot tell which Java the driver runs: {why}")),
    };
    if java.feature < 13 {
        return off(format!(
            "Java {} has no dynamic CDS archives (Java 13 or later)",
            java.version
        ));
    }
    if !java.sharing {
        return off(format!(
            "the base CDS archive of Java {} is not in use (no \"sharing\" in `java -version`), and a dynamic archive builds on it",
            java.version
        ));
    }
    if let Some(o) = options::user_manages_cds(f.jvm_options) {
        return off(format!(
            "the driver's JVM options set {o}: CDS is left to them"
        ));
    }
    if let Some(why) = f.paths.iter().find_map(|p| options::unsafe_path(p)) {
        return off(why);
    }
    if let Some(d) = f.nonempty_class_path_dirs.first() {
        return off(format!(
            "the driver's class path holds the non-empty directory {}; the JVM cannot archive classes with one on it (and would stop on a dump request). Leave it empty or pack its files into a jar",
            d.display()
        ));
    }
    let blocker = options::attach_blocked_by(f.jvm_options);
    let v = &java.version;
    match (java.feature, blocker) {
        (19.., None) => Decision::On {
            strategy: Strategy::AutoCreate,
            runtime_dump: true,
            why: format!(
                "Java {v}: the JVM keeps the archive valid itself; sparkvisor has the running driver write the first one after its first committed batch"
            ),
        },
        (19.., Some(o)) => Decision::On {
            strategy: Strategy::AutoCreate,
            runtime_dump: false,
            why: format!(
                "Java {v}: the JVM keeps the archive valid and writes it at a normal exit ({o} rules out asking the running driver)"
            ),
        },
        (17.., None) => Decision::On {
            strategy: Strategy::DumpWhileRunning,
            runtime_dump: true,
            why: format!(
                "Java {v}: the running driver writes the archive after its first committed batch; later starts map it"
            ),
        },
        (_, blocker) => Decision::On {
            strategy: Strategy::DumpAtExit,
            runtime_dump: false,
            why: match blocker {
                Some(o) if java.feature >= 17 => format!(
                    "Java {v}: the archive is written when the JVM exits normally ({o} rules out asking the running driver)"
                ),
                _ => format!(
                    "Java {v}: the archive is written when the JVM exits normally (graceful stop or app exit)"
                ),
            },
        },
    }
}

/// What one attempt does about the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dump {
    /// Nothing to write (an archive is offered, or the JVM handles it).
    None,
    /// sparkvisor asks the running JVM to write this file.
    WhileRunning(PathBuf),
    /// The JVM writes this file when it exits normally.
    AtExit(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptPlan {
    pub flags: Vec<String>,
    /// The archive handed to the JVM, if any.
    pub offered: Option<PathBuf>,
    pub dump: Dump,
}

/// The options of one attempt. `ready` is a verified archive at `archive`.
pub fn attempt_plan(
    strategy: Strategy,
    runtime_dump: bool,
    ready: bool,
    archive: &Path,
    partial: &Path,
    log: &Path,
) -> AttemptPlan {
    let mut flags = vec!["-Xshare:auto".to_string()];
    let shared_file = format!("-XX:SharedArchiveFile={}", archive.display());
    let (offered, dump) = match (strategy, ready) {
        (Strategy::AutoCreate, _) => {
            flags.push("-XX:+AutoCreateSharedArchive".into());
            flags.push(shared_file);
            if ready {
                (Some(archive.to_path_buf()), Dump::None)
            } else if runtime_dump {
                flags.push("-XX:+RecordDynamicDumpInfo".into());
                (None, Dump::WhileRunning(partial.to_path_buf()))
            } else {
                (None, Dump::None)
            }
        }
        (_, true) => {
            flags.push(shared_file);
            (Some(archive.to_path_buf()), Dump::None)
        }
        (Strategy::DumpWhileRunning, false) => {
            flags.push("-XX:+RecordDynamicDumpInfo".into());
            (None, Dump::WhileRunning(partial.to_path_buf()))
        }
        (Strategy::DumpAtExit, false) => {
            flags.push(format!("-XX:ArchiveClassesAtExit={}", partial.display()));
            (None, Dump::AtExit(partial.to_path_buf()))
        }
    };
    // The JVM's CDS messages (thousands of warnings during a dump) go to a
    // file of their own instead of the app's stdout.
    flags.push("-Xlog:cds*=off".into());
    flags.push(format!(
        "-Xlog:cds=info,cds+dynamic=info,class+path=info:file={}::filecount=0",
        log.display()
    ));
    AttemptPlan {
        flags,
        offered,
        dump,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java(feature: u32) -> JavaVersion {
        JavaVersion {
            feature,
            version: format!("{feature}.0.1"),
            banner: String::new(),
            sharing: true,
        }
    }

    fn facts<'a>(j: &'a JavaVersion, opts: &'a [String]) -> Facts<'a> {
        Facts {
            mode: CdsMode::Auto,
            java: Ok(j),
            jvm_options: opts,
            paths: &[],
            nonempty_class_path_dirs: &[],
        }
    }

    fn strategy(d: &Decision) -> Option<(Strategy, bool)> {
        match d {
            Decision::On {
                strategy,
                runtime_dump,
                ..
            } => Some((*strategy, *runtime_dump)),
            Decision::Off { .. } => None,
        }
    }

    #[test]
    fn by_java_version() {
        let none: Vec<String> = vec![];
        assert_eq!(strategy(&decide(&facts(&java(11), &none))), None);
        assert_eq!(strategy(&decide(&facts(&java(8), &none))), None);
        assert_eq!(
            strategy(&decide(&facts(&java(13), &none))),
            Some((Strategy::DumpAtExit, false))
        );
        assert_eq!(
            strategy(&decide(&facts(&java(16), &none))),
            Some((Strategy::DumpAtExit, false))
        );
        assert_eq!(
            strategy(&decide(&facts(&java(17), &none))),
            Some((Strategy::DumpWhileRunning, true))
        );
        assert_eq!(
            strategy(&decide(&facts(&java(18), &none))),
            Some((Strategy::DumpWhileRunning, true))
        );
        assert_eq!(
            strategy(&decide(&facts(&java(19), &none))),
            Some((Strategy::AutoCreate, true))
        );
        assert_eq!(
            strategy(&decide(&facts(&java(25), &none))),
            Some((Strategy::AutoCreate, true))
        );
    }

    #[test]
    fn off_and_why() {
        let none: Vec<String> = vec![];
        let j = java(17);
        let mut f = facts(&j, &none);
        f.mode = CdsMode::Off;
        assert_eq!(decide(&f).text(), "off: jvm.cds = \"off\"");

        let f = Facts {
            java: Err("java not found".into()),
            ..facts(&j, &none)
        };
        assert!(decide(&f).text().contains("java not found"));

        let mut nosharing = java(17);
        nosharing.sharing = false;
        assert!(
            decide(&facts(&nosharing, &none))
                .text()
                .contains("base CDS archive")
        );

        let user = vec!["-Xshare:off".to_string()];
        assert!(decide(&facts(&j, &user)).text().contains("-Xshare:off"));

        let p = [Path::new("/my archive")];
        let f = Facts {
            paths: &p,
            ..facts(&j, &none)
        };
        assert!(decide(&f).text().contains("cannot be passed"));

        let dirs = [PathBuf::from("/opt/spark/conf")];
        let f = Facts {
            nonempty_class_path_dirs: &dirs,
            ..facts(&j, &none)
        };
        let t = decide(&f).text();
        assert!(
            t.starts_with("off:") && t.contains("/opt/spark/conf"),
            "{t}"
        );
    }

    #[test]
    fn no_attach_means_dump_at_exit() {
        let opts = vec!["-XX:+DisableAttachMechanism".to_string()];
        let d = decide(&facts(&java(17), &opts));
        assert_eq!(strategy(&d), Some((Strategy::DumpAtExit, false)));
        assert!(d.text().contains("DisableAttachMechanism"));
        let d = decide(&facts(&java(21), &["-Xrs".to_string()]));
        assert_eq!(strategy(&d), Some((Strategy::AutoCreate, false)));
    }

    fn plan(s: Strategy, rt: bool, ready: bool) -> AttemptPlan {
        attempt_plan(
            s,
            rt,
            ready,
            Path::new("/a/sv.jsa"),
            Path::new("/a/sv.a1.partial"),
            Path::new("/run/jvm-cds.log"),
        )
    }

    #[test]
    fn options_per_attempt() {
        let p = plan(Strategy::DumpWhileRunning, true, false);
        assert_eq!(
            p.flags,
            vec![
                "-Xshare:auto",
                "-XX:+RecordDynamicDumpInfo",
                "-Xlog:cds*=off",
                "-Xlog:cds=info,cds+dynamic=info,class+path=info:file=/run/jvm-cds.log::filecount=0",
            ]
        );
        assert_eq!(p.offered, None);
        assert_eq!(p.dump, Dump::WhileRunning("/a/sv.a1.partial".into()));

        let p = plan(Strategy::DumpWhileRunning, true, true);
        assert_eq!(
            &p.flags[..2],
            ["-Xshare:auto", "-XX:SharedArchiveFile=/a/sv.jsa"]
        );
        assert_eq!(p.offered, Some("/a/sv.jsa".into()));
        assert_eq!(p.dump, Dump::None);

        let p = plan(Strategy::DumpAtExit, false, false);
        assert_eq!(p.flags[1], "-XX:ArchiveClassesAtExit=/a/sv.a1.partial");
        assert_eq!(p.dump, Dump::AtExit("/a/sv.a1.partial".into()));
        let p = plan(Strategy::DumpAtExit, false, true);
        assert_eq!(p.flags[1], "-XX:SharedArchiveFile=/a/sv.jsa");

        let p = plan(Strategy::AutoCreate, true, false);
        assert_eq!(
            &p.flags[..4],
            [
                "-Xshare:auto",
                "-XX:+AutoCreateSharedArchive",
                "-XX:SharedArchiveFile=/a/sv.jsa",
                "-XX:+RecordDynamicDumpInfo"
            ]
        );
        let p = plan(Strategy::AutoCreate, false, false);
        assert!(!p.flags.iter().any(|f| f.contains("Record")));
        assert_eq!(p.dump, Dump::None);
        let p = plan(Strategy::AutoCreate, true, true);
        assert_eq!(p.offered, Some("/a/sv.jsa".into()));
        assert!(!p.flags.iter().any(|f| f.contains("Record")));
        // Never both ways of dumping at once (the JVM refuses to start).
        for s in [
            Strategy::AutoCreate,
            Strategy::DumpWhileRunning,
            Strategy::DumpAtExit,
        ] {
            for ready in [false, true] {
                let f = plan(s, true, ready).flags;
                assert!(
                    !(f.iter().any(|x| x.contains("RecordDynamicDumpInfo"))
                        && f.iter().any(|x| x.contains("ArchiveClassesAtExit"))),
                    "{f:?}"
                );
            }
        }
    }
}
