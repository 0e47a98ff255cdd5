//! Which Spark is installed at `SPARK_HOME`, and whether sparkvisor is
//! tested with it.
//!
//! Three places can tell, in this order of trust:
//! 1. the name of `jars/spark-core_<scala>-<version>.jar`: the classes the
//!    JVM actually loads (binary distributions, images and the pyspark
//!    wheel all have it);
//! 2. the first line of `RELEASE` (`Spark 3.5.1 built for Hadoop 3.3.4`):
//!    distributions and the official images have it, the wheel does not, and
//!    it goes stale when someone swaps the jars;
//! 3. `__version__` in pyspark's `version.py` (`SPARK_HOME/version.py` when
//!    SPARK_HOME is the wheel's package folder, `python/pyspark/version.py`
//!    in a distribution): the Python side, which can differ from the JVM's.
//!
//! The first that answers wins; the others, when present and different, are
//! reported as disagreements (the app's Python and the JVM from two Spark
//! versions is a broken install). Invariants: parsing is pure; `detect`
//! only reads small files and lists one folder; nothing here fails —
//! "unknown" is an answer.

use std::fmt;
use std::path::{Path, PathBuf};

/// A Spark release number such as `4.0.1` or `4.1.0-preview2`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `-preview1`, `-SNAPSHOT`, …, without the dash.
    pub suffix: Option<String>,
}

impl Version {
    /// Parses `X.Y.Z[-suffix]` (also `X.Y` as `X.Y.0`).
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let (numbers, suffix) = match text.split_once('-') {
            Some((n, s)) if !s.is_empty() => (n, Some(s.to_string())),
            Some(_) => return None,
            None => (text, None),
        };
        let mut parts = numbers.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        let patch = match parts.next() {
            None => 0,
            p => num(p)?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            suffix,
        })
    }

    /// `X.Y`: the release line.
    pub fn line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(s) = &self.suffix {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

/// Where a version was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// `jars/spark-core_<scala>-<version>.jar`.
    CoreJar(PathBuf),
    /// The `RELEASE` file.
    Release(PathBuf),
    /// pyspark's `version.py`.
    PysparkVersion(PathBuf),
}

impl Evidence {
    pub fn path(&self) -> &Path {
        match self {
            Evidence::CoreJar(p) | Evidence::Release(p) | Evidence::PysparkVersion(p) => p,
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::CoreJar(p) => write!(f, "the jar {}", p.display()),
            Evidence::Release(p) => write!(f, "{}", p.display()),
            Evidence::PysparkVersion(p) => write!(f, "pyspark's {}", p.display()),
        }
    }
}

/// What `detect` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub version: Version,
    /// The Scala binary version (`2.12`, `2.13`), from the jar name.
    pub scala: Option<String>,
    pub evidence: Evidence,
    /// Other places that name a different version (or several core jars).
    pub disagreements: Vec<String>,
}

/// How sparkvisor stands to a Spark line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// One of the tested lines.
    Tested,
    /// Not a tested line; the text says why it may still work or not.
    Untested(String),
}

/// The Spark lines sparkvisor is tested with (README: compatibility).
pub const TESTED_LINES: [(u32, u32); 3] = [(3, 5), (4, 0), (4, 3)];

/// The newest tested line; the default of the image, the chart and the tests.
pub const NEWEST_TESTED: (u32, u32) = (4, 3);

/// Whether sparkvisor is tested with `v`'s line.
pub fn support(v: &Version) -> Support {
    let line = (v.major, v.minor);
    if TESTED_LINES.contains(&line) {
        return Support::Tested;
    }
    let tested = TESTED_LINES
        .iter()
        .map(|(a, b)| format!("{a}.{b}"))
        .collect::<Vec<_>>()
        .join(", ");
    let why = if line < TESTED_LINES[0] {
        format!(
            "Spark {v} is older than every tested line ({tested}): its checkpoint files and \
             confs were not checked and may differ"
        )
    } else if line > NEWEST_TESTED {
        format!(
            "Spark {v} is newer than the newest tested line ({tested}): a newer checkpoint format \
             is reported, never repaired"
        )
    } else {
        format!("Spark {v} is not a tested line ({tested})")
    };
    Support::Untested(why)
}

/// `spark-core_2.13-4.0.1.jar` → (`2.13`, 4.0.1).
pub fn parse_core_jar(name: &str) -> Option<(String, Version)> {
    let rest = name.strip_prefix("spark-core_")?.strip_suffix(".jar")?;
    // Maven classifiers, not versions.
    if ["-tests", "-sources", "-javadoc"]
        .iter()
        .any(|c| rest.ends_with(c))
    {
        return None;
    }
    let (scala, version) = rest.split_once('-')?;
    let scala_ok = !scala.is_empty() && scala.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !scala_ok {
        return None;
    }
    Some((scala.to_string(), Version::parse(version)?))
}

/// `Spark 3.5.1 built for Hadoop 3.3.4` (first line of `RELEASE`) → 3.5.1.
pub fn parse_release(text: &str) -> Option<Version> {
    let first = text.lines().next()?;
    let mut words = first.split_whitespace();
    if words.next()? != "Spark" {
        return None;
    }
    Version::parse(words.next()?)
}

/// `__version__: str = "4.0.1"` or `__version__ = '3.5.9'` → the version.
pub fn parse_version_py(text: &str) -> Option<Version> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?;
        let value = rest.split_once('=')?.1.trim();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let inner = value[1..].split(quote).next()?;
        Version::parse(inner)
    })
}

/// Reads what SPARK_HOME says about its version (see the module docs);
/// `None` when nothing does.
pub fn detect(spark_home: &Path) -> Option<Found> {
    let mut cores: Vec<(PathBuf, String, Version)> = std::fs::read_dir(spark_home.join("jars"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let (scala, v) = parse_core_jar(&name)?;
                    Some((e.path(), scala, v))
                })
                .collect()
        })
        .unwrap_or_default();
    cores.sort();
    let release_path = spark_home.join("RELEASE");
    let release = std::fs::read_to_string(&release_path)
        .ok()
        .and_then(|t| parse_release(&t))
        .map(|v| (Evidence::Release(release_path), v));
    let pyspark = [
        spark_home.join("version.py"),
        spark_home.join("python/pyspark/version.py"),
    ]
    .into_iter()
    .find_map(|p| {
        let v = parse_version_py(&std::fs::read_to_string(&p).ok()?)?;
        Some((Evidence::PysparkVersion(p), v))
    });
    decide(cores, release, pyspark)
}

/// The pure part of [`detect`]: the first source that answers, the others
/// as disagreements when they differ.
fn decide(
    cores: Vec<(PathBuf, String, Version)>,
    release: Option<(Evidence, Version)>,
    pyspark: Option<(Evidence, Version)>,
) -> Option<Found> {
    let mut disagreements = Vec::new();
    if cores.len() > 1 {
        disagreements.push(format!(
            "several spark-core jars: {}",
            cores
                .iter()
                .map(|(p, _, _)| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut rest: Vec<(Evidence, Version)> = release.into_iter().chain(pyspark).collect();
    let (evidence, version, scala) = match cores.into_iter().next() {
        Some((path, scala, v)) => (Evidence::CoreJar(path), v, Some(scala)),
        None if !rest.is_empty() => {
            let (e, v) = rest.remove(0);
            (e, v, None)
        }
        None => return None,
    };
    for (e, v) in rest {
        if v != version {
            disagreements.push(format!("{e} says {v}"));
        }
    }
    Some(Found {
        version,
        scala,
        evidence,
        disagreements,
    })
}

/// One line for people: `4.3.0 (Scala 2.13), from the jar …`.
pub fn describe(found: &Found) -> String {
    let scala = found
        .scala
        .as_ref()
        .map(|s| format!(" (Scala {s})"))
        .unwrap_or_default();
    format!("{}{scala}, from {}", found.version, found.evidence)
}

/// The warnings `plan` prints and `run` logs for what was found.
pub fn warnings(found: Option<&Found>, spark_home: &Path) -> Vec<String> {
    let Some(f) = found else {
        return vec![format!(
            "cannot tell which Spark is at {} (no jars/spark-core_*.jar, RELEASE or pyspark \
             version.py): its checkpoint format and confs are assumed to be those of Spark {}.{}",
            spark_home.display(),
            NEWEST_TESTED.0,
            NEWEST_TESTED.1
        )];
    };
    let mut out = Vec::new();
    if let Support::Untested(why) = support(&f.version) {
        out.push(why);
    }
    for d in &f.disagreements {
        out.push(format!(
            "Spark at {} is {} but {d}",
            spark_home.display(),
            f.version
        ));
    }
    out
}

/// The `spark` object of `plan --format json`.
pub fn to_json(found: Option<&Found>, spark_home: &Path) -> serde_json::Value {
    serde_json::json!({
        "home": spark_home,
        "version": found.map(|f| f.version.to_string()),
        "scala": found.and_then(|f| f.scala.clone()),
        "found_in": found.map(|f| f.evidence.path().to_path_buf()),
        "tested": found.is_some_and(|f| support(&f.version) == Support::Tested),
        "warnings": warnings(found, spark_home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            v("4.0.1"),
            Version {
                major: 4,
                minor: 0,
                patch: 1,
                suffix: None
            }
        );
        assert_eq!(v("4.1.0-preview2").suffix.as_deref(), Some("preview2"));
        assert_eq!(v("3.5").patch, 0);
        assert_eq!(v("4.1.0-preview2").to_string(), "4.1.0-preview2");
        assert_eq!(v("3.5.9").line(), "3.5");
        for bad in [
            "", "4", "4.x.1", "4.0.1.2", "4.0.", "4.0.1-", "v4.0.1", " -1.0",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_and_files_parse() {
        assert_eq!(
            parse_core_jar("spark-core_2.13-4.3.0.jar"),
            Some(("2.13".into(), v("4.3.0")))
        );
        assert_eq!(
            parse_core_jar("spark-core_2.12-3.5.9.jar"),
            Some(("2.12".into(), v("3.5.9")))
        );
        assert_eq!(parse_core_jar("spark-core_2.13-4.0.1-tests.jar"), None);
        assert_eq!(parse_core_jar("spark-sql_2.13-4.0.1.jar"), None);
        assert_eq!(parse_core_jar("spark-core_x-4.0.1.jar"), None);
        assert_eq!(
            parse_release("Spark 3.5.1 built for Hadoop 3.3.4\nBuild flags: -B\n"),
            Some(v("3.5.1"))
        );
        assert_eq!(parse_release("Hadoop 3.3.4"), None);
        assert_eq!(
            parse_version_py("# comment\n__version__: str = \"4.0.1\"\n"),
            Some(v("4.0.1"))
        );
        assert_eq!(
            parse_version_py("__version__ = '3.5.9'\n"),
            Some(v("3.5.9"))
        );
        assert_eq!(parse_version_py("__version__ = get()\n"), None);
    }

    #[test]
    fn tested_lines_and_the_others() {
        for t in ["3.5.0", "3.5.9", "4.0.1", "4.0.5", "4.3.0"] {
            assert_eq!(support(&v(t)), Support::Tested, "{t}");
        }
        let Support::Untested(why) = support(&v("3.4.4")) else {
            panic!()
        };
        assert!(why.contains("older"), "{why}");
        let Support::Untested(why) = support(&v("4.2.1")) else {
            panic!()
        };
        assert!(why.contains("not a tested line"), "{why}");
        let Support::Untested(why) = support(&v("5.0.0")) else {
            panic!()
        };
        assert!(why.contains("newer"), "{why}");
    }

    #[test]
    fn the_jar_wins_and_disagreements_are_kept() {
        let jar = |s: &str| {
            (
                PathBuf::from(format!("/s/jars/{s}")),
                "2.13".into(),
                v("4.0.1"),
            )
        };
        let release = Some((Evidence::Release("/s/RELEASE".into()), v("3.5.1")));
        let py = Some((Evidence::PysparkVersion("/s/version.py".into()), v("4.0.1")));
        let f = decide(
            vec![jar("spark-core_2.13-4.0.1.jar")],
            release.clone(),
            py.clone(),
        )
        .unwrap();
        assert_eq!(f.version, v("4.0.1"));
        assert_eq!(f.scala.as_deref(), Some("2.13"));
        assert_eq!(f.disagreements, ["/s/RELEASE says 3.5.1"]);
        // No jar: RELEASE, then version.py.
        let f = decide(vec![], release.clone(), py.clone()).unwrap();
        assert_eq!(f.evidence, Evidence::Release("/s/RELEASE".into()));
        assert_eq!(f.disagreements.len(), 1);
        let f = decide(vec![], None, py).unwrap();
        assert!(f.disagreements.is_empty() && f.scala.is_none());
        assert_eq!(decide(vec![], None, None), None);
        let two = decide(vec![jar("a.jar"), jar("b.jar")], None, None).unwrap();
        assert!(two.disagreements[0].contains("several spark-core jars"));
    }

    #[test]
    fn detect_reads_a_spark_home() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        assert_eq!(detect(home), None);
        let w = warnings(None, home);
        assert!(w[0].contains("cannot tell which Spark"), "{w:?}");
        std::fs::create_dir_all(home.join("jars")).unwrap();
        std::fs::write(home.join("jars/spark-core_2.12-3.5.9.jar"), b"").unwrap();
        std::fs::write(home.join("jars/spark-sql_2.12-3.5.9.jar"), b"").unwrap();
        std::fs::write(home.join("version.py"), "__version__: str = \"3.5.9\"\n").unwrap();
        let f = detect(home).unwrap();
        assert_eq!(f.version, v("3.5.9"));
        assert!(f.disagreements.is_empty());
        assert!(warnings(Some(&f), home).is_empty());
        assert!(describe(&f).starts_with("3.5.9 (Scala 2.12), from the jar "));
        let j = to_json(Some(&f), home);
        assert_eq!(j["version"], "3.5.9");
        assert_eq!(j["tested"], true);
        std::fs::write(home.join("RELEASE"), "Spark 3.4.1 built for Hadoop 3.3.4\n").unwrap();
        let f = detect(home).unwrap();
        let w = warnings(Some(&f), home);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("RELEASE says 3.4.1"), "{w:?}");
    }
}
