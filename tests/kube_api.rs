//! The executor-pod cleanup call against a real TLS server on loopback
//! that speaks the Kubernetes API's wire format (a Kubernetes API server
//! cannot run on these machines): request shape, the service-account token,
//! CA verification, and clear errors for 403, a wrong CA and a missing token.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sparkvisor::kube::{InCluster, KubeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Serves one canned answer per connection; records each request head.
async fn serve(
    pki: &Pki,
    status: &'static str,
    body: &'static str,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = vec![0u8; 8192];
            let n = tls.read(&mut buf).await.unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, seen)
}

fn account(dir: &Path, ca_pem: &str, token: &str) {
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
}

fn api(dir: &Path, port: u16) -> Result<InCluster, KubeError> {
    let env = move |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(port.to_string()),
        _ => None,
    };
    InCluster::from_env(&env, dir)
}

#[tokio::test]
async fn deletes_the_executors_of_one_application() {
    let pki = pki();
    let (port, seen) = serve(
        &pki,
        "200 OK",
        r#"{"kind":"PodList","items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    account(dir.path(), &pki.ca_pem, "token-one\n");
    let api = api(dir.path(), port).unwrap();
    assert_eq!(
        api.delete_executor_pods("streaming", "spark-abc123")
            .await
            .unwrap(),
        2
    );
    // The token is read on every call (projected tokens rotate).
    std::fs::write(dir.path().join("token"), "token-two").unwrap();
    api.delete_executor_pods("streaming", "spark-abc123")
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[0].starts_with(
        "DELETE /api/v1/namespaces/streaming/pods?labelSelector=spark-app-selector%3Dspark-abc123%2Cspark-role%3Dexecutor HTTP/1.1\r\n"
    ), "{}", seen[0]);
    // Header names are case-insensitive (hyper sends them in lower case).
    let has = |req: &str, line: &str| {
        req.to_ascii_lowercase()
            .contains(&line.to_ascii_lowercase())
    };
    assert!(
        has(&seen[0], "Authorization: Bearer token-one\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        has(&seen[1], "Authorization: Bearer token-two\r\n"),
        "{}",
        seen[1]
    );
}

#[tokio::test]
async fn forbidden_is_a_clear_error() {
    let pki = pki();
    let (port, _) = serve(
        &pki,
        "403 Forbidden",
        r#"{"kind":"Status","status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:streaming:default\" cannot deletecollection resource \"pods\"","reason":"Forbidden","code":403}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    account(dir.path(), &pki.ca_pem, "t");
    let err = api(dir.path(), port)
        .unwrap()
        .delete_executor_pods("streaming", "spark-1")
        .await
        .unwrap_err();
    assert!(matches!(err, KubeError::Forbidden { status: 403, .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("deletecollection") && msg.contains("streaming"),
        "{msg}"
    );
    assert!(
        msg.contains("system:serviceaccount:streaming:default"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_server_with_another_ca_is_refused() {
    let pki = pki();
    let other = pki_other_ca();
    let (port, seen) = serve(&pki, "200 OK", "{}").await;
    let dir = tempfile::tempdir().unwrap();
    account(dir.path(), &other, "t");
    let err = api(dir.path(), port)
        .unwrap()
        .delete_executor_pods("ns", "spark-1")
        .await
        .unwrap_err();
    assert!(matches!(err, KubeError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "no request may be sent over an unverified connection"
    );
}

fn pki_other_ca() -> String {
    pki().ca_pem
}

#[tokio::test]
async fn missing_token_and_bad_ca_file_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), pki().ca_pem).unwrap();
    let err = api(dir.path(), 443).err().unwrap();
    assert!(matches!(err, KubeError::Token { .. }), "{err}");
    assert!(err.to_string().contains("token"));

    std::fs::write(dir.path().join("token"), "t").unwrap();
    std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
    let err = api(dir.path(), 443).err().unwrap();
    assert!(matches!(err, KubeError::Ca { .. }), "{err}");
}
