//! The HTTP client sparkvisor uses for the APIs it asks (Spark's REST API
//! on loopback, the Kubernetes API over TLS): hyper's client with a
//! deadline on the whole exchange and a cap on the body.
//!
//! Invariants: every request ends within its timeout (connect, headers and
//! body together); a body larger than the cap is an error, never read
//! into memory in full; TLS verifies the server against the roots the
//! caller gives (no system trust store for the cluster API).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;

/// The request body type: sparkvisor sends no bodies.
type Body = http_body_util::Empty<hyper::body::Bytes>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad request {uri}: {why}")]
    Request { uri: String, why: String },
    #[error("{0}")]
    Transport(String),
    #[error("no answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer: status and body (lossy UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// A plain-HTTP client (loopback APIs).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Body>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .build(connector),
        }
    }

    /// GET `uri` with `headers`; Err past `timeout` or `max_body` bytes.
    pub async fn get(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, HttpError> {
        send(&self.inner, "GET", uri, headers, timeout, max_body).await
    }
}

/// An HTTPS client that trusts only the given roots.
#[derive(Clone)]
pub struct HttpsClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

impl HttpsClient {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HttpsClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        HttpsClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }

    /// Sends `method uri` (no body) with `headers`.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, HttpError> {
        send(&self.inner, method, uri, headers, timeout, max_body).await
    }
}

async fn send<C>(
    client: &Client<C, Body>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, HttpError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let bad = |why: String| HttpError::Request {
        uri: uri.to_string(),
        why,
    };
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::new()).map_err(|e| bad(e.to_string()))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| HttpError::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge(max_body)
                } else {
                    HttpError::Transport(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// `e` and its sources, as one line (hyper's top-level message alone says
/// little: "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server that answers `response` to the first request.
    async fn serve_once(response: &'static [u8]) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response).await;
            let _ = s.shutdown().await;
        });
        format!("http://{addr}/api/v1/applications")
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded() {
        let uri = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{\"id\r\n9\r\n\":\"a-1\"}]\r\n0\r\n\r\n",
        )
        .await;
        let a = HttpClient::new()
            .get(&uri, &[], Duration::from_secs(5), 1024)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, r#"[{"id":"a-1"}]"#);
    }

    #[tokio::test]
    async fn large_bodies_and_silence_are_errors() {
        let uri = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789").await;
        let e = HttpClient::new()
            .get(&uri, &[], Duration::from_secs(5), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::TooLarge(10)), "{e}");

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", l.local_addr().unwrap());
        let e = HttpClient::new()
            .get(&uri, &[], Duration::from_millis(200), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)), "{e}");
        drop(l);
    }

    #[tokio::test]
    async fn refused_connections_say_so() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let e = HttpClient::new()
            .get(&uri, &[], Duration::from_secs(5), 10)
            .await
            .unwrap_err();
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }
}
