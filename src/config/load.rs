//! Loading: built-in defaults < TOML file < `SPARKVISOR_*` env < flags.
//!
//! Owns the figment layering and the translation of figment's errors into
//! one-line [`ConfigError`]s that name the key, the bad value and its source.
//! Invariant: every layer's raw data is kept so any key can be attributed to
//! the layer that set it (`Loaded::source_of`).

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::schema::Config;
use super::{ConfigError, Source};

/// Env vars with the `SPARKVISOR_` prefix that are not configuration keys.
pub const RESERVED_ENV: &[&str] = &[
    "CONFIG",
    "CPU_REQUEST",
    "MEMORY_LIMIT",
    "CHECKPOINT_DIR",
    "ATTEMPT",
    "LOG",
];

pub const DEFAULT_CONFIG_PATH: &str = "/etc/sparkvisor/sparkvisor.toml";

/// What the command line contributes.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--set key.path=value`, in order.
    pub sets: Vec<String>,
    /// `--conf spark.key=value`, in order.
    pub confs: Vec<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// A loaded configuration and where each of its values came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
    layers: Vec<(Source, Dict)>,
}

impl Loaded {
    /// The layer that set `key` (a dotted path), highest precedence first.
    pub fn source_of(&self, key: &[&str]) -> Source {
        for (source, dict) in self.layers.iter().rev() {
            if lookup(dict, key).is_some() {
                return match source {
                    Source::Env(_) => Source::Env(env_var_name(key)),
                    Source::Flag(_) => Source::Flag(flag_name(key)),
                    other => other.clone(),
                };
            }
        }
        Source::Default
    }

    /// Loads from an explicit environment (tests) instead of the process's.
    pub fn from_parts(
        overrides: &Overrides,
        env: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        let mut layers: Vec<(Source, Dict)> = Vec::new();

        let file = config_file(overrides, env)?;
        if let Some((path, how)) = &file {
            let toml = Toml::file_exact(path);
            let data = toml.data().map_err(|e| {
                let msg = one_line(&e.to_string());
                ConfigError::new(format!(
                    "cannot read config file {} ({how}): {msg}",
                    path.display()
                ))
            })?;
            layers.push((Source::File(path.clone()), profile_dict(data)));
        }

        let env_dict = env_layer(env)?;
        if !env_dict.is_empty() {
            layers.push((Source::Env(String::new()), env_dict));
        }

        let flag_dict = flag_layer(overrides)?;
        if !flag_dict.is_empty() {
            layers.push((Source::Flag(String::new()), flag_dict));
        }

        let mut figment = Figment::new();
        for (source, dict) in &layers {
            figment = figment.merge(Layer {
                dict: dict.clone(),
                name: source.to_string(),
            });
        }
        let loaded_file = file.map(|(p, _)| p);
        match figment.extract::<Config>() {
            Ok(config) => Ok(Loaded {
                config,
                file: loaded_file,
                layers,
            }),
            Err(err) => {
                let partial = Loaded {
                    config: Config::default(),
                    file: loaded_file,
                    layers,
                };
                Err(partial.translate(err))
            }
        }
    }

    fn translate(&self, err: figment::Error) -> ConfigError {
        // Report the first error only: one clear message.
        let err = err
            .into_iter()
            .next()
            .expect("figment errors are never empty");
        let mut path: Vec<String> = err.path.clone();
        let message = match &err.kind {
            Kind::UnknownField(field, expected) => {
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                let hint = did_you_mean(field, expected)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                if expected.is_empty() {
                    format!("unknown key{hint}")
                } else {
                    format!(
                        "unknown key{hint}; known keys here: {}",
                        expected.join(", ")
                    )
                }
            }
            Kind::UnknownVariant(v, expected) => {
                format!(
                    "unknown value {v:?}, expected one of: {}",
                    expected.join(", ")
                )
            }
            Kind::InvalidType(actual, expected) => {
                format!("wrong type: found {actual}, expected {expected}")
            }
            Kind::InvalidValue(actual, expected) => {
                format!("invalid value: found {actual}, expected {expected}")
            }
            Kind::Message(m) => m.clone(),
            other => other.to_string(),
        };
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        let source = self.source_of(&keys);
        let value = self.raw_value(&keys).map(|v| render_value(&v));
        ConfigError {
            key: Some(path.join(".")),
            value,
            origin: Some(source),
            message,
        }
    }

    /// The raw value of `key` in the winning layer, if any layer set it.
    pub fn raw_value(&self, key: &[&str]) -> Option<Value> {
        self.layers
            .iter()
            .rev()
            .find_map(|(_, dict)| lookup(dict, key).cloned())
    }
}

/// Loads the configuration from the process's environment.
pub fn load(overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    Loaded::from_parts(overrides, &env)
}

fn config_file(
    overrides: &Overrides,
    env: &[(String, String)],
) -> Result<Option<(PathBuf, String)>, ConfigError> {
    if let Some(p) = &overrides.config_file {
        return require_file(p, "from --config").map(Some);
    }
    if let Some((_, v)) = env.iter().find(|(k, _)| k == "SPARKVISOR_CONFIG")
        && !v.is_empty()
    {
        return require_file(Path::new(v), "from env SPARKVISOR_CONFIG").map(Some);
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    if default.is_file() {
        return Ok(Some((default.to_path_buf(), "default location".into())));
    }
    Ok(None)
}

fn require_file(path: &Path, how: &str) -> Result<(PathBuf, String), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok((path.to_path_buf(), how.to_string())),
        Ok(_) => Err(ConfigError::new(format!(
            "config file {} ({how}) is not a regular file",
            path.display()
        ))),
        Err(e) => Err(ConfigError::new(format!(
            "config file {} ({how}) cannot be read: {e}",
            path.display()
        ))),
    }
}

/// Folds a multi-line parser message (with a source excerpt) into one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim_end)
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty()
                && !t.starts_with('|')
                && !t.split('|').next().is_some_and(|g| {
                    let g = g.trim();
                    !g.is_empty() && g.chars().all(|c| c.is_ascii_digit())
                })
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

fn env_layer(env: &[(String, String)]) -> Result<Dict, ConfigError> {
    let mut dict = Dict::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SPARKVISOR_") else {
            continue;
        };
        if RESERVED_ENV.contains(&rest) || rest.is_empty() || is_service_link(rest) {
            continue;
        }
        // Test builds only: the fault-injection trigger (src/fault.rs).
        if cfg!(feature = "fault-injection") && rest == "FAULT" {
            continue;
        }
        let keys: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError {
                key: None,
                value: Some(value.clone()),
                origin: Some(Source::Env(name.clone())),
                message: "malformed variable name (use SPARKVISOR_SECTION__KEY)".into(),
            });
        }
        let parsed: Value = value.parse().unwrap_or_else(|e| match e {});
        insert(&mut dict, &keys, parsed);
    }
    Ok(dict)
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8080_TCP`
/// and friends for every Service in the namespace; a Service named
/// `sparkvisor…` must not turn those into configuration keys. Real keys
/// always contain `__` (section and key), these never do.
fn is_service_link(rest: &str) -> bool {
    !rest.contains("__")
        && (rest.starts_with("SERVICE_")
            || rest == "PORT"
            || rest.starts_with("PORT_")
            || rest.ends_with("_PORT")
            || rest.contains("_SERVICE_HOST")
            || rest.contains("_SERVICE_PORT")
            || rest.contains("_PORT_"))
}

fn flag_layer(overrides: &Overrides) -> Result<Dict, ConfigError> {
    let mut dict = Dict::new();
    if let Some(f) = &overrides.log_format {
        insert(
            &mut dict,
            &["log".into(), "format".into()],
            Value::from(f.clone()),
        );
    }
    for set in &overrides.sets {
        let (key, value) = split_assignment(set, "--set")?;
        let keys: Vec<String> = key.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError {
                key: Some(key.to_string()),
                value: Some(value.to_string()),
                origin: Some(Source::Flag(format!("--set {set}"))),
                message: "malformed key (use section.key=value)".into(),
            });
        }
        let parsed: Value = value.parse().unwrap_or_else(|e| match e {});
        insert(&mut dict, &keys, parsed);
    }
    for conf in &overrides.confs {
        let (key, value) = split_assignment(conf, "--conf")?;
        insert(
            &mut dict,
            &["spark".into(), "conf".into(), key.to_string()],
            Value::from(value.to_string()),
        );
    }
    Ok(dict)
}

fn split_assignment<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), ConfigError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => Err(ConfigError {
            key: None,
            value: Some(arg.to_string()),
            origin: Some(Source::Flag(format!("{flag} {arg}"))),
            message: format!("expected {flag} KEY=VALUE"),
        }),
    }
}

fn insert(dict: &mut Dict, keys: &[String], value: Value) {
    match keys {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

fn lookup<'a>(dict: &'a Dict, key: &[&str]) -> Option<&'a Value> {
    let (first, rest) = key.split_first()?;
    let v = dict.get(*first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        lookup(v.as_dict()?, rest)
    }
}

fn profile_dict(data: Map<Profile, Dict>) -> Dict {
    data.into_iter().fold(Dict::new(), |mut acc, (_, d)| {
        acc.extend(d);
        acc
    })
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match n.to_i128() {
            Some(i) => i.to_string(),
            None => n.to_f64().map_or_else(|| "?".into(), |f| f.to_string()),
        },
        Value::Empty(_, _) => "(empty)".into(),
        Value::Dict(_, _) => "(a table)".into(),
        Value::Array(_, _) => "(a list)".into(),
    }
}

fn env_var_name(key: &[&str]) -> String {
    format!("SPARKVISOR_{}", key.join("__").to_ascii_uppercase())
}

fn flag_name(key: &[&str]) -> String {
    match key {
        ["spark", "conf", k] => format!("--conf {k}"),
        ["log", "format"] => "--log-format".into(),
        _ => format!("--set {}", key.join(".")),
    }
}

fn did_you_mean<'a>(field: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::levenshtein(field, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min()
        .map(|(_, e)| e)
}

/// A figment provider over one already-read layer.
struct Layer {
    dict: Dict,
    name: String,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let l = Loaded::from_parts(&Overrides::default(), &[]).unwrap();
        assert_eq!(l.config.supervisor.max_restarts, 10);
        assert_eq!(
            l.source_of(&["supervisor", "max_restarts"]),
            Source::Default
        );
    }

    #[test]
    fn file_then_env_then_flag() {
        let f = file(
            "[supervisor]\nmax_restarts = 3\nstop_grace = \"10s\"\n[probes]\nlisten = \"127.0.0.1:9\"\n",
        );
        let o = Overrides {
            config_file: Some(f.path().into()),
            sets: vec!["supervisor.max_restarts=7".into()],
            ..Default::default()
        };
        let e = env(&[
            ("SPARKVISOR_SUPERVISOR__MAX_RESTARTS", "5"),
            ("SPARKVISOR_SUPERVISOR__STOP_GRACE", "20s"),
        ]);
        let l = Loaded::from_parts(&o, &e).unwrap();
        assert_eq!(l.config.supervisor.max_restarts, 7);
        assert_eq!(l.config.supervisor.stop_grace.get().as_secs(), 20);
        assert_eq!(l.config.probes.listen, "127.0.0.1:9");
        assert_eq!(
            l.source_of(&["supervisor", "max_restarts"]),
            Source::Flag("--set supervisor.max_restarts".into())
        );
        assert_eq!(
            l.source_of(&["supervisor", "stop_grace"]),
            Source::Env("SPARKVISOR_SUPERVISOR__STOP_GRACE".into())
        );
        assert_eq!(
            l.source_of(&["probes", "listen"]),
            Source::File(f.path().into())
        );
    }

    #[test]
    fn dotted_spark_conf_keys_survive() {
        let f = file(
            "[spark.conf]\n\"spark.sql.shuffle.partitions\" = 4\n\"spark.ui.enabled\" = true\n",
        );
        let o = Overrides {
            config_file: Some(f.path().into()),
            confs: vec!["spark.executor.memory=2g".into()],
            ..Default::default()
        };
        let l = Loaded::from_parts(&o, &[]).unwrap();
        let conf = &l.config.spark.conf;
        assert_eq!(conf["spark.sql.shuffle.partitions"].0, "4");
        assert_eq!(conf["spark.ui.enabled"].0, "true");
        assert_eq!(conf["spark.executor.memory"].0, "2g");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[supervisor]\nmax_restart = 3\n");
        let o = Overrides {
            config_file: Some(f.path().into()),
            ..Default::default()
        };
        let err = Loaded::from_parts(&o, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("supervisor.max_restart"), "{msg}");
        assert!(msg.contains("max_restarts"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = env(&[("SPARKVISOR_SUPERVISOR__BACKOFF_MAX", "forever")]);
        let err = Loaded::from_parts(&Overrides::default(), &e).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("SPARKVISOR_SUPERVISOR__BACKOFF_MAX"), "{msg}");
        assert!(msg.contains("supervisor.backoff_max"), "{msg}");
        assert!(msg.contains("forever"), "{msg}");
    }

    #[test]
    fn reserved_env_vars_are_not_keys() {
        let e = env(&[
            ("SPARKVISOR_CPU_REQUEST", "2"),
            ("SPARKVISOR_MEMORY_LIMIT", "1073741824"),
            ("SPARKVISOR_CHECKPOINT_DIR", "/x"),
        ]);
        assert!(Loaded::from_parts(&Overrides::default(), &e).is_ok());
        let e = env(&[("SPARKVISOR_BOGUS", "1")]);
        let msg = Loaded::from_parts(&Overrides::default(), &e)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SPARKVISOR_BOGUS"), "{msg}");
    }

    #[test]
    fn kubernetes_service_links_are_not_keys() {
        let e = env(&[
            ("SPARKVISOR_SERVICE_HOST", "10.0.0.1"),
            ("SPARKVISOR_SERVICE_PORT", "8080"),
            ("SPARKVISOR_SERVICE_PORT_HTTP", "8080"),
            ("SPARKVISOR_PORT", "tcp://10.0.0.1:8080"),
            ("SPARKVISOR_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("SPARKVISOR_PORT_8080_TCP_PROTO", "tcp"),
            ("SPARKVISOR_UI_SERVICE_HOST", "10.0.0.2"),
            ("SPARKVISOR_DRIVER_PORT_7078_TCP_ADDR", "10.0.0.3"),
        ]);
        assert!(Loaded::from_parts(&Overrides::default(), &e).is_ok());
        // A typo with one underscore is still an error.
        let e = env(&[("SPARKVISOR_SUPERVISOR_MAX_RESTARTS", "3")]);
        assert!(Loaded::from_parts(&Overrides::default(), &e).is_err());
    }

    #[test]
    fn missing_config_file_names_flag_or_env() {
        let o = Overrides {
            config_file: Some("/nonexistent/x.toml".into()),
            ..Default::default()
        };
        let msg = Loaded::from_parts(&o, &[]).unwrap_err().to_string();
        assert!(
            msg.contains("/nonexistent/x.toml") && msg.contains("--config"),
            "{msg}"
        );
        let e = env(&[("SPARKVISOR_CONFIG", "/nonexistent/y.toml")]);
        let msg = Loaded::from_parts(&Overrides::default(), &e)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SPARKVISOR_CONFIG"), "{msg}");
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let f = file("[supervisor\nmax_restarts = 3\n");
        let o = Overrides {
            config_file: Some(f.path().into()),
            ..Default::default()
        };
        let msg = Loaded::from_parts(&o, &[]).unwrap_err().to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let o = Overrides {
            sets: vec!["spark.mode=clien".into()],
            ..Default::default()
        };
        let msg = Loaded::from_parts(&o, &[]).unwrap_err().to_string();
        assert!(
            msg.contains("spark.mode") && msg.contains("client"),
            "{msg}"
        );
        assert!(msg.contains("--set spark.mode"), "{msg}");
    }

    #[test]
    fn suggestions_for_misspelled_keys() {
        let keys = ["max_restarts", "restart_window", "stop_grace"];
        assert_eq!(did_you_mean("max_restart", &keys), Some("max_restarts"));
        assert_eq!(did_you_mean("stop_grase", &keys), Some("stop_grace"));
        assert_eq!(did_you_mean("zzz", &keys), None);
    }
}
