//! The one Kubernetes API call sparkvisor makes itself: deleting the
//! previous attempt's executor pods before a restart in client mode
//! (`DELETE …/pods?labelSelector=spark-app-selector=<app id>,spark-role=executor`).
//!
//! Executors are owned by the driver pod (owner references), so Kubernetes
//! deletes them with the pod; but a driver restarted inside the same pod
//! leaves the old attempt's executor pods behind until they notice the lost
//! driver. This removes them at once. Invariants: credentials are the pod's
//! own service account (token re-read on every call: projected tokens
//! rotate); TLS is verified against the service account's CA; every failure
//! (no token, 403, unreachable) is an error value for one clear log line,
//! never a panic, and never blocks a restart for longer than `TIMEOUT`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::httpclient::{HttpError, HttpsClient};

pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const MAX_RESPONSE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not running in a pod: {0} is not set")]
    NotInCluster(&'static str),
    #[error("cannot read the service account token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the cluster CA {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("cannot reach the Kubernetes API at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "the Kubernetes API refused ({status}): the service account needs `deletecollection` on pods in namespace {namespace}: {message}"
    )]
    Forbidden {
        status: u16,
        namespace: String,
        message: String,
    },
    #[error("the Kubernetes API answered {status}: {message}")]
    Http { status: u16, message: String },
    #[error("no answer from the Kubernetes API within {}s", TIMEOUT.as_secs())]
    Timeout,
}

/// Access to the API server from inside a pod.
#[derive(Clone)]
pub struct InCluster {
    host: String,
    port: u16,
    token_file: PathBuf,
    client: HttpsClient,
}

impl InCluster {
    /// From `KUBERNETES_SERVICE_HOST/PORT` and the service account files
    /// in `account_dir` (normally [`SERVICE_ACCOUNT_DIR`]).
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        account_dir: &Path,
    ) -> Result<Self, KubeError> {
        let host = env("KUBERNETES_SERVICE_HOST")
            .ok_or(KubeError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = env("KUBERNETES_SERVICE_PORT")
            .and_then(|p| p.parse().ok())
            .ok_or(KubeError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
        let token_file = account_dir.join("token");
        // Fail early and clearly when there is no token at all.
        std::fs::metadata(&token_file).map_err(|source| KubeError::Token {
            path: token_file.clone(),
            source,
        })?;
        let ca_file = account_dir.join("ca.crt");
        let ca_err = |reason: String| KubeError::Ca {
            path: ca_file.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_file)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no certificate in the file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(InCluster {
            host,
            port,
            token_file,
            client: HttpsClient::new(Arc::new(tls)),
        })
    }

    /// Deletes the executor pods of application `app_id`; returns how many
    /// the API reported deleted.
    pub async fn delete_executor_pods(
        &self,
        namespace: &str,
        app_id: &str,
    ) -> Result<usize, KubeError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods?labelSelector={}",
            encode(namespace),
            encode(&executor_selector(app_id))
        );
        match tokio::time::timeout(TIMEOUT, self.request("DELETE", &path)).await {
            Err(_) => Err(KubeError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, body))) => match status {
                200..=299 => Ok(count_items(&body)),
                401 | 403 => Err(KubeError::Forbidden {
                    status,
                    namespace: namespace.to_string(),
                    message: api_message(&body),
                }),
                _ => Err(KubeError::Http {
                    status,
                    message: api_message(&body),
                }),
            },
        }
    }

    async fn request(&self, method: &str, path: &str) -> Result<(u16, String), KubeError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| KubeError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let addr = format!("{host}:{}", self.port);
        let bearer = format!("Bearer {}", token.trim());
        let uri = format!("https://{addr}{path}");
        let answer = self
            .client
            .send(
                method,
                &uri,
                &[("authorization", &bearer), ("accept", "application/json")],
                TIMEOUT,
                MAX_RESPONSE,
            )
            .await
            .map_err(|e| match e {
                HttpError::Timeout(_) => KubeError::Timeout,
                e => KubeError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                },
            })?;
        Ok((answer.status, answer.body))
    }
}

/// The labels Spark puts on executor pods of one application.
pub fn executor_selector(app_id: &str) -> String {
    format!("spark-app-selector={app_id},spark-role=executor")
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// Items in a PodList answer.
fn count_items(body: &str) -> usize {
    json_of(body)
        .and_then(|v| v.get("items").and_then(|i| i.as_array()).map(Vec::len))
        .unwrap_or(0)
}

/// The `message` of a Kubernetes Status object, or the start of the body.
fn api_message(body: &str) -> String {
    json_of(body)
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

fn json_of(body: &str) -> Option<serde_json::Value> {
    serde_json::from_str(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_and_encoding() {
        assert_eq!(
            encode(&executor_selector("spark-0a1b")),
            "spark-app-selector%3Dspark-0a1b%2Cspark-role%3Dexecutor"
        );
    }

    #[test]
    fn answers() {
        assert_eq!(count_items(r#"{"kind":"PodList","items":[{},{}]}"#), 2);
        assert_eq!(count_items("garbage"), 0);
        let forbidden = r#"{"kind":"Status","message":"pods is forbidden: User \"x\" cannot deletecollection"}"#;
        assert!(api_message(forbidden).starts_with("pods is forbidden"));
    }

    #[test]
    fn missing_environment_and_token_are_clear() {
        let none = |_: &str| None;
        let e = InCluster::from_env(&none, Path::new("/nonexistent"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("KUBERNETES_SERVICE_HOST"), "{e}");
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        let e = InCluster::from_env(&env, Path::new("/nonexistent/sa"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/sa/token"), "{e}");
    }
}
