//! Configuration: schema, units, layered loading and validation.
//!
//! Owns everything between "the user wrote something" and "the rest of
//! sparkvisor gets typed, validated values". Invariant: any error leaving
//! this module is a [`ConfigError`] that names the key, the value (secrets
//! redacted) and the source (file, env var, flag, default), and maps to
//! exit code 2.

mod load;
mod resolve;
mod schema;
pub mod units;

use std::fmt;
use std::path::PathBuf;

pub use load::{DEFAULT_CONFIG_PATH, Loaded, Overrides, RESERVED_ENV, load};
pub use resolve::{
    Located, Master, Resolved, ResolvedClient, parse_http_url, parse_s3_uri, parse_signal, resolve,
    resolve_with,
};
pub use schema::*;
pub use units::{ByteSize, HumanDuration};

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    /// The environment variable's name.
    Env(String),
    /// The flag as typed (`--set supervisor.max_restarts`).
    Flag(String),
    /// Computed from something else; the text says what.
    Derived(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) if v.is_empty() => f.write_str("environment"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) if v.is_empty() => f.write_str("command line"),
            Source::Flag(v) => write!(f, "flag {v}"),
            Source::Derived(s) => f.write_str(s),
        }
    }
}

/// A configuration or usage error (exit code 2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub key: Option<String>,
    pub value: Option<String>,
    pub origin: Option<Source>,
    pub message: String,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            value: None,
            origin: None,
            message: message.into(),
        }
    }

    pub fn at(
        key: &str,
        source: Source,
        value: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            key: Some(key.to_string()),
            value,
            origin: Some(source),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("configuration error: ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`")?;
            if let Some(v) = &self.value {
                write!(f, " = {}", crate::redact::value_for_display(key, v))?;
            }
            match (&self.origin, &self.value) {
                // An unset key has no interesting source.
                (Some(Source::Default), None) | (None, _) => {}
                (Some(s), _) => write!(f, " (from {s})")?,
            }
            f.write_str(": ")?;
        } else if let Some(s) = &self.origin {
            if let Some(v) = &self.value {
                let shown = crate::redact::value_for_display(&s.to_string(), v);
                write!(f, "{shown:?} ")?;
            }
            write!(f, "(from {s}): ")?;
        }
        f.write_str(&crate::redact::redact_value(&self.message))
    }
}
