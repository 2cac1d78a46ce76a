//! Blob uploads: one streaming PUT, or a chunked upload of PATCH requests and a closing PUT.
//!
//! Both start with a POST that opens an upload session, or reuse the session a mount
//! request opened. The session's `Location` may be absolute, absolute-path or relative, may
//! point at another host (which gets no credentials), and may carry query parameters, which
//! are kept when `digest` is added.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use tracing::debug;

use super::client::{Call, failure_of};
use super::error::{Error, Failure};
use super::registry::{Registry, Upload, resolve_location, upload_of};
use super::stream::Rechunk;

/// The way blobs are sent to the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UploadMode {
    /// One streaming PUT per blob. A blob the registry rejects as too large (413) is sent
    /// again in chunks, and so are later blobs of at least that size.
    #[default]
    Streaming,
    /// Chunked uploads for every blob, for registries or proxies that limit request sizes.
    Chunked,
}

/// Default size of one PATCH in a chunked upload. It bounds the memory of one upload.
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;

const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

impl Registry {
    /// Opens an upload session in the repository of `repository`.
    pub async fn start_upload(&self, repository: &str) -> Result<Upload, Error> {
        let url = self.client.url(&format!("v2/{repository}/blobs/uploads/"));
        let call = Call::new(Method::POST, url, self.scopes(repository))
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let answer = self
            .client
            .send(&call)
            .await
            .map_err(|failure| self.error("start a blob upload in", repository, failure))?;
        if answer.response.status() != StatusCode::ACCEPTED {
            let failure = if answer.response.status().is_success() {
                Failure::Protocol(format!(
                    "the registry returned {} to a new upload, not 202 Accepted",
                    answer.response.status()
                ))
            } else {
                failure_of(answer.response).await
            };
            return Err(self.error("start a blob upload in", repository, failure));
        }
        upload_of(&answer)
            .map_err(|failure| self.error("start a blob upload in", repository, failure))
    }

    /// Sends a blob in one PUT of `size` bytes, streamed from `stream`.
    pub async fn put_blob_stream<S>(
        &self,
        repository: &str,
        upload: Upload,
        digest: &str,
        size: u64,
        stream: S,
    ) -> Result<(), Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let url = with_digest(upload.location, digest);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, OCTET_STREAM);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let response = self
            .client
            .send_stream(
                Method::PUT,
                url,
                headers,
                reqwest::Body::wrap_stream(stream),
                &self.scopes(repository),
            )
            .await
            .map_err(|failure| self.error("push blob to", repository, failure))?;
        if response.status().is_success() {
            return Ok(());
        }
        let failure = failure_of(response).await;
        Err(self.error("push blob to", repository, failure))
    }

    /// Sends a blob as PATCH requests of `chunk_size` bytes (or the registry's minimum, if
    /// larger), then closes the upload with a PUT that names the digest.
    pub async fn put_blob_chunks<S>(
        &self,
        repository: &str,
        upload: Upload,
        digest: &str,
        chunk_size: usize,
        stream: S,
    ) -> Result<(), Error>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    {
        let chunk_size = chunk_size.max(upload.min_chunk.unwrap_or(0));
        let scopes = self.scopes(repository);
        let fail = |failure: Failure| self.error("push blob to", repository, failure);
        let mut location = upload.location;
        let mut offset: u64 = 0;
        let mut chunks = Rechunk::new(stream, chunk_size);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|error| fail(Failure::SourceStream(error.to_string())))?;
            let end = offset + chunk.len() as u64 - 1;
            let range = HeaderValue::from_str(&format!("{offset}-{end}")).expect("valid header");
            let mut call = Call::new(Method::PATCH, location.clone(), scopes.clone())
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(reqwest::header::CONTENT_RANGE, range)
                .body(chunk);
            // A PATCH that failed on the way may have been applied, so only the whole blob
            // is tried again, in a new session.
            call.retry = false;
            let answer = self.client.send(&call).await.map_err(fail)?;
            let status = answer.response.status();
            if !status.is_success() {
                return Err(fail(failure_of(answer.response).await));
            }
            if let Some(acknowledged) = acknowledged_end(answer.response.headers())
                && acknowledged != end
            {
                return Err(fail(Failure::Protocol(format!(
                    "the registry acknowledged bytes 0-{acknowledged} of the upload after a chunk \
                     ending at byte {end}"
                ))));
            }
            // Registries may move the session with each chunk; one without a new Location
            // keeps the old one.
            if let Some(next) = answer.response.headers().get(reqwest::header::LOCATION) {
                location = resolve_location(&answer.url, next).map_err(fail)?;
            }
            offset = end + 1;
        }
        debug!(%digest, bytes = offset, "Closing chunked upload");

        let call = Call::new(Method::PUT, with_digest(location, digest), scopes)
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let answer = self.client.send(&call).await.map_err(fail)?;
        if answer.response.status().is_success() {
            return Ok(());
        }
        Err(fail(failure_of(answer.response).await))
    }
}

/// Adds `digest` to an upload URL, keeping its query parameters as they are.
fn with_digest(mut url: Url, digest: &str) -> Url {
    url.query_pairs_mut().append_pair("digest", digest);
    url
}

/// Reads the last acknowledged byte from a `Range` header: `0-N`, or `bytes=0-N` as some
/// registries write it.
fn acknowledged_end(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::RANGE)?.to_str().ok()?.trim();
    let value = value.strip_prefix("bytes=").unwrap_or(value);
    let (_, end) = value.split_once('-')?;
    end.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_appended_to_existing_query() {
        let url = Url::parse("https://r.example/up/1?_state=a%2Bb&sig=x%2Fy").unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            with_digest(url, &digest).as_str(),
            format!(
                "https://r.example/up/1?_state=a%2Bb&sig=x%2Fy&digest=sha256%3A{}",
                "a".repeat(64)
            )
        );
        let plain = Url::parse("https://r.example/up/2").unwrap();
        let expected = format!("digest=sha256%3A{}", "a".repeat(64));
        assert_eq!(with_digest(plain, &digest).query(), Some(expected.as_str()));
    }

    #[test]
    fn range_header_variants() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(acknowledged_end(&headers), Some(99));
        headers.insert(
            reqwest::header::RANGE,
            HeaderValue::from_static("bytes=0-7"),
        );
        assert_eq!(acknowledged_end(&headers), Some(7));
        headers.insert(reqwest::header::RANGE, HeaderValue::from_static("junk"));
        assert_eq!(acknowledged_end(&headers), None);
    }
}
