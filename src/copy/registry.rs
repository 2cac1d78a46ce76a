//! One registry: the distribution API calls that a copy makes.
//!
//! Requests go through the engine's own `client::Client` on reqwest, not through oci-client 0.18,
//! because oci-client hides what the engine must handle for real registries:
//!
//! - its errors drop the response headers, so `Retry-After` is lost;
//! - it fails a manifest whose `Docker-Content-Digest` header disagrees with the bytes, even
//!   when the bytes match the requested digest;
//! - it reads manifests whole, with no size cap;
//! - it cannot renew a token after a 401;
//! - its chunked upload sends one PATCH per stream frame;
//! - its manifest push panics when a registry returns 201 without `Location`.
//!
//! oci-client still parses references.

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, warn};

use super::auth::Credential;
use super::client::{Call, Client, RegistryResponse, failure_of};
use super::digest;
use super::error::{Error, Failure};
use super::manifest::{ACCEPTED_MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use super::reference::ImageRef;
use super::token::Scope;

const USER_AGENT: &str = concat!("pma2docker/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes of a response; it does not limit a whole transfer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest image config read into memory to find a single image's platform.
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;
/// Manifest fetches per manifest after the connection broke mid-body.
const MANIFEST_READ_ATTEMPTS: usize = 3;

/// How to reach registries. Plain HTTP and unverified TLS are only for hosts named here.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Registry hosts (`host` or `host:port`) reached over plain HTTP.
    pub plain_http: Vec<String>,
    /// Registry hosts whose TLS certificate is not verified.
    pub insecure_tls: Vec<String>,
    /// PEM certificates trusted in addition to the system roots.
    pub ca_certificates: Vec<Vec<u8>>,
}

impl ConnectOptions {
    fn is_plain_http(&self, host: &str) -> bool {
        self.plain_http.iter().any(|h| h == host)
    }

    fn is_insecure_tls(&self, host: &str) -> bool {
        self.insecure_tls.iter().any(|h| h == host)
    }
}

/// The access one side of the copy needs, which sets the token scopes it requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

/// A manifest as fetched: its exact bytes, the digest computed from them, and the
/// `Content-Type` the registry sent.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub digest: String,
    pub content_type: Option<String>,
}

/// The result of a cross-repository mount request.
pub enum Mount {
    /// The registry linked the blob.
    Mounted,
    /// The registry opened an upload instead (202), which the blob can be sent to.
    Upload(Upload),
    /// The mount failed; the blob must be copied.
    NotMounted,
}

/// An open blob upload session.
pub struct Upload {
    pub location: Url,
    /// The smallest chunk the registry accepts, from `OCI-Chunk-Min-Length`.
    pub min_chunk: Option<usize>,
}

/// A connection to one registry with one credential.
pub struct Registry {
    pub(super) client: Client,
    access: Access,
    /// Blobs of at least this many bytes are uploaded in chunks. It starts at `u64::MAX` and
    /// drops to a blob's size when the registry rejects its single PUT as too large (413).
    pub(super) chunked_from: AtomicU64,
    /// False once the registry returned 405 or 501 to a manifest HEAD.
    head_works: AtomicBool,
    /// False once a mount was rejected for lack of access, so later blobs skip the attempt.
    pub(super) mount_works: AtomicBool,
}

impl Registry {
    /// Builds a client for the registry of `image`. Nothing is sent until the first call.
    pub fn connect(
        image: &ImageRef,
        credential: Option<&Credential>,
        options: &ConnectOptions,
        access: Access,
    ) -> Result<Registry, Error> {
        let host = image.as_oci().resolve_registry().to_string();
        let plain = options.is_plain_http(&host);
        let insecure = options.is_insecure_tls(&host);
        let build_error = |reason: String| Error::InvalidReference {
            reference: image.to_string(),
            reason,
        };

        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(insecure);
        for pem in split_pem(&options.ca_certificates) {
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|source| {
                Error::InvalidCredentials {
                    origin: "the CA certificates".to_string(),
                    reason: format!("a certificate is not valid PEM: {}", source.without_url()),
                }
            })?;
            builder = builder.tls_certs_merge([certificate]);
        }
        let http = builder
            .build()
            .map_err(|source| build_error(format!("failed to build an HTTP client: {source}")))?;

        let scheme = if plain { "http" } else { "https" };
        let origin = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|_| build_error(format!("{host:?} is not a valid registry host")))?;
        Ok(Registry {
            client: Client::new(http, origin, credential.cloned()),
            access,
            chunked_from: AtomicU64::new(u64::MAX),
            head_works: AtomicBool::new(true),
            mount_works: AtomicBool::new(true),
        })
    }

    pub fn host(&self) -> &str {
        self.client.host()
    }

    /// Returns the scopes this side needs on `repository`.
    pub(super) fn scopes(&self, repository: &str) -> Vec<Scope> {
        match self.access {
            Access::Pull => vec![Scope::pull(repository)],
            Access::Push => vec![Scope::push(repository)],
        }
    }

    pub(super) fn error(&self, action: &'static str, reference: &str, failure: Failure) -> Error {
        Error::from_failure(action, self.host(), reference, failure)
    }

    fn manifest_call(&self, method: Method, reference: &Reference) -> Call {
        let name = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = self
            .client
            .url(&format!("v2/{}/manifests/{name}", reference.repository()));
        Call::new(method, url, self.scopes(reference.repository())).header(
            ACCEPT,
            HeaderValue::from_str(&ACCEPTED_MANIFEST_TYPES.join(", ")).expect("valid header"),
        )
    }

    /// Returns the digest a manifest reference resolves to, or `None` when it does not exist.
    ///
    /// It sends HEAD and falls back to GET, hashing the bytes, when the response has no
    /// `Docker-Content-Digest` or the registry does not allow HEAD (405 or 501). A 404 to
    /// HEAD is taken as absent. A registry that returns 404 to HEAD for a manifest that GET
    /// returns costs callers only a shortcut, because they fetch and push by GET and PUT.
    pub async fn head_manifest(&self, reference: &Reference) -> Result<Option<String>, Error> {
        let whole = reference.whole();
        if self.head_works.load(Ordering::Relaxed) {
            let call = self.manifest_call(Method::HEAD, reference);
            let answer = self
                .client
                .send(&call)
                .await
                .map_err(|failure| self.error("check manifest", &whole, failure))?;
            let status = answer.response.status();
            if status.is_success() {
                if let Some(found) = header_digest(&answer.response) {
                    return Ok(Some(found));
                }
                debug!(reference = %whole, "HEAD response without a valid Docker-Content-Digest, using GET");
            } else if status == StatusCode::NOT_FOUND {
                return Ok(None);
            } else if matches!(status.as_u16(), 405 | 501) {
                debug!(registry = %self.host(), %status, "Registry does not allow HEAD on manifests, using GET");
                self.head_works.store(false, Ordering::Relaxed);
            } else {
                let failure = failure_of(answer.response).await;
                return Err(self.error("check manifest", &whole, failure));
            }
        }
        match self.get_manifest(reference).await {
            Ok(manifest) => Ok(Some(manifest.digest)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Fetches a manifest's bytes, unchanged, and computes their digest in the algorithm of
    /// the reference's digest (sha256 for a tag).
    ///
    /// The computed digest is the one used. A `Docker-Content-Digest` header that disagrees
    /// is logged and ignored, so a registry or proxy with a wrong header cannot block a copy.
    /// A pinned digest is still checked by the caller against the bytes. A body over 4 MiB is
    /// rejected without being read whole.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest, Error> {
        let mut attempt = 1;
        loop {
            match self.get_manifest_once(reference).await {
                Err(Error::Registry {
                    source: Failure::Interrupted(error),
                    ..
                }) if attempt < MANIFEST_READ_ATTEMPTS => {
                    warn!(reference = %reference.whole(), %error, "Retrying manifest fetch");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_manifest_once(&self, reference: &Reference) -> Result<FetchedManifest, Error> {
        let whole = reference.whole();
        let algorithm = match reference.digest() {
            Some(pinned) => digest::parse(pinned).map_err(|reason| Error::InvalidReference {
                reference: whole.clone(),
                reason,
            })?,
            None => digest::Algorithm::Sha256,
        };
        let call = self.manifest_call(Method::GET, reference);
        let answer = self
            .client
            .send(&call)
            .await
            .map_err(|failure| self.error("fetch manifest", &whole, failure))?;
        if !answer.response.status().is_success() {
            let failure = failure_of(answer.response).await;
            return Err(self.error("fetch manifest", &whole, failure));
        }

        let header = header_digest(&answer.response);
        let content_type = answer
            .response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = read_capped(answer, MAX_MANIFEST_BYTES, &whole)
            .await
            .map_err(|error| match error {
                CappedRead::TooLarge(size) => Error::ManifestTooLarge {
                    reference: whole.clone(),
                    size,
                },
                CappedRead::Interrupted(error) => {
                    self.error("fetch manifest", &whole, Failure::Interrupted(error))
                }
            })?;
        let computed = digest::compute(algorithm, &bytes);
        if let Some(header) = header
            && !digest::matches(&bytes, &header)
        {
            warn!(
                reference = %whole,
                header = %header,
                computed = %computed,
                "Docker-Content-Digest does not match the manifest bytes; using the bytes"
            );
        }
        Ok(FetchedManifest {
            bytes,
            digest: computed,
            content_type,
        })
    }

    /// Pushes manifest bytes as they are, by the tag or digest of `reference`. `expected` is
    /// the digest of `bytes`, for messages.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
        expected: &str,
    ) -> Result<(), Error> {
        let whole = reference.whole();
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| Error::InvalidManifest {
                reference: whole.clone(),
                reason: format!("media type {media_type:?} is not a valid header value"),
            })?;
        let call = self
            .manifest_call(Method::PUT, reference)
            .header(CONTENT_TYPE, content_type)
            .body(bytes.clone());
        let answer = self
            .client
            .send(&call)
            .await
            .map_err(|failure| self.error("push manifest", &whole, failure))?;
        let status = answer.response.status();
        if status.is_success() {
            // Only logged: the header may be wrong (see `get_manifest`). A changed root shows
            // when it is read back, and a changed child when the index that names it is
            // pushed.
            if let Some(reported) = header_digest(&answer.response)
                && !digest::matches(&bytes, &reported)
            {
                warn!(
                    reference = %whole,
                    expected = %expected,
                    reported = %reported,
                    "Registry reported another digest for the pushed manifest"
                );
            }
            return Ok(());
        }

        let failure = failure_of(answer.response).await;
        match self.error("push manifest", &whole, failure) {
            Error::Registry {
                source: failure, ..
            } if status.is_client_error()
                && status != StatusCode::REQUEST_TIMEOUT
                && status != StatusCode::TOO_MANY_REQUESTS =>
            {
                Err(Error::Rejected {
                    what: describe_media_type(media_type),
                    reference: whole,
                    reason: failure.to_string(),
                })
            }
            Error::NotFound { .. } => Err(Error::Rejected {
                what: describe_media_type(media_type),
                reference: whole,
                reason: "HTTP 404 Not Found: the registry has no such repository or does not \
                         accept this manifest"
                    .to_string(),
            }),
            other => Err(other),
        }
    }

    fn blob_url(&self, repository: &str, digest: &str) -> Url {
        self.client.url(&format!("v2/{repository}/blobs/{digest}"))
    }

    /// Returns true when the repository of `reference` has the blob.
    pub async fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool, Error> {
        let whole = reference.whole();
        let url = self.blob_url(reference.repository(), digest);
        let call = Call::new(Method::HEAD, url, self.scopes(reference.repository()));
        let answer = self
            .client
            .send(&call)
            .await
            .map_err(|failure| self.error("check blob in", &whole, failure))?;
        match answer.response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                let failure = failure_of(answer.response).await;
                Err(self.error("check blob in", &whole, failure))
            }
        }
    }

    /// Requests that the registry link a blob from another repository of the same registry. The
    /// request needs push on the target and pull on the source repository, in one token.
    pub async fn mount_blob(&self, target: &Reference, from: &Reference, digest: &str) -> Mount {
        if !self.mount_works.load(Ordering::Relaxed) {
            return Mount::NotMounted;
        }
        let mut url = self
            .client
            .url(&format!("v2/{}/blobs/uploads/", target.repository()));
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from.repository());
        let scopes = vec![
            Scope::push(target.repository()),
            Scope::pull(from.repository()),
        ];
        let call = Call::new(Method::POST, url, scopes);
        let answer = match self.client.send(&call).await {
            Ok(answer) => answer,
            Err(failure) => {
                debug!(%digest, error = %failure, "Mount failed, copying instead");
                return Mount::NotMounted;
            }
        };
        match answer.response.status() {
            StatusCode::CREATED => Mount::Mounted,
            StatusCode::ACCEPTED => match upload_of(&answer) {
                Ok(upload) => {
                    debug!(%digest, "Registry opened an upload instead of mounting");
                    Mount::Upload(upload)
                }
                Err(_) => Mount::NotMounted,
            },
            status => {
                if matches!(status.as_u16(), 401 | 403) {
                    // Mostly a token that covers one repository only; asking again for
                    // every blob would double the requests for nothing.
                    self.mount_works.store(false, Ordering::Relaxed);
                }
                debug!(%digest, %status, "Mount rejected, copying instead");
                Mount::NotMounted
            }
        }
    }

    /// Opens a blob for reading, following redirects (credentials go to the registry's own
    /// origin only). The caller checks size and digest.
    pub async fn pull_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let url = self.blob_url(reference.repository(), digest);
        self.open_stream(url, self.scopes(reference.repository()), &reference.whole())
            .await
    }

    /// Opens a download URL of a foreign layer. The URL's host is not the registry, so the
    /// request goes without credentials.
    pub async fn pull_url(
        &self,
        url: &str,
        digest: &str,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let invalid = |reason: &str| Error::InvalidManifest {
            reference: digest.to_string(),
            reason: format!("foreign layer URL {reason}"),
        };
        let parsed = Url::parse(url).map_err(|_| invalid("is not a valid URL"))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(invalid("is neither http nor https"));
        }
        self.open_stream(parsed, Vec::new(), digest).await
    }

    async fn open_stream(
        &self,
        url: Url,
        scopes: Vec<Scope>,
        reference: &str,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let call = Call::new(Method::GET, url, scopes);
        let answer = self
            .client
            .send(&call)
            .await
            .map_err(|failure| self.error("fetch blob from", reference, failure))?;
        if !answer.response.status().is_success() {
            let failure = failure_of(answer.response).await;
            return Err(self.error("fetch blob from", reference, failure));
        }
        Ok(answer
            .response
            .bytes_stream()
            .map_err(|error| std::io::Error::other(error.without_url()))
            .boxed())
    }

    /// Reads a small blob, such as an image config, into memory and checks its digest.
    pub async fn read_small_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Bytes, Error> {
        let whole = reference.whole();
        let mut stream = self.pull_blob(reference, digest).await?;
        let mut bytes = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| Error::Registry {
                action: "fetch blob from",
                reference: whole.clone(),
                source: Failure::SourceStream(error.to_string()),
            })?;
            if bytes.len() + chunk.len() > MAX_CONFIG_BYTES {
                return Err(Error::InvalidManifest {
                    reference: whole,
                    reason: format!("config blob is larger than {MAX_CONFIG_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        if !digest::matches(&bytes, digest) {
            return Err(Error::DigestMismatch {
                reference: whole,
                expected: digest.to_string(),
                actual: digest::compute(digest::Algorithm::Sha256, &bytes),
            });
        }
        Ok(bytes)
    }
}

/// Returns a valid digest from `Docker-Content-Digest`, if the response has one.
fn header_digest(response: &reqwest::Response) -> Option<String> {
    let value = response
        .headers()
        .get("Docker-Content-Digest")?
        .to_str()
        .ok()?
        .trim();
    digest::parse(value).ok().map(|_| value.to_string())
}

enum CappedRead {
    TooLarge(u64),
    Interrupted(reqwest::Error),
}

/// Reads a body of at most `cap` bytes. A larger `Content-Length` fails before any byte is
/// read, and a body without one stops being read at the cap.
async fn read_capped(
    answer: RegistryResponse,
    cap: usize,
    reference: &str,
) -> Result<Bytes, CappedRead> {
    if let Some(length) = answer.response.content_length()
        && length > cap as u64
    {
        debug!(%reference, length, "Manifest too large, not reading it");
        return Err(CappedRead::TooLarge(length));
    }
    let mut body = BytesMut::new();
    let mut stream = answer.response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| CappedRead::Interrupted(error.without_url()))?;
        if body.len() + chunk.len() > cap {
            return Err(CappedRead::TooLarge((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads the upload session from a 202 response: its `Location`, resolved against the URL
/// of the request (it may be absolute, absolute-path or relative), and the minimum chunk size.
pub(super) fn upload_of(answer: &RegistryResponse) -> Result<Upload, Failure> {
    let location = answer
        .response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or_else(|| {
            Failure::Protocol("the registry opened an upload without a Location header".to_string())
        })?;
    let location = resolve_location(&answer.url, location)?;
    let min_chunk = answer
        .response
        .headers()
        .get("OCI-Chunk-Min-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    Ok(Upload {
        location,
        min_chunk,
    })
}

/// Resolves a `Location` header against the URL of its request (RFC 3986 §5).
pub(super) fn resolve_location(base: &Url, location: &HeaderValue) -> Result<Url, Failure> {
    let text = location
        .to_str()
        .map_err(|_| Failure::Protocol("an upload Location is not valid text".to_string()))?;
    let url = base
        .join(text.trim())
        .map_err(|_| Failure::Protocol("an upload Location is not a valid URL".to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Failure::Protocol(format!(
            "an upload Location points at a {} URL",
            url.scheme()
        )));
    }
    Ok(url)
}

/// Names a manifest media type for messages, with the type itself.
fn describe_media_type(media_type: &str) -> String {
    use super::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    let name = match media_type {
        OCI_INDEX => "OCI image index",
        DOCKER_LIST => "Docker manifest list",
        OCI_MANIFEST => "OCI image manifest",
        DOCKER_MANIFEST => "Docker image manifest",
        _ => "manifest",
    };
    format!("{name} ({media_type})")
}

/// Splits PEM bundles into single certificates.
fn split_pem(bundles: &[Vec<u8>]) -> Vec<Vec<u8>> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut certificates = Vec::new();
    for bundle in bundles {
        let text = String::from_utf8_lossy(bundle);
        for block in text.split_inclusive(END) {
            if let Some(start) = block.find("-----BEGIN CERTIFICATE-----")
                && block.ends_with(END)
            {
                certificates.push(block.as_bytes()[start..].to_vec());
            }
        }
    }
    certificates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pem_bundle() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----";
        let two = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----";
        let bundle = format!("comment\n{one}\n{two}\n").into_bytes();
        let certificates = split_pem(&[bundle]);
        assert_eq!(certificates.len(), 2);
        assert_eq!(certificates[0], one.as_bytes());
        assert_eq!(certificates[1], two.as_bytes());
    }

    #[test]
    fn locations_resolved_against_request() {
        let base = Url::parse("https://r.example/v2/team/app/blobs/uploads/").unwrap();
        let resolve = |text: &str| {
            resolve_location(&base, &HeaderValue::from_str(text).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(
            resolve("/v2/team/app/blobs/uploads/u1?_state=a%2Bb"),
            "https://r.example/v2/team/app/blobs/uploads/u1?_state=a%2Bb"
        );
        assert_eq!(
            resolve("u2?x=1"),
            "https://r.example/v2/team/app/blobs/uploads/u2?x=1"
        );
        assert_eq!(
            resolve("https://storage.example/up/3?sig=z"),
            "https://storage.example/up/3?sig=z"
        );
        let bad = resolve_location(&base, &HeaderValue::from_static("file:///etc/passwd"));
        assert!(bad.is_err());
    }
}
