//! Redaction of secrets in anything sparkvisor shows (plan, /status, logs).
//!
//! Pure. A key is secret when it matches Spark's own redaction idea
//! (`secret|password|token|access.key`) widened to the usual spellings of
//! credentials. Invariant: callers redact at the point of display; the
//! values handed to Spark are never altered.

pub const REDACTED: &str = "***";

const MARKERS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "access.key",
    "access_key",
    "accesskey",
    "credential",
    "private.key",
    "private_key",
    "privatekey",
    "api.key",
    "api_key",
    "apikey",
    "sas.",
    "session.key",
];

/// Whether a Spark conf key or environment variable name holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    MARKERS.iter().any(|m| k.contains(m))
}

/// The value to show for `key`.
pub fn value_for_display(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        REDACTED.to_string()
    } else {
        redact_userinfo(value)
    }
}

/// Hides the password in `scheme://user:password@host` URLs.
pub fn redact_userinfo(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = &authority[..authority[..at].find(':').unwrap_or(at)];
            format!(
                "{}://{user}:{REDACTED}@{}",
                &value[..scheme_end],
                &rest[at + 1..]
            )
        }
        _ => value.to_string(),
    }
}

/// Redacts an argument list for display: `--password x`, `--token=x`,
/// `key.secret=x` and URL passwords.
pub fn argv_for_display(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for arg in argv {
        if hide_next {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        if let Some((k, _)) = arg.split_once('=') {
            if is_secret_key(k) {
                out.push(format!("{k}={REDACTED}"));
                continue;
            }
        } else if arg.starts_with('-') && is_secret_key(arg) {
            hide_next = true;
        }
        out.push(redact_userinfo(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys() {
        for k in [
            "spark.hadoop.fs.s3a.secret.key",
            "spark.hadoop.fs.s3a.access.key",
            "spark.ssl.keyStorePassword",
            "spark.kubernetes.authenticate.submission.oauthToken",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "spark.hadoop.fs.azure.sas.token",
            "spark.hadoop.google.cloud.auth.service.account.json.keyfile.credentials",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "spark.driver.memory",
            "spark.master",
            "spark.authenticate",
            "AWS_REGION",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact_userinfo("s3://u:pw@host/b"), "s3://u:***@host/b");
        assert_eq!(redact_userinfo("http://host:80/x"), "http://host:80/x");
        assert_eq!(redact_userinfo("plain"), "plain");
    }

    #[test]
    fn argv() {
        let a: Vec<String> = [
            "--password",
            "hunter2",
            "--db-token=abc",
            "x",
            "jdbc://u:p@h/db",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            argv_for_display(&a),
            vec![
                "--password",
                "***",
                "--db-token=***",
                "x",
                "jdbc://u:***@h/db"
            ]
        );
    }
}
