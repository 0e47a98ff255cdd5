//! Spark's event log: where Spark writes it (sparkvisor turns on rolling
//! event logs to a local directory), reading it as it grows (`tail`, for
//! the query telemetry), its layout (`layout`), and shipping it to S3 in the
//! History Server's layout with bounded local retention (`ship`).
//!
//! Invariants: the effective location comes from the launch plan's Spark
//! properties, so a user's own `spark.eventLog.*` values are honoured
//! (and telemetry says when it cannot read them); nothing here writes to
//! a file Spark writes.

pub mod layout;
pub mod ship;
pub mod tail;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::Config;
use crate::s3::S3Settings;

/// Where the event logs of the app's attempts are, as Spark was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The local directory, when the event log is on and local.
    pub dir: Option<PathBuf>,
    /// Why sparkvisor cannot read it, when it cannot.
    pub problem: Option<String>,
}

impl Site {
    /// From the Spark properties of a launch plan.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Site {
        let get = |k: &str| props.get(k).map(|v| v.trim());
        if get("spark.eventLog.enabled") != Some("true") {
            return Site {
                dir: None,
                problem: Some("spark.eventLog.enabled is not true".into()),
            };
        }
        let raw = get("spark.eventLog.dir").unwrap_or("/tmp/spark-events");
        match local_path(raw) {
            Some(dir) => Site {
                dir: Some(dir),
                problem: None,
            },
            None => Site {
                dir: None,
                problem: Some(format!(
                    "spark.eventLog.dir = {raw:?} is not a local directory"
                )),
            },
        }
    }
}

/// `file:/x`, `file:///x` or `/x` as a local path.
fn local_path(uri: &str) -> Option<PathBuf> {
    let path = match uri.strip_prefix("file:") {
        Some(rest) => {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            // `file://localhost/x` names a host; only the empty host is local.
            if !rest.starts_with('/') {
                return None;
            }
            rest
        }
        None if uri.starts_with('/') => uri,
        None => return None,
    };
    Some(PathBuf::from(path))
}

/// S3 connection settings: `[checkpoint.s3]`, overridden by `[eventlog]`.
pub fn s3_settings(cfg: &Config) -> S3Settings {
    let mut s = S3Settings::from_config(&cfg.checkpoint.s3);
    let ev = &cfg.eventlog;
    if ev.endpoint.is_some() {
        s.endpoint = ev.endpoint.clone();
    }
    if ev.region.is_some() {
        s.region = ev.region.clone();
    }
    if let Some(p) = ev.force_path_style {
        s.force_path_style = p;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn site_from_the_effective_properties() {
        let on = |dir: &str| {
            Site::from_properties(&props(&[
                ("spark.eventLog.enabled", "true"),
                ("spark.eventLog.dir", dir),
            ]))
        };
        for (dir, want) in [
            ("file:/var/log/ev", "/var/log/ev"),
            ("file:///var/log/ev", "/var/log/ev"),
            ("/var/log/ev", "/var/log/ev"),
        ] {
            assert_eq!(on(dir).dir, Some(PathBuf::from(want)), "{dir}");
        }
        for remote in ["s3a://b/ev", "hdfs:///ev", "file://host/ev", "ev"] {
            let s = on(remote);
            assert_eq!(s.dir, None);
            assert!(s.problem.unwrap().contains(remote));
        }
        let off = Site::from_properties(&props(&[("spark.eventLog.enabled", "false")]));
        assert!(off.problem.unwrap().contains("spark.eventLog.enabled"));
    }

    #[test]
    fn connection_settings_are_shared_unless_overridden() {
        let mut cfg = Config::default();
        cfg.checkpoint.s3.endpoint = Some("http://minio:9000".into());
        cfg.checkpoint.s3.region = Some("eu-west-1".into());
        cfg.checkpoint.s3.force_path_style = true;
        let s = s3_settings(&cfg);
        assert_eq!(s.endpoint.as_deref(), Some("http://minio:9000"));
        assert!(s.force_path_style);
        cfg.eventlog.region = Some("us-east-2".into());
        cfg.eventlog.force_path_style = Some(false);
        let s = s3_settings(&cfg);
        assert_eq!(s.region.as_deref(), Some("us-east-2"));
        assert!(!s.force_path_style);
        assert_eq!(s.endpoint.as_deref(), Some("http://minio:9000"));
    }
}
