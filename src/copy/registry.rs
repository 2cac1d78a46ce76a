//! One registry, as the engine sees it: a narrow wrapper over oci-client.
//!
//! oci-client does authentication (basic and bearer challenges, token caching), blob
//! existence checks, mounts, and streaming blob transfer with on-the-fly sha256 checks. Its
//! manifest push is not used: in 0.18.0 `push_manifest_raw` panics when a by-digest push gets a
//! 201 without `Location` (some registries omit it), and it drops the response. Manifests are
//! therefore pushed with a plain PUT of the original bytes, using oci-client's token.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use std::time::Duration;

use super::auth::Credential;
use super::error::Error;
use super::manifest::ACCEPTED_MANIFEST_TYPES;
use super::reference::ImageRef;

const USER_AGENT: &str = concat!("pma2docker/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next bytes of a response; it does not limit a whole transfer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

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

/// A connection to one registry with one credential.
pub struct Registry {
    /// Host used on the wire (`docker.io` resolves to `index.docker.io`).
    host: String,
    scheme: &'static str,
    oci: oci_client::Client,
    http: reqwest::Client,
    auth: RegistryAuth,
}

impl Registry {
    /// Builds a client for the registry of `image`.
    pub async fn connect(
        image: &ImageRef,
        credential: Option<&Credential>,
        options: &ConnectOptions,
    ) -> Result<Registry, Error> {
        let host = image.as_oci().resolve_registry().to_string();
        let plain = options.is_plain_http(&host);
        let insecure = options.is_insecure_tls(&host);
        let certificates = split_pem(&options.ca_certificates);

        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: insecure,
            // One streaming PUT per blob with its size; the chunked mode of 0.18.0 sends one
            // PATCH per stream frame.
            use_monolithic_push: true,
            extra_root_certificates: certificates
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let oci = oci_client::Client::try_from(config)
            .map_err(|source| Error::from_oci("build a client for", &host, &host, source))?;

        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .danger_accept_invalid_certs(insecure);
        for pem in &certificates {
            let certificate =
                reqwest::Certificate::from_pem(pem).map_err(|source| Error::Http {
                    action: "read a CA certificate for",
                    reference: host.clone(),
                    source,
                })?;
            builder = builder.tls_certs_merge([certificate]);
        }
        let http = builder.build().map_err(|source| Error::Http {
            action: "build a client for",
            reference: host.clone(),
            source,
        })?;

        let auth = credential
            .map(Credential::to_registry_auth)
            .unwrap_or(RegistryAuth::Anonymous);
        // Calls without an `auth` argument use the stored one, and send nothing without it.
        oci.store_auth_if_needed(&host, &auth).await;

        Ok(Registry {
            host,
            scheme: if plain { "http" } else { "https" },
            oci,
            http,
            auth,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn error(
        &self,
        action: &'static str,
        reference: &Reference,
        source: OciDistributionError,
    ) -> Error {
        Error::from_oci(action, &self.host, &reference.whole(), source)
    }

    /// Returns the digest a manifest reference resolves to, or `None` when it does not exist.
    pub async fn head_manifest(&self, reference: &Reference) -> Result<Option<String>, Error> {
        match self.oci.fetch_manifest_digest(reference, &self.auth).await {
            Ok(digest) => Ok(Some(digest)),
            Err(source) => match self.error("check manifest", reference, source) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Fetches a manifest's bytes, unchanged, with the digest computed from them.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<(Bytes, String), Error> {
        self.oci
            .pull_manifest_raw(reference, &self.auth, &ACCEPTED_MANIFEST_TYPES)
            .await
            .map_err(|source| self.error("fetch manifest", reference, source))
    }

    /// Pushes manifest bytes as they are, by the tag or digest of `reference`.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), Error> {
        let name = reference.digest().or(reference.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            self.host,
            reference.repository(),
            name
        );
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| Error::InvalidManifest {
                reference: reference.whole(),
                reason: format!("media type {media_type:?} is not a valid header value"),
            })?;

        let mut request = self
            .http
            .put(&url)
            .header(CONTENT_TYPE, content_type)
            .body(bytes);
        if let Some(authorization) = self
            .authorization(reference, RegistryOperation::Push)
            .await?
        {
            request = request.header(AUTHORIZATION, authorization);
        }
        let response = request.send().await.map_err(|source| Error::Http {
            action: "push manifest",
            reference: reference.whole(),
            source,
        })?;

        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        match status.as_u16() {
            401 | 403 => Err(Error::Authentication {
                registry: self.host.clone(),
                action: "push manifest",
                source: None,
            }),
            _ => Err(Error::Rejected {
                what: "manifest",
                reference: reference.whole(),
                reason: format!("HTTP {status}: {}", summarize_body(&body)),
            }),
        }
    }

    /// Returns the `Authorization` header for a request of our own, using oci-client's token.
    async fn authorization(
        &self,
        reference: &Reference,
        operation: RegistryOperation,
    ) -> Result<Option<HeaderValue>, Error> {
        let token = self
            .oci
            .auth(reference, &self.auth, operation)
            .await
            .map_err(|source| self.error("authenticate for", reference, source))?;
        let value = match (token, &self.auth) {
            (Some(token), _) => format!("Bearer {token}"),
            (None, RegistryAuth::Basic(username, password)) => {
                use base64::Engine;
                let pair = format!("{username}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            (None, _) => return Ok(None),
        };
        let mut header = HeaderValue::from_str(&value).map_err(|_| Error::Authentication {
            registry: self.host.clone(),
            action: "build an Authorization header",
            source: None,
        })?;
        header.set_sensitive(true);
        Ok(Some(header))
    }

    /// Returns true when the repository of `reference` has the blob.
    pub async fn blob_exists(&self, reference: &Reference, digest: &str) -> Result<bool, Error> {
        self.oci
            .blob_exists(reference, digest)
            .await
            .map_err(|source| self.error("check blob in", reference, source))
    }

    /// Asks the registry to link a blob from another repository. Returns false when it did not
    /// (a 202 answer opens an upload instead, which some registries do by policy).
    pub async fn mount_blob(&self, target: &Reference, from: &Reference, digest: &str) -> bool {
        match self.oci.mount_blob(target, from, digest).await {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%digest, error = %error, "Mount not done, copying instead");
                false
            }
        }
    }

    /// Opens a blob for reading. The stream's last item is an error if the bytes do not match
    /// the digest.
    pub async fn pull_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Error> {
        let sized = self
            .oci
            .pull_blob_stream(reference, digest)
            .await
            .map_err(|source| self.error("fetch blob from", reference, source))?;
        Ok(sized.stream)
    }

    /// Uploads a blob from a stream in one streaming PUT of `size` bytes.
    pub async fn push_blob<S>(
        &self,
        reference: &Reference,
        stream: S,
        digest: &str,
        size: u64,
    ) -> Result<(), Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let stream = stream.map_err(OciDistributionError::from).boxed();
        self.oci
            .push_blob_stream(reference, stream, digest, Some(size))
            .await
            .map(|_| ())
            .map_err(|source| self.error("push blob to", reference, source))
    }

    /// Reads a small blob, such as an image config, into memory.
    pub async fn read_small_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.oci
            .pull_blob(reference, digest, &mut out)
            .await
            .map_err(|source| self.error("fetch blob from", reference, source))?;
        Ok(out)
    }
}

/// Splits PEM bundles into single certificates, as oci-client takes one per entry.
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

/// Shortens a registry error body for a message: the first line, at most 300 characters.
fn summarize_body(body: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return "empty response body".to_string();
    }
    line.chars().take(300).collect()
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
    fn summarize_body_cuts() {
        assert_eq!(summarize_body(""), "empty response body");
        assert_eq!(summarize_body("a\nb"), "a");
        assert_eq!(summarize_body(&"x".repeat(400)).len(), 300);
    }
}
