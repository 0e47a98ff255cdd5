//! Redaction of secrets in anything sparkvisor shows (plan, /status, logs,
//! configuration errors).
//!
//! Pure. A key is secret when it matches Spark's own redaction idea
//! (`secret|password|token|access.key`) widened to the usual spellings of
//! credentials (Azure account keys, JAAS configurations, API and private
//! keys). A value is shown with its embedded secrets hidden: the password
//! of `scheme://user:password@host`, and the value of every `name=value`
//! inside it whose name is secret (`password=` in a JDBC URL or a JAAS
//! line, `AccountKey=` in an Azure connection string, `sig=` of a SAS URL,
//! `-D…Password=` in JVM options). Invariant: callers redact at the point
//! of display; the values handed to Spark are never altered.

pub const REDACTED: &str = "***";

const MARKERS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "access.key",
    "access_key",
    "accesskey",
    "account.key",
    "accountkey",
    "credential",
    "private.key",
    "private_key",
    "privatekey",
    "api.key",
    "api_key",
    "apikey",
    "sas.",
    "session.key",
    "jaas",
];

/// Parameter names that are secret inside a value although they hold no
/// marker (`pwd=` of ODBC/JDBC strings, `sig=` of an Azure SAS).
const SECRET_PARAMS: &[&str] = &["pwd", "sig", "sharedaccesssignature"];

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
        redact_value(value)
    }
}

/// A value with its embedded secrets hidden (URL passwords, secret
/// `name=value` parameters).
pub fn redact_value(value: &str) -> String {
    redact_params(&redact_userinfo(value))
}

/// Hides the password in `scheme://user:password@host` URLs.
pub fn redact_userinfo(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#', ';']).unwrap_or(rest.len());
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

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_secret_param(name: &str) -> bool {
    let bare = name.trim_start_matches('-');
    let bare = bare
        .strip_prefix('D')
        .filter(|_| name.starts_with("-D"))
        .unwrap_or(bare);
    is_secret_key(bare) || SECRET_PARAMS.iter().any(|p| bare.eq_ignore_ascii_case(p))
}

/// Hides the value of every `name=value` whose name is secret. A quoted
/// value ends at its closing quote; a bare one at `&`, `;`, `,`, a quote,
/// a parenthesis or white space.
fn redact_params(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(eq) = rest.find('=') {
        let (head, tail) = rest.split_at(eq);
        let name_start = head
            .char_indices()
            .rev()
            .find(|(_, c)| !is_name_char(*c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let name = &head[name_start..];
        out.push_str(head);
        out.push('=');
        let tail = &tail[1..];
        if name.is_empty() || !is_secret_param(name) {
            rest = tail;
            continue;
        }
        let end = match tail.chars().next() {
            Some(q @ ('"' | '\'')) => tail[1..].find(q).map_or(tail.len(), |i| i + 2),
            _ => tail
                .find(|c: char| {
                    matches!(c, '&' | ';' | ',' | '"' | '\'' | ')') || c.is_whitespace()
                })
                .unwrap_or(tail.len()),
        };
        if end > 0 {
            let quoted = &tail[..end];
            match quoted.chars().next() {
                Some(q @ ('"' | '\'')) if quoted.len() >= 2 && quoted.ends_with(q) => {
                    out.push(q);
                    out.push_str(REDACTED);
                    out.push(q);
                }
                _ => out.push_str(REDACTED),
            }
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Redacts an argument list for display: `--password x`, `--token=x`,
/// `key.secret=x`, URL passwords and secret parameters inside values.
pub fn argv_for_display(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for arg in argv {
        if hide_next {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        if !arg.contains('=') && arg.starts_with('-') && is_secret_key(arg) {
            hide_next = true;
        }
        out.push(redact_value(arg));
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
            "spark.hadoop.fs.azure.account.key.myacct.dfs.core.windows.net",
            "spark.kafka.sasl.jaas.config",
            "kafka.sasl.jaas.config",
            "AZURE_STORAGE_ACCOUNTKEY",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "spark.driver.memory",
            "spark.master",
            "spark.authenticate",
            "AWS_REGION",
            "spark.hadoop.fs.azure.account.auth.type",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact_userinfo("s3://u:pw@host/b"), "s3://u:***@host/b");
        assert_eq!(redact_userinfo("http://host:80/x"), "http://host:80/x");
        assert_eq!(redact_userinfo("plain"), "plain");
        assert_eq!(
            redact_userinfo("mongodb://app:pw@h1:27017/db?authSource=admin"),
            "mongodb://app:***@h1:27017/db?authSource=admin"
        );
    }

    #[test]
    fn secret_parameters_inside_values() {
        let cases = [
            (
                "jdbc:postgresql://db:5432/orders?user=app&password=hunter2&ssl=true",
                "jdbc:postgresql://db:5432/orders?user=app&password=***&ssl=true",
            ),
            (
                "jdbc:sqlserver://db:1433;databaseName=o;user=app;password=hunter2;encrypt=true",
                "jdbc:sqlserver://db:1433;databaseName=o;user=app;password=***;encrypt=true",
            ),
            (
                "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"app\" password=\"s3 cr=t\";",
                "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"app\" password=\"***\";",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+def==;EndpointSuffix=core.windows.net",
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net",
            ),
            (
                "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=AbC%2Bd&se=2030",
                "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=***&se=2030",
            ),
            (
                "-Dspark.ssl.keyStorePassword=hunter2 -Xmx1g",
                "-Dspark.ssl.keyStorePassword=*** -Xmx1g",
            ),
            (
                "Driver={ODBC};Uid=app;Pwd=hunter2;",
                "Driver={ODBC};Uid=app;Pwd=***;",
            ),
            ("a=b c=d", "a=b c=d"),
            ("password=", "password="),
            ("x==y", "x==y"),
        ];
        for (value, shown) in cases {
            assert_eq!(redact_value(value), shown, "{value}");
        }
    }

    #[test]
    fn argv() {
        let a: Vec<String> = [
            "--password",
            "hunter2",
            "--db-token=abc",
            "x",
            "jdbc://u:p@h/db",
            "--url=jdbc:mysql://h/db?password=pw",
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
                "jdbc://u:***@h/db",
                "--url=jdbc:mysql://h/db?password=***",
            ]
        );
    }
}
