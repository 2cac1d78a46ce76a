//! HTTP requests to one registry: authentication, rate limits, retries and redirects.
//!
//! Every registry request of the engine goes through [`Client`]. It sends credentials only to
//! the registry's own origin (scheme, host and port), never to a host that a redirect or an
//! upload `Location` points at, as the distribution spec requires. It learns the registry's
//! authentication scheme from a `GET /v2/` probe or from the first 401, fetches bearer tokens
//! per set of scopes, and requests a new token once when a token it used gets a 401. A 429,
//! or a 503 with `Retry-After`, closes the host's [`gate`](super::gate) for the time the
//! registry requested, so that every copy to that host waits.
//!
//! oci-client 0.18 is not used for these requests, because its errors drop the response
//! headers (so `Retry-After` is lost), it rejects a manifest whose `Docker-Content-Digest`
//! differs from the bytes, it reads manifests whole, it never renews a token after a 401,
//! its chunked upload sends one PATCH per stream frame, and its raw manifest push panics on a
//! 201 without `Location`. The engine still uses its reference parser.

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::Credential;
use super::error::Failure;
use super::gate;
use super::token::{Challenge, Scope, TokenResponse, parse_challenges};

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Retries of one request after a network failure or a 5xx response.
const MAX_RETRIES: usize = 3;
/// Waits for the rate-limit gate within one request, before its 429 goes to the caller.
const MAX_RATE_LIMIT_WAITS: usize = 5;
/// A cached token is renewed when it has less than this much life left.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(10);
/// Largest error or token body read into memory.
const MAX_SMALL_BODY: usize = 64 * 1024;

/// Backoff between retries of one request.
fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(MAX_RETRIES)
        .with_jitter()
        .build()
}

/// The authentication scheme a registry requires.
#[derive(Clone, Debug, Default)]
enum Scheme {
    /// Not known yet: requests go without credentials until a 401 names the scheme.
    #[default]
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    probed: bool,
    scheme: Scheme,
    /// Tokens by their scope list, as sent to the token server.
    tokens: HashMap<String, CachedToken>,
}

/// One request whose body, if any, can be sent again.
pub struct Call {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// The access the request needs, for bearer tokens.
    pub scopes: Vec<Scope>,
    /// Follow 3xx responses (for GET and HEAD).
    pub follow_redirects: bool,
    /// Send again after a network failure or a 5xx response. Only for requests that change
    /// nothing when repeated.
    pub retry: bool,
}

impl Call {
    pub fn new(method: Method, url: Url, scopes: Vec<Scope>) -> Call {
        let idempotent = method != Method::PATCH && method != Method::POST;
        let follow_redirects = method == Method::GET || method == Method::HEAD;
        Call {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scopes,
            follow_redirects,
            retry: idempotent,
        }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: HeaderValue) -> Call {
        self.headers.insert(name, value);
        self
    }

    pub fn body(mut self, body: Bytes) -> Call {
        self.body = Some(body);
        self
    }
}

/// A registry response with the URL that produced it, after redirects.
pub struct RegistryResponse {
    pub response: Response,
    pub url: Url,
}

/// HTTP access to one registry with one credential.
pub struct Client {
    http: reqwest::Client,
    origin: Url,
    host: String,
    credential: Option<Credential>,
    auth: tokio::sync::Mutex<AuthState>,
}

impl Client {
    /// `origin` is the registry's base URL, such as `https://registry.example/`. `http` must
    /// not follow redirects itself.
    pub fn new(http: reqwest::Client, origin: Url, credential: Option<Credential>) -> Client {
        let host = match origin.port() {
            Some(port) => format!("{}:{port}", origin.host_str().unwrap_or_default()),
            None => origin.host_str().unwrap_or_default().to_string(),
        };
        Client {
            http,
            origin,
            host,
            credential,
            auth: tokio::sync::Mutex::new(AuthState::default()),
        }
    }

    /// Returns the registry host as used in messages and for the rate-limit gate.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Returns the URL of `path` (without a leading `/`) on the registry.
    pub fn url(&self, path: &str) -> Url {
        self.origin
            .join(path)
            .expect("registry paths are valid URL paths")
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.origin.scheme()
            && url.host_str() == self.origin.host_str()
            && url.port_or_known_default() == self.origin.port_or_known_default()
    }

    /// Sends a request, handling 401 challenges, rate limits, retries and redirects, and
    /// returns the last response whatever its status.
    pub async fn send(&self, call: &Call) -> Result<RegistryResponse, Failure> {
        let mut url = call.url.clone();
        let mut delays = retry_delays();
        let mut redirects = 0;
        let mut rate_limit_waits = 0;
        let mut reauthenticated = false;
        loop {
            self.wait_for_gate().await?;
            let authorization = self.authorization(&url, &call.scopes).await?;
            let mut request = self
                .http
                .request(call.method.clone(), url.clone())
                .headers(call.headers.clone());
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value.clone());
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }

            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    let failure = Failure::network(error);
                    let retry = call.retry && failure.is_transient();
                    match delays.next().filter(|_| retry) {
                        Some(delay) => {
                            warn!(method = %call.method, path = url.path(), error = %failure, ?delay, "Retrying request");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        None => return Err(failure),
                    }
                }
            };

            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !reauthenticated && self.same_origin(&url) {
                reauthenticated = true;
                if self
                    .handle_unauthorized(&response, &call.scopes, authorization.is_some())
                    .await?
                {
                    continue;
                }
                return Ok(RegistryResponse { response, url });
            }

            if is_rate_limited(&response) {
                let wait = retry_after(&response)
                    .or_else(|| delays.next())
                    .unwrap_or(Duration::from_secs(1));
                self.close_gate(status, wait)?;
                if rate_limit_waits < MAX_RATE_LIMIT_WAITS {
                    rate_limit_waits += 1;
                    continue;
                }
                return Ok(RegistryResponse { response, url });
            }

            if call.retry && (status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT) {
                if let Some(delay) = delays.next() {
                    warn!(method = %call.method, path = url.path(), %status, ?delay, "Retrying request");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                return Ok(RegistryResponse { response, url });
            }

            if call.follow_redirects
                && status.is_redirection()
                && let Some(next) = redirect_target(&url, &response)?
            {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Failure::Protocol(format!(
                        "more than {MAX_REDIRECTS} redirects for {}",
                        call.url.path()
                    )));
                }
                if !self.same_origin(&next) {
                    debug!(
                        from = url.path(),
                        to_host = next.host_str().unwrap_or_default(),
                        "Following redirect to another host without credentials"
                    );
                }
                url = next;
                continue;
            }
            return Ok(RegistryResponse { response, url });
        }
    }

    /// Sends a request with a body that can be read only once, such as a blob stream. There
    /// is no retry here: a 401 to a token that was used drops the token and returns
    /// [`Failure::TokenExpired`], and a 429 closes the gate, so that the caller's next
    /// attempt, with a fresh stream, succeeds.
    pub async fn send_stream(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: reqwest::Body,
        scopes: &[Scope],
    ) -> Result<Response, Failure> {
        self.wait_for_gate().await?;
        let authorization = self.authorization(&url, scopes).await?;
        let mut request = self.http.request(method, url).headers(headers).body(body);
        if let Some(value) = &authorization {
            request = request.header(AUTHORIZATION, value.clone());
        }
        let response = request.send().await.map_err(Failure::network)?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED && authorization.is_some() {
            let mut state = self.auth.lock().await;
            if matches!(state.scheme, Scheme::Bearer { .. }) {
                state.tokens.remove(&scope_key(scopes));
                return Err(Failure::TokenExpired);
            }
        }
        if is_rate_limited(&response) {
            let wait = retry_after(&response).unwrap_or(Duration::from_secs(1));
            self.close_gate(status, wait)?;
        }
        Ok(response)
    }

    async fn wait_for_gate(&self) -> Result<(), Failure> {
        gate::wait(&self.host).await.map_err(Failure::RateLimited)
    }

    fn close_gate(&self, status: StatusCode, wait: Duration) -> Result<(), Failure> {
        gate::close(&self.host, wait);
        if wait > gate::MAX_WAIT {
            return Err(Failure::RateLimited(wait));
        }
        warn!(registry = %self.host, %status, wait_ms = wait.as_millis() as u64, "Registry rate limit reached, waiting");
        Ok(())
    }

    /// Returns the `Authorization` value for a request to `url`, or `None` when the request
    /// goes without credentials: to another origin, or before the registry requested any.
    async fn authorization(
        &self,
        url: &Url,
        scopes: &[Scope],
    ) -> Result<Option<HeaderValue>, Failure> {
        if !self.same_origin(url) {
            return Ok(None);
        }
        let basic = match &self.credential {
            None => None,
            Some(Credential::Bearer { token }) => {
                return Ok(Some(sensitive(&format!("Bearer {token}"))?));
            }
            Some(Credential::Basic { username, password }) => Some((username, password)),
        };

        let mut state = self.auth.lock().await;
        if !state.probed && basic.is_some() {
            state.probed = true;
            self.probe(&mut state).await;
        }
        match state.scheme.clone() {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => match basic {
                Some((username, password)) => Ok(Some(basic_header(username, password)?)),
                None => Ok(None),
            },
            Scheme::Bearer { realm, service } => {
                let key = scope_key(scopes);
                let now = Instant::now();
                if let Some(token) = state.tokens.get(&key)
                    && token.expires > now + TOKEN_RENEW_MARGIN
                {
                    return Ok(Some(sensitive(&format!("Bearer {}", token.value))?));
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), scopes, None)
                    .await?;
                let value = sensitive(&format!("Bearer {}", token.value))?;
                state.tokens.insert(key, token);
                Ok(Some(value))
            }
        }
    }

    /// Learns the registry's authentication scheme from `GET /v2/`, so that credentials go
    /// with the first real request. Some registries return 404, not 401, to anonymous requests
    /// for private repositories, so waiting for a 401 would report a missing image instead of
    /// using the credentials.
    async fn probe(&self, state: &mut AuthState) {
        let url = self.url("v2/");
        match self.http.get(url).send().await {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                if let Some(scheme) = scheme_of(&challenges(&response)) {
                    debug!(registry = %self.host, ?scheme, "Registry requires credentials");
                    state.scheme = scheme;
                }
            }
            Ok(_) => {}
            Err(error) => {
                debug!(registry = %self.host, error = %error.without_url(), "Probe of /v2/ failed");
            }
        }
    }

    /// Learns from a 401 response. Returns true when the request should be sent again, with
    /// new credentials.
    async fn handle_unauthorized(
        &self,
        response: &Response,
        scopes: &[Scope],
        sent_credentials: bool,
    ) -> Result<bool, Failure> {
        let challenges = challenges(response);
        let Some(scheme) = scheme_of(&challenges) else {
            return Ok(false);
        };
        match (&scheme, &self.credential) {
            // A registry token from the user cannot be renewed.
            (_, Some(Credential::Bearer { .. })) => Ok(false),
            (Scheme::Basic, Some(Credential::Basic { .. })) => {
                let mut state = self.auth.lock().await;
                let first_time = !matches!(state.scheme, Scheme::Basic);
                state.scheme = Scheme::Basic;
                Ok(first_time || !sent_credentials)
            }
            (Scheme::Basic, _) => Ok(false),
            (Scheme::Bearer { realm, service }, _) => {
                let mut state = self.auth.lock().await;
                state.scheme = scheme.clone();
                let key = scope_key(scopes);
                state.tokens.remove(&key);
                // The challenge may name a scope the request needs beyond the engine's own.
                let extra = challenges
                    .iter()
                    .find(|c| c.scheme == "bearer")
                    .and_then(|c| c.param("scope"))
                    .map(str::to_string);
                if sent_credentials {
                    debug!(registry = %self.host, "Token rejected, requesting a new one");
                }
                let token = self
                    .fetch_token(realm, service.as_deref(), scopes, extra.as_deref())
                    .await?;
                state.tokens.insert(key, token);
                Ok(true)
            }
            (Scheme::Unknown, _) => Ok(false),
        }
    }

    /// Requests a token for `scopes` from the token server, with Basic credentials when the
    /// client has them.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[Scope],
        extra_scope: Option<&str>,
    ) -> Result<CachedToken, Failure> {
        let mut url = Url::parse(realm).map_err(|_| {
            Failure::Protocol(format!(
                "the registry's token realm {realm:?} is not a valid URL"
            ))
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            let mut seen = Vec::new();
            for scope in scopes
                .iter()
                .map(ToString::to_string)
                .chain(extra_scope.map(str::to_string))
            {
                if !seen.contains(&scope) {
                    query.append_pair("scope", &scope);
                    seen.push(scope);
                }
            }
        }
        debug!(registry = %self.host, scopes = scope_key(scopes), "Requesting a token");

        let mut request = self.http.get(url);
        if let Some(Credential::Basic { username, password }) = &self.credential {
            request = request.header(AUTHORIZATION, basic_header(username, password)?);
        }
        let token_failure = |failure: Failure| Failure::Token(Box::new(failure));
        let response = request
            .send()
            .await
            .map_err(|error| token_failure(Failure::network(error)))?;
        if !response.status().is_success() {
            return Err(token_failure(failure_of(response).await));
        }
        let body = read_small(response)
            .await
            .map_err(|error| token_failure(Failure::Interrupted(error.without_url())))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            token_failure(Failure::Protocol(
                "the token server's response is not JSON".to_string(),
            ))
        })?;
        let (value, lifetime) = parsed.into_token().ok_or_else(|| {
            token_failure(Failure::Protocol(
                "the token server's response has no token".to_string(),
            ))
        })?;
        Ok(CachedToken {
            value,
            expires: Instant::now() + lifetime,
        })
    }
}

fn scope_key(scopes: &[Scope]) -> String {
    let mut parts: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    parts.sort();
    parts.join(" ")
}

fn challenges(response: &Response) -> Vec<Challenge> {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// Picks the scheme to use from a 401's challenges: bearer when offered, else basic.
fn scheme_of(challenges: &[Challenge]) -> Option<Scheme> {
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer")
        && let Some(realm) = bearer.param("realm")
    {
        return Some(Scheme::Bearer {
            realm: realm.to_string(),
            service: bearer.param("service").map(str::to_string),
        });
    }
    challenges
        .iter()
        .any(|c| c.scheme == "basic")
        .then_some(Scheme::Basic)
}

fn basic_header(username: &str, password: &str) -> Result<HeaderValue, Failure> {
    use base64::Engine;
    let pair = format!("{username}:{password}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    sensitive(&format!("Basic {encoded}"))
}

/// Builds a header value that `Debug` output and HTTP/2 header compression treat as secret.
fn sensitive(value: &str) -> Result<HeaderValue, Failure> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        Failure::Protocol("a credential contains characters not allowed in a header".to_string())
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn is_rate_limited(response: &Response) -> bool {
    let status = response.status();
    status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key(RETRY_AFTER))
}

fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    gate::parse_retry_after(value)
}

fn redirect_target(current: &Url, response: &Response) -> Result<Option<Url>, Failure> {
    let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
        return Ok(None);
    };
    let text = location
        .to_str()
        .map_err(|_| Failure::Protocol("a redirect Location is not valid text".to_string()))?;
    let next = current
        .join(text)
        .map_err(|_| Failure::Protocol("a redirect Location is not a valid URL".to_string()))?;
    if next.scheme() != "http" && next.scheme() != "https" {
        return Err(Failure::Protocol(format!(
            "a redirect points at a {} URL",
            next.scheme()
        )));
    }
    Ok(Some(next))
}

/// Reads a body of at most [`MAX_SMALL_BODY`] bytes; the rest is dropped.
pub async fn read_small(response: Response) -> Result<Bytes, reqwest::Error> {
    use futures::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = MAX_SMALL_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_SMALL_BODY {
            break;
        }
    }
    Ok(Bytes::from(body))
}

/// Turns an error response into a [`Failure`], with the error code and message from a JSON
/// error body, or the start of any other body.
pub async fn failure_of(response: Response) -> Failure {
    let status = response.status();
    let body = read_small(response).await.unwrap_or_default();
    let (code, summary) = summarize_error_body(&body);
    Failure::Status {
        status,
        code,
        summary,
    }
}

/// Returns the first error code and a one-line summary of an error body: every error of a
/// JSON error body as `CODE: message (detail)`, or the first line of any other body.
pub fn summarize_error_body(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body)
        && let Some(first) = envelope.errors.first()
    {
        let code = (!first.code.is_empty()).then(|| first.code.clone());
        let parts: Vec<String> = envelope
            .errors
            .iter()
            .map(|entry| {
                let mut part = match (entry.code.is_empty(), entry.message.is_empty()) {
                    (false, false) => format!("{}: {}", entry.code, entry.message),
                    (false, true) => entry.code.clone(),
                    (true, _) => entry.message.clone(),
                };
                // Only text details, because structured ones are long and rarely add to the message.
                if let Some(serde_json::Value::String(detail)) = &entry.detail
                    && !detail.is_empty()
                {
                    part.push_str(&format!(" ({detail})"));
                }
                part
            })
            .collect();
        return (code, shorten(&parts.join("; ")));
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.is_empty() {
        return (None, "empty response body".to_string());
    }
    (None, shorten(line))
}

fn shorten(text: &str) -> String {
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_summarized() {
        let json =
            br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}}]}"#;
        assert_eq!(
            summarize_error_body(json),
            (
                Some("MANIFEST_INVALID".to_string()),
                "MANIFEST_INVALID: manifest invalid".to_string()
            )
        );
        let several = br#"{"errors":[{"code":"UNKNOWN","message":"unknown error"},
            {"code":"UNKNOWN","message":"unknown error","detail":"invalid URL on layer"}]}"#;
        assert_eq!(
            summarize_error_body(several).1,
            "UNKNOWN: unknown error; UNKNOWN: unknown error (invalid URL on layer)"
        );
        assert_eq!(
            summarize_error_body(b""),
            (None, "empty response body".to_string())
        );
        assert_eq!(
            summarize_error_body(b"\n<html>\n<title>502</title>"),
            (None, "<html>".to_string())
        );
        assert_eq!(summarize_error_body(&[b'x'; 400]).1.len(), 300);
    }

    #[test]
    fn scope_key_ignores_order() {
        let a = [Scope::push("t"), Scope::pull("s")];
        let b = [Scope::pull("s"), Scope::push("t")];
        assert_eq!(scope_key(&a), scope_key(&b));
    }
}
