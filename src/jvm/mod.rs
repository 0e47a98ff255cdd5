//! Warm restarts: a JVM class-data-sharing (CDS) archive of the classes the
//! driver loads, so a restarted driver maps them instead of loading,
//! parsing and verifying thousands of classes again.
//!
//! Submodules: `java` (which JVM, which version), `options` (reading JVM
//! command lines), `key` (what makes an archive stale), `decide` (on/off,
//! strategy, options per attempt; pure), `archive` (the archive directory),
//! `cdslog` (what the JVM's CDS log says), `attach` (asking a running JVM
//! to dump), `link` (linking its classes first on Java 17–18), `cds` (the
//! per-attempt hooks the supervisor calls).
//!
//! Invariants: the JVM never fails to start because of an archive (only
//! verified archives are offered, always with `-Xshare:auto`; a rejected or
//! suspicious archive is discarded and rebuilt); an archive is used only
//! under the key it was made for; the archive directory holds at most one
//! archive; the JVM's CDS log goes to `<runtime_dir>/jvm-cds.log`.

pub mod archive;
pub mod attach;
pub mod cds;
pub mod cdslog;
pub mod decide;
pub mod java;
pub mod key;
pub mod link;
pub mod options;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use cds::Cds;
pub use decide::{Decision, Strategy};

use crate::config::{CdsMode, Loaded, Resolved};
use crate::submit::Prepared;
use archive::Store;
use java::{JavaBinary, JavaVersion};
use key::KeyInputs;

#[derive(Debug, thiserror::Error)]
pub enum JvmError {
    #[error("no java binary: JAVA_HOME is not set and there is no java on PATH")]
    JavaNotFound,
    #[error("cannot run {}: {why}", path.display())]
    JavaRun { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a dynamic CDS archive (it starts with {head})", path.display())]
    NotAnArchive { path: PathBuf, head: String },
    #[error("cannot attach to JVM {pid}: {why}")]
    Attach { pid: i32, why: String },
}

impl JvmError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        JvmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The CDS log file of the current attempt.
pub fn log_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("jvm-cds.log")
}

/// `jvm.archive_dir`, else `jvm-archive` beside `checkpoint.dir` (the
/// checkpoint volume's parent), else under `supervisor.runtime_dir`.
pub fn archive_dir(loaded: &Loaded) -> PathBuf {
    let cfg = &loaded.config;
    if let Some(d) = &cfg.jvm.archive_dir {
        return d.clone();
    }
    cfg.checkpoint
        .dir
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.join("jvm-archive"))
        .unwrap_or_else(|| cfg.supervisor.runtime_dir.join("jvm-archive"))
}

/// Everything detected once per sparkvisor process: the JVM, the key, the
/// decision. Read-only: nothing is created or removed.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mode: CdsMode,
    pub java_binary: Option<JavaBinary>,
    pub java: Option<JavaVersion>,
    pub decision: Decision,
    pub store: Store,
    pub log_path: PathBuf,
    pub key_inputs: Option<KeyInputs>,
}

impl Setup {
    /// Detects the driver's JVM and decides, from what every attempt's
    /// plan shares; runs `java -version` once when CDS is on.
    pub fn detect(loaded: &Loaded, resolved: &Resolved, prepared: &Prepared) -> Setup {
        let cfg = &loaded.config;
        let log_path = log_path(&cfg.supervisor.runtime_dir);
        let dir = archive_dir(loaded);
        let prop = |k: &str| prepared.user_conf(k).map(String::from);
        // The driver's options in the JVM's order: Spark's default
        // options, sizing's flags, then the user's extra options.
        let mut jvm_options = Vec::new();
        if let Some(v) = prop("spark.driver.defaultJavaOptions") {
            jvm_options.extend(options::split_options(&v));
        }
        jvm_options.extend(prepared.sizing.jvm_flags.iter().cloned());
        if let Some(v) = prop("spark.driver.extraJavaOptions") {
            jvm_options.extend(options::split_options(&v));
        }
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        env.extend(prepared.env.clone());

        let mut setup = Setup {
            mode: cfg.jvm.cds,
            java_binary: None,
            java: None,
            decision: Decision::Off {
                reason: "jvm.cds = \"off\"".into(),
            },
            store: Store::new(dir.clone(), String::new()),
            log_path: log_path.clone(),
            key_inputs: None,
        };
        if cfg.jvm.cds == CdsMode::Off {
            return setup;
        }
        let java = java::locate(&env, &|p| p.is_file()).and_then(|b| {
            let v = java::detect(&b, &env);
            setup.java_binary = Some(b);
            v
        });
        let java = java.map_err(|e| e.to_string());
        if let Ok(v) = &java {
            setup.java = Some(v.clone());
        }
        let spark_home = &resolved.spark_home.value;
        let extra_cp = prop("spark.driver.extraClassPath");
        let lookup = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let nonempty: Vec<PathBuf> =
            options::predicted_class_path_dirs(spark_home, extra_cp.as_deref(), &lookup)
                .into_iter()
                .filter(|d| is_nonempty_dir(d))
                .collect();
        setup.decision = decide::decide(&decide::Facts {
            mode: cfg.jvm.cds,
            java: java.as_ref().map_err(Clone::clone),
            jvm_options: &jvm_options,
            paths: &[dir.as_path(), log_path.as_path()],
            nonempty_class_path_dirs: &nonempty,
        });
        if let (Ok(v), Some(bin)) = (&java, &setup.java_binary) {
            let mut class_path = key::spark_jars(spark_home);
            let mut extra: Vec<String> = Vec::new();
            if let Some(x) = &extra_cp {
                extra.extend(x.split(':').filter(|e| !e.is_empty()).map(String::from));
            }
            if let Some(j) = prop("spark.jars") {
                extra.extend(j.split(',').filter(|e| !e.is_empty()).map(String::from));
            }
            extra.extend(cfg.spark.jars.iter().cloned());
            if resolved.app.value.ends_with(".jar") {
                extra.push(resolved.app.value.clone());
            }
            class_path.extend(extra.iter().map(|e| key::entry(e)));
            let binary = std::fs::canonicalize(&bin.path).unwrap_or_else(|_| bin.path.clone());
            let driver_memory = prepared.driver_memory();
            let inputs = KeyInputs::new(
                binary.display().to_string(),
                v.banner.clone(),
                class_path,
                jvm_options,
                driver_memory,
            );
            setup.store = Store::new(dir, inputs.key());
            setup.key_inputs = Some(inputs);
        }
        setup
    }

    /// The options the first attempt would get, checking the archive
    /// without changing anything (for `plan`).
    pub fn first_attempt(&self) -> (Vec<String>, ArchiveView) {
        let view = self.archive_view();
        let Decision::On {
            strategy,
            runtime_dump,
            ..
        } = self.decision
        else {
            return (Vec::new(), view);
        };
        let ready = matches!(view, ArchiveView::Ready { .. });
        let p = decide::attempt_plan(
            strategy,
            runtime_dump,
            ready,
            &self.store.archive(),
            &self.store.partial(1),
            &self.log_path,
        );
        (p.flags, view)
    }

    fn archive_view(&self) -> ArchiveView {
        if !self.decision.is_on() {
            return ArchiveView::NotUsed;
        }
        match self.store.check(&mut None) {
            Ok(Some(r)) => ArchiveView::Ready { bytes: r.size },
            Ok(None) => ArchiveView::Missing,
            Err(why) => ArchiveView::Invalid(why),
        }
    }

    /// A short description of what the key covers.
    pub fn key_summary(&self) -> Option<String> {
        let k = self.key_inputs.as_ref()?;
        Some(format!(
            "{} (java {}, {} class path files, {} JVM options, heap {})",
            self.store.key(),
            k.java_binary,
            k.class_path.len(),
            k.jvm_options.len(),
            k.driver_memory.as_deref().unwrap_or("default")
        ))
    }

    /// The `plan --format json` / `/status` description of the setup.
    pub fn to_json(&self) -> serde_json::Value {
        let (strategy, reason) = match &self.decision {
            Decision::On { strategy, why, .. } => (Some(strategy.as_str()), why.clone()),
            Decision::Off { reason } => (None, reason.clone()),
        };
        serde_json::json!({
            "cds": match self.mode { CdsMode::Auto => "auto", CdsMode::Off => "off" },
            "enabled": self.decision.is_on(),
            "strategy": strategy,
            "reason": reason,
            "java": self.java.as_ref().map(|j| serde_json::json!({
                "version": j.version,
                "feature": j.feature,
                "binary": self.java_binary.as_ref().map(|b| b.path.clone()),
                "found_via": self.java_binary.as_ref().map(|b| b.found_via),
            })),
            "key": self.key_inputs.as_ref().map(|_| self.store.key().to_string()),
            "archive_dir": self.store.dir(),
            "archive": self.key_inputs.as_ref().map(|_| self.store.archive()),
            "log": self.log_path,
        })
    }
}

/// The archive as `plan` sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum ArchiveView {
    NotUsed,
    Missing,
    Ready { bytes: u64 },
    Invalid(String),
}

fn is_nonempty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load};

    fn loaded(toml: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml).unwrap();
        load(&Overrides {
            config_file: Some(f),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn archive_dir_defaults() {
        let l = loaded("[checkpoint]\ndir = \"/data/ckpt\"\n");
        assert_eq!(archive_dir(&l), PathBuf::from("/data/jvm-archive"));
        let l = loaded("[supervisor]\nruntime_dir = \"/run/sv\"\n");
        assert_eq!(archive_dir(&l), PathBuf::from("/run/sv/jvm-archive"));
        let l = loaded("[jvm]\narchive_dir = \"/x\"\n[checkpoint]\ndir = \"/data/ckpt\"\n");
        assert_eq!(archive_dir(&l), PathBuf::from("/x"));
    }
}
