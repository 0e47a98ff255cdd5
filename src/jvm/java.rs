//! The JVM spark-submit will run: which `java` binary (the rule of Spark's
//! `bin/spark-class`) and what version it is.
//!
//! Invariants: the binary is chosen exactly as `spark-class` chooses it
//! (`$JAVA_HOME/bin/java` when JAVA_HOME is set and non-empty, else the first
//! `java` on PATH), in the environment the child will get; the version comes
//! from running that binary with `-version` (the `release` file may be
//! missing or belong to another JDK than a PATH symlink suggests, and only
//! the binary itself can say whether its base CDS archive loads). Parsing is
//! pure; running the binary is the only side effect here and has a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::JvmError;

/// How long `java -version` may take (a JVM under heavy load starts slowly).
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the java binary was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JavaBinary {
    pub path: PathBuf,
    /// `JAVA_HOME` or `PATH`.
    pub found_via: &'static str,
}

/// What `java -version` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JavaVersion {
    /// The feature release: 8 for "1.8.0_292", 17 for "17.0.15", 25 for "25-ea".
    pub feature: u32,
    /// The version string between the quotes ("17.0.15").
    pub version: String,
    /// The whole output, which names the build and vendor (part of the archive key).
    pub banner: String,
    /// The VM line says "sharing": the JDK's base CDS archive loads, which
    /// a dynamic archive needs.
    pub sharing: bool,
}

/// The java binary spark-class will run, given the child's environment.
/// `is_file` is injected so the rule is testable.
pub fn locate(
    env: &BTreeMap<String, String>,
    is_file: &dyn Fn(&Path) -> bool,
) -> Result<JavaBinary, JvmError> {
    if let Some(home) = env.get("JAVA_HOME").filter(|h| !h.is_empty()) {
        return Ok(JavaBinary {
            path: Path::new(home).join("bin").join("java"),
            found_via: "JAVA_HOME",
        });
    }
    let path = env.get("PATH").map(String::as_str).unwrap_or("");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("java"))
        .find(|p| is_file(p))
        .map(|path| JavaBinary {
            path,
            found_via: "PATH",
        })
        .ok_or(JvmError::JavaNotFound)
}

/// Parses the output of `java -version` (stderr; lines such as "Picked up
/// JAVA_TOOL_OPTIONS" may come first).
pub fn parse_version(output: &str) -> Option<JavaVersion> {
    let line = output.lines().find(|l| l.contains(" version \""))?;
    let start = line.find('"')? + 1;
    let len = line[start..].find('"')?;
    let version = &line[start..start + len];
    let feature = feature_of(version)?;
    let sharing = output
        .lines()
        .any(|l| l.contains("VM") && l.contains("sharing"));
    Some(JavaVersion {
        feature,
        version: version.to_string(),
        banner: output.trim().to_string(),
        sharing,
    })
}

/// The feature release of a version string: "1.8.0_292" → 8, "17.0.15" → 17,
/// "21" → 21, "25-ea" → 25, "19.0.2+7" → 19.
pub fn feature_of(version: &str) -> Option<u32> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let first = digits(version)?;
    if first == 1 {
        // Legacy scheme: 1.<feature>.0_<update>
        return digits(version.strip_prefix("1.")?);
    }
    Some(first)
}

/// Runs `<java> -version` with the child's environment; fails after a deadline.
pub fn detect(bin: &JavaBinary, env: &BTreeMap<String, String>) -> Result<JavaVersion, JvmError> {
    let mut child = Command::new(&bin.path)
        .arg("-version")
        .env_clear()
        .envs(env)
        // Options from the environment must not change what is detected.
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("JDK_JAVA_OPTIONS")
        .env_remove("_JAVA_OPTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| JvmError::JavaRun {
            path: bin.path.clone(),
            why: e.to_string(),
        })?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(JvmError::JavaRun {
                    path: bin.path.clone(),
                    why: format!("-version did not finish within {VERSION_TIMEOUT:?}"),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(JvmError::JavaRun {
                    path: bin.path.clone(),
                    why: e.to_string(),
                });
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| JvmError::JavaRun {
        path: bin.path.clone(),
        why: e.to_string(),
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if !out.status.success() {
        return Err(JvmError::JavaRun {
            path: bin.path.clone(),
            why: format!("-version exited with {}: {}", out.status, text.trim()),
        });
    }
    parse_version(&text).ok_or_else(|| JvmError::JavaRun {
        path: bin.path.clone(),
        why: format!("unrecognised -version output: {}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JDK17: &str = "openjdk version \"17.0.15\" 2025-04-15\n\
        OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)\n\
        OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)\n";

    #[test]
    fn parses_the_version_line_of_several_vendors() {
        let v = parse_version(JDK17).unwrap();
        assert_eq!(v.feature, 17);
        assert_eq!(v.version, "17.0.15");
        assert!(v.sharing);
        assert!(v.banner.contains("Debian"));

        let v8 = parse_version(
            "Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version \"1.8.0_292\"\n\
             OpenJDK 64-Bit Server VM (build 25.292-b10, mixed mode)\n",
        )
        .unwrap();
        assert_eq!(v8.feature, 8);
        assert!(!v8.sharing, "no 'sharing' on the VM line");

        let ea = parse_version(
            "openjdk version \"25-ea\" 2025-09-16\nOpenJDK 64-Bit Server VM (build 25-ea+3, mixed mode, sharing)\n",
        )
        .unwrap();
        assert_eq!(ea.feature, 25);
        let t = parse_version(
            "openjdk version \"21.0.4\" 2024-07-16 LTS\nOpenJDK Runtime Environment Temurin-21.0.4+7 (build 21.0.4+7-LTS)\n\
             OpenJDK 64-Bit Server VM Temurin-21.0.4+7 (build 21.0.4+7-LTS, mixed mode, sharing)\n",
        )
        .unwrap();
        assert_eq!((t.feature, t.sharing), (21, true));
        assert_eq!(
            parse_version("java version \"11.0.2\" 2019-01-15 LTS\n")
                .unwrap()
                .feature,
            11
        );
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("Error: could not find libjava.so"), None);
        assert_eq!(parse_version("openjdk version \"abc\""), None);
        assert_eq!(feature_of("1."), None);
        assert_eq!(feature_of("19.0.2+7"), Some(19));
    }

    #[test]
    fn java_home_wins_over_path_as_in_spark_class() {
        let env: BTreeMap<String, String> = [
            ("JAVA_HOME".to_string(), "/opt/jdk".to_string()),
            ("PATH".to_string(), "/usr/bin".to_string()),
        ]
        .into();
        let b = locate(&env, &|_| true).unwrap();
        assert_eq!(b.path, PathBuf::from("/opt/jdk/bin/java"));
        assert_eq!(b.found_via, "JAVA_HOME");
    }

    #[test]
    fn path_is_searched_in_order_when_java_home_is_empty() {
        let env: BTreeMap<String, String> = [
            ("JAVA_HOME".to_string(), String::new()),
            ("PATH".to_string(), "/a::/b:/c".to_string()),
        ]
        .into();
        let b = locate(&env, &|p| p.starts_with("/b") || p.starts_with("/c")).unwrap();
        assert_eq!(b.path, PathBuf::from("/b/java"));
        assert_eq!(b.found_via, "PATH");
        assert!(matches!(
            locate(&env, &|_| false),
            Err(JvmError::JavaNotFound)
        ));
    }

    #[test]
    fn runs_the_machines_java() {
        // The machine's JVM (Java 17 here; `make test` installs it).
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let bin = locate(&env, &|p| p.is_file()).expect("java on PATH or JAVA_HOME");
        let v = detect(&bin, &env).expect("java -version runs");
        assert!(v.feature >= 8, "{v:?}");
        assert!(v.banner.contains(&v.version));
    }
}
