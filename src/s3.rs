//! The S3 connection: client construction from `[checkpoint.s3]`, and the
//! few object operations replication, restore and the lease need, with
//! errors that tell "object missing", "precondition failed" (a conditional
//! write or read whose condition did not hold) and "request failed" apart.
//!
//! Invariants: credentials come from the SDK's default chain (environment,
//! web identity / IRSA, container credentials, profiles, instance metadata)
//! unless the caller passes static ones; requests carry no optional
//! checksums the server may not understand (S3-compatible servers differ),
//! content integrity is checked by sparkvisor itself (SHA-256 per file);
//! uploads above [`MULTIPART_THRESHOLD`] are multipart with parts of
//! [`PART_SIZE`] (≥ 5 MiB, as S3 requires); a conditional write answered
//! 412, or 409 `ConditionalRequestConflict` (AWS, when another conditional
//! write of the key is in progress), is [`StoreError::PreconditionFailed`]:
//! in both cases the write did not happen. Downloads that must survive a
//! slow or stalling link stream to disk and resume through `download`.

pub mod download;

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::config::{S3Config, parse_s3_uri};

/// Files larger than this are uploaded in parts and downloaded by ranges.
pub const MULTIPART_THRESHOLD: u64 = PART_SIZE;
/// Part and range size.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Bytes held in memory by transfers at once (whole small files and parts).
pub const MEMORY_BUDGET_MIB: u32 = 64;

/// Connection settings (the `[checkpoint.s3]` keys minus the replication
/// policy).
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    /// Parallel transfers (at least 1).
    pub concurrency: usize,
    /// Use these instead of the default chain (programmatic use, tests).
    pub static_credentials: Option<(String, String)>,
}

impl S3Settings {
    pub fn from_config(c: &S3Config) -> S3Settings {
        S3Settings {
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            force_path_style: c.force_path_style,
            concurrency: c.concurrency.max(1),
            static_credentials: None,
        }
    }
}

/// `s3://bucket/prefix`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl Location {
    pub fn parse(uri: &str) -> Result<Location, String> {
        let (bucket, prefix) = parse_s3_uri(uri)?;
        Ok(Location { bucket, prefix })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A failed object operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("{op} s3://{bucket}/{key}: precondition failed ({condition})")]
    PreconditionFailed {
        op: &'static str,
        bucket: String,
        key: String,
        condition: String,
    },
    #[error("{op} s3://{bucket}/{key} failed: {message}")]
    Request {
        op: &'static str,
        bucket: String,
        key: String,
        /// The HTTP status when the server answered (None: no answer).
        status: Option<u16>,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while it was uploaded")]
    Changed { path: String },
    /// A ranged GET beyond the object's end (HTTP 416).
    #[error("s3://{bucket}/{key} ends before the requested range")]
    OutOfRange { bucket: String, key: String },
}

impl StoreError {
    /// The server answered with a client error (4xx other than 404, 412,
    /// 408 and 429): it understood the request and refused it, so sending
    /// the same request again will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Request { status: Some(s), .. }
            if (400..500).contains(s) && *s != 408 && *s != 429)
    }
}

/// The condition of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition<'a> {
    /// Write only if the key does not exist (`If-None-Match: *`).
    Absent,
    /// Write only if the object's ETag is still this (`If-Match`).
    Matches(&'a str),
}

impl std::fmt::Display for Condition<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Absent => f.write_str("If-None-Match: *"),
            Condition::Matches(e) => write!(f, "If-Match: {e}"),
        }
    }
}

/// An object's content with its entity tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    pub body: Vec<u8>,
    /// As the server sent it (quoted); compare with [`same_etag`].
    pub etag: String,
}

/// ETags compared without their quotes (servers differ in quoting).
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// Builds a client: default credential chain, `endpoint`, `region`
/// (default: the SDK's chain, else `us-east-1` when an endpoint is given),
/// path-style addressing, bounded timeouts and the SDK's standard retries.
pub async fn connect(settings: &S3Settings) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .operation_attempt_timeout(Duration::from_secs(300))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "sparkvisor-static",
        ));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(e) = &settings.endpoint {
        b = b.endpoint_url(e.clone());
        if shared.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
    }
    Client::from_conf(b.build())
}

/// Object operations on one bucket.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    bucket: String,
}

fn request_error<E>(
    op: &'static str,
    bucket: &str,
    key: &str,
    e: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    StoreError::Request {
        op,
        bucket: bucket.to_string(),
        key: key.to_string(),
        status: status_of(&e),
        message: describe(&e),
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// 412, or AWS's 409 for a conditional write racing another one.
fn is_precondition<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match status_of(e) {
        Some(412) => true,
        Some(409) => e
            .as_service_error()
            .and_then(|s| s.code())
            .is_some_and(|c| c == "ConditionalRequestConflict"),
        _ => false,
    }
}

/// One line: the HTTP status and S3 error code for service errors, the
/// cause chain for connection failures and timeouts.
fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let err = se.err();
            let code = err.code().unwrap_or("no error code");
            match err.message() {
                Some(m) => format!("HTTP {status} {code}: {m}"),
                None => format!("HTTP {status} {code}"),
            }
        }
        SdkError::DispatchFailure(d) => match d.as_connector_error() {
            Some(c) => format!("cannot reach the server: {}", causes(c)),
            None => "cannot reach the server".to_string(),
        },
        SdkError::TimeoutError(_) => "timed out".to_string(),
        other => DisplayErrorContext(other).to_string(),
    }
}

/// An error and its sources, joined with ": " (duplicates dropped).
fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn is_not_found<E>(e: &SdkError<E, HttpResponse>) -> bool {
    e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

impl Store {
    pub fn new(client: Client, bucket: impl Into<String>) -> Store {
        Store {
            client,
            bucket: bucket.into(),
        }
    }

    pub async fn connect(settings: &S3Settings, bucket: &str) -> Store {
        Store::new(connect(settings).await, bucket)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        }
    }

    /// Writes `body` to `key` in one request.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| request_error("PUT", &self.bucket, key, e))?;
        Ok(())
    }

    /// Uploads the file at `path` to `key` in parts, re-hashing what is
    /// read: when the content no longer has SHA-256 `expected_sha256`
    /// (the file changed since it was hashed) the upload is aborted with
    /// [`StoreError::Changed`], so the object under a content-addressed key
    /// always has that content.
    pub async fn put_file_multipart(
        &self,
        key: &str,
        path: &Path,
        expected_sha256: &str,
    ) -> Result<u64, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| request_error("CreateMultipartUpload", &self.bucket, key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(key, path, &upload_id, expected_sha256)
            .await;
        match result {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                // Best effort: an abandoned upload only costs space until the
                // bucket's lifecycle rule removes it.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        upload_id: &str,
        expected_sha256: &str,
    ) -> Result<u64, StoreError> {
        let io = |source| StoreError::Io {
            context: format!("reading {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut parts = Vec::new();
        let mut total = 0u64;
        for number in 1.. {
            let mut buf = Vec::with_capacity(PART_SIZE as usize);
            (&mut file)
                .take(PART_SIZE)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            if buf.is_empty() && number > 1 {
                break;
            }
            hasher.update(&buf);
            total += buf.len() as u64;
            let last = (buf.len() as u64) < PART_SIZE;
            parts.push(self.upload_part(key, upload_id, number, buf).await?);
            if last {
                break;
            }
        }
        if hex::encode(hasher.finalize()) != expected_sha256 {
            return Err(StoreError::Changed {
                path: path.display().to_string(),
            });
        }
        self.complete_upload(key, upload_id, parts).await?;
        Ok(total)
    }

    /// Uploads part `number` of a multipart upload.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        buf: Vec<u8>,
    ) -> Result<CompletedPart, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| request_error("UploadPart", &self.bucket, key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// Completes a multipart upload with its parts.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<(), StoreError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| request_error("CompleteMultipartUpload", &self.bucket, key, e))?;
        Ok(())
    }

    /// Uploads the first `len` bytes of the file at `path`, a file that may
    /// still be growing (what is appended meanwhile is left for a later
    /// upload): one request up to [`PART_SIZE`], parts beyond. Returns the
    /// bytes sent (fewer than `len` if the file was cut meanwhile).
    pub async fn put_file_head(&self, key: &str, path: &Path, len: u64) -> Result<u64, StoreError> {
        let io = |source| StoreError::Io {
            context: format!("reading {}", path.display()),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        if len <= PART_SIZE {
            let mut buf = Vec::with_capacity(len as usize);
            (&mut file)
                .take(len)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            let n = buf.len() as u64;
            self.put(key, buf).await?;
            return Ok(n);
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| request_error("CreateMultipartUpload", &self.bucket, key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut sent = 0u64;
            for number in 1.. {
                let want = (len - sent).min(PART_SIZE);
                if want == 0 {
                    break;
                }
                let mut buf = Vec::with_capacity(want as usize);
                (&mut file)
                    .take(want)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(io)?;
                if buf.is_empty() {
                    break;
                }
                sent += buf.len() as u64;
                parts.push(self.upload_part(key, &upload_id, number, buf).await?);
            }
            self.complete_upload(key, &upload_id, parts).await?;
            Ok(sent)
        }
        .await;
        if result.is_err() {
            // Best effort, as for put_file_multipart.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Reads a whole object (small ones: manifests).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.get_tagged(key).await?.body)
    }

    /// Writes `body` to `key` only if `condition` holds; returns the new
    /// object's ETag. A condition that does not hold is
    /// [`StoreError::PreconditionFailed`]; `If-Match` on a missing key is
    /// [`StoreError::NotFound`] or `PreconditionFailed` (servers differ).
    pub async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<String, StoreError> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        let req = match condition {
            Condition::Absent => req.if_none_match("*"),
            Condition::Matches(etag) => req.if_match(etag),
        };
        let out = req.send().await.map_err(|e| {
            if is_precondition(&e) {
                StoreError::PreconditionFailed {
                    op: "PUT",
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    condition: condition.to_string(),
                }
            } else if is_not_found(&e) {
                self.not_found(key)
            } else {
                request_error("PUT", &self.bucket, key, e)
            }
        })?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    /// Reads a whole object with its ETag.
    pub async fn get_tagged(&self, key: &str) -> Result<Tagged, StoreError> {
        Ok(self
            .get_unless(key, None)
            .await?
            .expect("an unconditional GET is never 'not modified'"))
    }

    /// Reads a whole object unless its ETag is still `etag`
    /// (`If-None-Match`): `Ok(None)` when it is unchanged.
    pub async fn get_if_changed(
        &self,
        key: &str,
        etag: &str,
    ) -> Result<Option<Tagged>, StoreError> {
        self.get_unless(key, Some(etag)).await
    }

    async fn get_unless(
        &self,
        key: &str,
        etag: Option<&str>,
    ) -> Result<Option<Tagged>, StoreError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(e) = etag {
            req = req.if_none_match(e);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if etag.is_some() && status_of(&e) == Some(304) => return Ok(None),
            Err(e) if is_not_found(&e) => return Err(self.not_found(key)),
            Err(e) => return Err(request_error("GET", &self.bucket, key, e)),
        };
        let tag = out.e_tag().unwrap_or_default().to_string();
        let body = out.body.collect().await.map_err(|e| StoreError::Request {
            op: "GET",
            bucket: self.bucket.clone(),
            key: key.to_string(),
            status: None,
            message: format!("reading the body: {e}"),
        })?;
        Ok(Some(Tagged {
            body: body.into_bytes().to_vec(),
            etag: tag,
        }))
    }

    /// Starts reading an object from byte `from` up to `to` (exclusive;
    /// `None`: to its end). The body is read with [`Body::next_chunk`];
    /// the caller bounds each wait (the SDK has no timeout for a body).
    pub async fn open(&self, key: &str, from: u64, to: Option<u64>) -> Result<Body, StoreError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        match to {
            Some(end) if end > from => req = req.range(format!("bytes={from}-{}", end - 1)),
            None if from > 0 => req = req.range(format!("bytes={from}-")),
            _ => {}
        }
        let out = req.send().await.map_err(|e| {
            if is_not_found(&e) {
                self.not_found(key)
            } else if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                StoreError::OutOfRange {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                }
            } else {
                request_error("GET", &self.bucket, key, e)
            }
        })?;
        let range = out.content_range().and_then(parse_content_range);
        let length = out.content_length().and_then(|n| u64::try_from(n).ok());
        Ok(Body {
            first_byte: range.map_or(0, |(first, _)| first),
            object_size: match range {
                Some((_, size)) => size,
                None => length,
            },
            etag: out.e_tag().map(str::to_string),
            stream: out.body,
        })
    }

    /// Every key under `prefix` (paginated), in the server's order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_sizes(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Every key under `prefix` with its size.
    pub async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| request_error("LIST", &self.bucket, prefix, e))?;
            keys.extend(
                out.contents().iter().filter_map(|o| {
                    Some((o.key()?.to_string(), o.size().unwrap_or(0).max(0) as u64))
                }),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// Deletes one object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request_error("DELETE", &self.bucket, key, e)),
        }
    }

    /// Deletes one object with the whole request (the SDK's retries
    /// included) bounded by `limit`: a delete that may still reach the
    /// server later than that is never sent. Deleting a missing object
    /// succeeds.
    pub async fn delete_within(&self, key: &str, limit: Duration) -> Result<(), StoreError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(limit.min(Duration::from_secs(5)))
            .read_timeout(limit)
            .operation_attempt_timeout(limit)
            .operation_timeout(limit)
            .build();
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .config_override(aws_sdk_s3::config::Builder::default().timeout_config(timeouts))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request_error("DELETE", &self.bucket, key, e)),
        }
    }

    /// True when `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(request_error("HEAD", &self.bucket, key, e)),
        }
    }
}

/// An object's body as it arrives.
pub struct Body {
    stream: ByteStream,
    /// The object's byte this body starts at: the requested one, or 0
    /// when the server ignored the range and sends the whole object.
    pub first_byte: u64,
    /// The whole object's size, when the response tells it.
    pub object_size: Option<u64>,
    pub etag: Option<String>,
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(
        &mut self,
    ) -> Option<Result<impl std::ops::Deref<Target = [u8]> + use<>, String>> {
        self.stream.next().await.map(|r| r.map_err(|e| causes(&e)))
    }
}

/// `bytes FIRST-LAST/SIZE` → (FIRST, SIZE); SIZE is `None` for `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let (first, _) = span.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let size = match size.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((first, size))
}

/// SHA-256 of a file, read in chunks (for files too large to hold).
pub async fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n_total = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            n_total += n as u64;
        }
        Ok((hex::encode(h.finalize()), n_total))
    })
    .await
    .map_err(std::io::Error::other)?
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Bounds transfers: at most `concurrency` requests in flight and
/// [`MEMORY_BUDGET_MIB`] of buffered bodies.
#[derive(Clone, Debug)]
pub struct Throttle {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    memory: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Held while a transfer runs.
pub struct Permit {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _memory: tokio::sync::OwnedSemaphorePermit,
}

impl Throttle {
    pub fn new(concurrency: usize) -> Throttle {
        Throttle {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            memory: std::sync::Arc::new(tokio::sync::Semaphore::new(MEMORY_BUDGET_MIB as usize)),
        }
    }

    /// Waits for a request slot and room for `bytes` of buffered body.
    pub async fn acquire(&self, bytes: u64) -> Permit {
        let mib = bytes.div_ceil(1 << 20).min(MEMORY_BUDGET_MIB as u64) as u32;
        // The semaphores are never closed, so acquiring cannot fail.
        let memory = self
            .memory
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("throttle semaphore is never closed");
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("throttle semaphore is never closed");
        Permit {
            _slot: slot,
            _memory: memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
