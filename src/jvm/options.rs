//! Pure reading of JVM command lines: the user's options that take CDS or
//! the attach mechanism out of sparkvisor's hands, paths that cannot be
//! written into a JVM option, and the class path of a running JVM.
//!
//! Invariants: decisions here look only at their arguments (no I/O); an
//! option that sparkvisor does not understand never turns CDS on, only off.

use std::path::{Path, PathBuf};

/// Splits a `spark.driver.extraJavaOptions` value the way Spark's launcher
/// does (whitespace, single and double quotes, backslash escapes).
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// A user option that manages class-data sharing itself; sparkvisor then
/// stays out of the way.
pub fn user_manages_cds(opts: &[String]) -> Option<&str> {
    opts.iter().map(String::as_str).find(|o| {
        o.starts_with("-Xshare:")
            || o.starts_with("-XX:SharedArchiveFile")
            || o.starts_with("-XX:ArchiveClassesAtExit")
            || o.starts_with("-XX:SharedClassListFile")
            || o.starts_with("-XX:+AutoCreateSharedArchive")
            || o.starts_with("-XX:-AutoCreateSharedArchive")
            || o.starts_with("-XX:+RecordDynamicDumpInfo")
            || o.starts_with("-XX:-UseSharedSpaces")
            || o.starts_with("-XX:+UseSharedSpaces")
            || o.starts_with("-XX:+DynamicDumpSharedSpaces")
            || o.starts_with("-XX:AOTCache")
            || o.starts_with("-XX:AOTMode")
    })
}

/// A user option that makes attaching to the running JVM impossible or
/// unsafe (with reduced signal use, SIGQUIT would kill the JVM instead of
/// starting its attach listener).
pub fn attach_blocked_by(opts: &[String]) -> Option<&str> {
    opts.iter().map(String::as_str).find(|o| {
        *o == "-Xrs"
            || o.starts_with("-XX:+ReduceSignalUsage")
            || o.starts_with("-XX:+DisableAttachMechanism")
    })
}

/// Why `p` cannot be written into a JVM option: the launcher splits on
/// whitespace and quotes, `-Xlog` uses `:` and `,` as separators, and
/// `SharedArchiveFile` takes `base:top`.
pub fn unsafe_path(p: &Path) -> Option<String> {
    let Some(s) = p.to_str() else {
        return Some(format!("{} is not UTF-8", p.display()));
    };
    let bad = |c: char| c.is_whitespace() || matches!(c, ':' | ',' | '"' | '\'' | '\\' | '=' | '*');
    if let Some(c) = s.chars().find(|c| bad(*c)) {
        return Some(format!(
            "{} contains {c:?}, which cannot be passed in a JVM option",
            p.display()
        ));
    }
    if !p.is_absolute() {
        return Some(format!("{} is not an absolute path", p.display()));
    }
    None
}

/// The class path of a JVM from its argv (`-cp`, `-classpath`,
/// `--class-path`, `-Djava.class.path=`), split into entries.
pub fn class_path_of(argv: &[String]) -> Vec<PathBuf> {
    let mut cp: Option<&str> = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-cp" | "-classpath" | "--class-path" => cp = it.next().map(String::as_str),
            a if a.starts_with("--class-path=") => cp = Some(&a["--class-path=".len()..]),
            a if a.starts_with("-Djava.class.path=") => cp = Some(&a["-Djava.class.path=".len()..]),
            // The main class ends the JVM's own options.
            a if !a.starts_with('-') => break,
            _ => {}
        }
    }
    cp.map(|s| {
        s.split(':')
            .filter(|e| !e.is_empty())
            .map(PathBuf::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Class path entries Spark's launcher puts before and after its jars that
/// may be directories: `spark.driver.extraClassPath`, the conf dir
/// (`SPARK_CONF_DIR`, else `$SPARK_HOME/conf`), `HADOOP_CONF_DIR`,
/// `YARN_CONF_DIR` and `SPARK_DIST_CLASSPATH`.
pub fn predicted_class_path_dirs(
    spark_home: &Path,
    extra_class_path: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let split = |s: &str| -> Vec<PathBuf> {
        s.split(':')
            .filter(|e| !e.is_empty() && !e.ends_with('*'))
            .map(PathBuf::from)
            .collect()
    };
    if let Some(x) = extra_class_path {
        out.extend(split(x));
    }
    out.push(
        env("SPARK_CONF_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| spark_home.join("conf")),
    );
    for k in ["HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_DIST_CLASSPATH"] {
        if let Some(v) = env(k) {
            out.extend(split(&v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_like_the_spark_launcher() {
        assert_eq!(
            split_options("  -Xmx1g  -Da='b c' \"-Dd=e f\" -Dg=h\\ i "),
            v(&["-Xmx1g", "-Da=b c", "-Dd=e f", "-Dg=h i"])
        );
        assert_eq!(split_options(""), Vec::<String>::new());
        assert_eq!(split_options("-Dx=''"), v(&["-Dx="]));
    }

    #[test]
    fn user_cds_options_win() {
        assert_eq!(
            user_manages_cds(&v(&["-Xmx1g", "-Xshare:off"])),
            Some("-Xshare:off")
        );
        assert_eq!(
            user_manages_cds(&v(&["-XX:SharedArchiveFile=/a.jsa"])),
            Some("-XX:SharedArchiveFile=/a.jsa")
        );
        assert_eq!(user_manages_cds(&v(&["-XX:+UseG1GC", "-Xlog:gc"])), None);
    }

    #[test]
    fn attach_blockers() {
        assert_eq!(attach_blocked_by(&v(&["-Xrs"])), Some("-Xrs"));
        assert_eq!(
            attach_blocked_by(&v(&["-XX:+DisableAttachMechanism"])),
            Some("-XX:+DisableAttachMechanism")
        );
        assert_eq!(attach_blocked_by(&v(&["-Xrss1m", "-Xmx1g"])), None);
    }

    #[test]
    fn paths_that_fit_in_an_option() {
        assert_eq!(unsafe_path(Path::new("/var/lib/sv/jvm-archive")), None);
        assert!(unsafe_path(Path::new("/my dir")).unwrap().contains("' '"));
        assert!(unsafe_path(Path::new("/a:b")).is_some());
        assert!(unsafe_path(Path::new("/a,b")).is_some());
        assert!(
            unsafe_path(Path::new("rel/dir"))
                .unwrap()
                .contains("absolute")
        );
    }

    #[test]
    fn class_path_from_argv() {
        let argv = v(&[
            "/usr/bin/java",
            "-cp",
            "/opt/spark/conf/:/opt/spark/jars/*",
            "-Xmx1g",
            "org.apache.spark.deploy.SparkSubmit",
            "-cp",
            "ignored",
        ]);
        assert_eq!(
            class_path_of(&argv[1..]),
            vec![
                PathBuf::from("/opt/spark/conf/"),
                PathBuf::from("/opt/spark/jars/*")
            ]
        );
        assert!(class_path_of(&v(&["-Xmx1g", "Main"])).is_empty());
        assert_eq!(
            class_path_of(&v(&["-Djava.class.path=/a.jar:/b", "Main"])),
            vec![PathBuf::from("/a.jar"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn predicted_dirs_follow_the_launcher() {
        let env = |k: &str| match k {
            "HADOOP_CONF_DIR" => Some("/etc/hadoop".to_string()),
            "SPARK_DIST_CLASSPATH" => Some("/x/*:/y".to_string()),
            _ => None,
        };
        assert_eq!(
            predicted_class_path_dirs(Path::new("/spark"), Some("/extra:/e.jar"), &env),
            vec![
                PathBuf::from("/extra"),
                PathBuf::from("/e.jar"),
                PathBuf::from("/spark/conf"),
                PathBuf::from("/etc/hadoop"),
                PathBuf::from("/y"),
            ]
        );
        let conf = |k: &str| (k == "SPARK_CONF_DIR").then(|| "/c".to_string());
        assert_eq!(
            predicted_class_path_dirs(Path::new("/spark"), None, &conf),
            vec![PathBuf::from("/c")]
        );
    }
}
