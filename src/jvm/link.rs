//! Linking a running driver's loaded classes before it writes its archive.
//!
//! On Java 17 and 18, `VM.cds dynamic_dump` archives only linked classes;
//! a Spark driver has thousands that were loaded but never linked (its log
//! says "Skipping …: Not linked"), so a running dump holds far less than
//! one written at exit, which links everything first (Java 19+ does that
//! for the running dump too). sparkvisor closes the gap with a tiny Java
//! agent (`agent/`, source beside its jar) loaded through the attach
//! socket: it links every loaded class by reflection, without running any
//! static initialiser.
//!
//! Invariants: used only on Java 17–18 and only right before a running
//! dump; the jar is written into the archive directory under a
//! `sparkvisor-` name (so a leftover is pruned at the next start) and
//! removed once the agent has returned; any failure only means a smaller
//! archive, never a failed dump or a disturbed app.

use std::path::Path;
use std::time::Duration;

use super::{JvmError, attach};

/// The agent jar (`make agent` rebuilds it from `agent/`).
pub const AGENT_JAR: &[u8] = include_bytes!("agent/link-loaded-classes.jar");

/// Whether a running dump of this Java feature release needs the classes
/// linked first.
pub fn needed(java_feature: u32) -> bool {
    (17..=18).contains(&java_feature)
}

/// Writes the agent to `jar`, runs it in the JVM `pid` (waits at most
/// `timeout` for it to finish) and removes the jar again.
pub fn link_loaded_classes(pid: i32, jar: &Path, timeout: Duration) -> Result<(), JvmError> {
    std::fs::write(jar, AGENT_JAR).map_err(|e| JvmError::io(jar, e))?;
    let result = attach::load_java_agent(pid, jar, timeout);
    let _ = std::fs::remove_file(jar);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_java_17_and_18() {
        assert!(!needed(16));
        assert!(needed(17));
        assert!(needed(18));
        assert!(!needed(19), "Java 19+ links before a running dump itself");
        assert!(!needed(21));
    }

    #[test]
    fn the_embedded_jar_names_its_agent_class() {
        assert_eq!(&AGENT_JAR[..4], b"PK\x03\x04", "a zip file");
        let text = String::from_utf8_lossy(AGENT_JAR);
        assert!(text.contains("sparkvisor/agent/LinkLoadedClasses.class"));
    }

    /// A real JVM runs the agent through its attach socket and the jar is
    /// gone afterwards.
    #[test]
    fn a_real_jvm_runs_the_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let jar = tmp.path().join("sparkvisor-test.a1.link.jar");
        let mut jvm = attach::test_jvm::TestJvm::start();
        let result = link_loaded_classes(jvm.pid(), &jar, Duration::from_secs(60));
        assert!(jvm.is_running(), "the JVM survived the agent");
        result.expect("the agent ran");
        assert!(!jar.exists(), "the jar is removed");
    }

    /// The committed jar holds the committed source's class: compiled
    /// again here, the two disassemble alike (needs a JDK: javac, jar,
    /// javap).
    #[test]
    fn the_jar_is_built_from_the_source() {
        use std::process::Command;
        let run = |cmd: &mut Command| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{cmd:?}: {e} (a JDK is needed: `make java`)"));
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/jvm/agent");
        let fresh = tmp.path().join("fresh");
        let from_jar = tmp.path().join("jar");
        std::fs::create_dir_all(&from_jar).unwrap();
        std::fs::write(tmp.path().join("agent.jar"), AGENT_JAR).unwrap();
        run(Command::new("javac")
            .args(["--release", "11", "-d"])
            .arg(&fresh)
            .arg(src.join("sparkvisor/agent/LinkLoadedClasses.java")));
        run(Command::new("jar")
            .arg("xf")
            .arg(tmp.path().join("agent.jar"))
            .current_dir(&from_jar));
        let class = "sparkvisor/agent/LinkLoadedClasses.class";
        let javap = |root: &Path| {
            run(Command::new("javap")
                .args(["-c", "-p"])
                .arg(root.join(class)))
        };
        assert_eq!(
            javap(&from_jar),
            javap(&fresh),
            "src/jvm/agent/link-loaded-classes.jar is stale: run `make agent`"
        );
        let manifest = std::fs::read_to_string(from_jar.join("META-INF/MANIFEST.MF")).unwrap();
        assert!(
            manifest.contains("Agent-Class: sparkvisor.agent.LinkLoadedClasses"),
            "{manifest}"
        );
    }
}
