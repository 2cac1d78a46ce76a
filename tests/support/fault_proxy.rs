//! A fault-injecting HTTP proxy in front of a real registry.
//!
//! [`FaultProxy`] listens on 127.0.0.1 on a free port and forwards every request to its
//! upstream, streaming bodies both ways. It keeps the client's `Host` header, so the registry
//! builds upload `Location` URLs that point back at the proxy. [`Rule`]s pick requests by
//! method and path pattern and change them: a new status, headers or body, a delay, a
//! connection dropped in the middle of the body, a fixed response, or a handler of the test's
//! own. [`BearerAuth`] makes the proxy a token server and checks the tokens the way a registry
//! with token authentication does. Every request is recorded with its headers.
//!
//! Two proxies can be chained (the upstream of one is the other's [`FaultProxy::url`]), and a
//! second proxy on another port serves as "another host", for example object storage that a
//! blob download is redirected to.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A handler that responds to a request in place of the default forwarding.
pub type Handler = Arc<dyn Fn(Exchange) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

type Predicate = Arc<dyn Fn(&RequestHead) -> bool + Send + Sync>;

/// Headers that describe one connection and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The method, path, query and headers of a request.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// The query without the `?`, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl RequestHead {
    /// Returns the path with its query, as it appeared in the request line.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// Returns a header's value as text, or `None` when it is absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Returns the value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        reqwest::Url::parse(&format!("http://x/?{query}"))
            .ok()?
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// One request the proxy received, with the status of its response.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub head: RequestHead,
    pub status: u16,
    /// When the proxy received the request.
    pub received: Instant,
    /// Name of the rule that changed the request, if one did.
    pub rule: Option<String>,
}

impl Recorded {
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    pub fn path(&self) -> &str {
        &self.head.path
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
}

/// A request handed to a [`Handler`], with the means to forward it upstream.
pub struct Exchange {
    pub head: RequestHead,
    pub body: Body,
    pub upstream: Upstream,
}

impl Exchange {
    /// Forwards the request unchanged and returns the upstream's response.
    pub async fn forward(self) -> Response<Body> {
        let path = self.head.path_and_query();
        self.upstream
            .send(&self.head.method, &path, &self.head.headers, self.body)
            .await
    }
}

/// The upstream a proxy forwards to.
#[derive(Clone)]
pub struct Upstream {
    base: String,
    client: reqwest::Client,
}

impl Upstream {
    /// Sends a request to the upstream and converts its response into a streaming one. A
    /// transport failure becomes a 502 response.
    pub async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Response<Body> {
        match self.send_raw(method, path_and_query, headers, body).await {
            Ok(response) => streaming_response(response),
            Err(error) => {
                let message = format!("fault proxy: upstream request failed: {error}");
                text_response(StatusCode::BAD_GATEWAY, &message)
            }
        }
    }

    /// Sends a request to the upstream and returns reqwest's response, for handlers that
    /// inspect or rewrite it.
    pub async fn send_raw(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let url = format!("{}{path_and_query}", self.base);
        let mut forwarded = HeaderMap::new();
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                forwarded.append(name.clone(), value.clone());
            }
        }
        let mut request = self.client.request(method.clone(), url).headers(forwarded);
        if method != Method::GET && method != Method::HEAD {
            request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        request.send().await
    }
}

/// Converts an upstream response into a proxy response without buffering the body.
pub fn streaming_response(response: reqwest::Response) -> Response<Body> {
    let status = response.status();
    let headers = response_headers(response.headers());
    let body = Body::from_stream(response.bytes_stream());
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn response_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Builds a response with a plain-text body.
pub fn text_response(status: StatusCode, body: &str) -> Response<Body> {
    response(status, &[("Content-Type", "text/plain")], body.to_string())
}

/// Builds a response with the given status, headers and body.
pub fn response(
    status: StatusCode,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut out = Response::new(Body::from(body.into()));
    *out.status_mut() = status;
    for (name, value) in headers {
        out.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    out
}

/// What a rule does with a matched request.
#[derive(Clone)]
enum Action {
    /// Forward, then change the response.
    Forward(ResponseEdits),
    /// Answer without contacting the upstream.
    Respond {
        status: StatusCode,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    Handle(Handler),
}

#[derive(Clone, Default)]
struct ResponseEdits {
    status: Option<StatusCode>,
    set_headers: Vec<(String, String)>,
    remove_headers: Vec<String>,
    body: Option<Bytes>,
    drop_after: Option<usize>,
}

/// A change applied to requests that match a method and a path pattern.
///
/// The pattern is matched against the path without the query; `*` matches any run of
/// characters, `/` included. Rules are tried in the order they were added, and the first one
/// that matches and still has uses left applies.
#[derive(Clone)]
pub struct Rule {
    name: String,
    method: Option<Method>,
    pattern: String,
    predicate: Option<Predicate>,
    skip: usize,
    times: Option<usize>,
    delay: Option<Duration>,
    set_request_headers: Vec<(String, String)>,
    remove_request_headers: Vec<String>,
    action: Action,
}

impl Rule {
    /// Creates a rule for `method` (`*` for any) and a path pattern. Without further settings it
    /// forwards the request unchanged, which still counts its matches.
    pub fn new(method: &str, pattern: &str) -> Rule {
        Rule {
            name: format!("{method} {pattern}"),
            method: (method != "*").then(|| method.parse().expect("valid HTTP method")),
            pattern: pattern.to_string(),
            predicate: None,
            skip: 0,
            times: None,
            delay: None,
            set_request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            action: Action::Forward(ResponseEdits::default()),
        }
    }

    /// Matches only requests for which `predicate` returns true.
    pub fn when(
        mut self,
        predicate: impl Fn(&RequestHead) -> bool + Send + Sync + 'static,
    ) -> Rule {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    /// Lets the first `count` matching requests pass unchanged.
    pub fn skip(mut self, count: usize) -> Rule {
        self.skip = count;
        self
    }

    /// Applies to `count` matching requests (after the skipped ones), then no more.
    pub fn times(mut self, count: usize) -> Rule {
        self.times = Some(count);
        self
    }

    /// Waits before handling the request.
    pub fn delay(mut self, delay: Duration) -> Rule {
        self.delay = Some(delay);
        self
    }

    /// Sets a request header before forwarding.
    pub fn request_header(mut self, name: &str, value: &str) -> Rule {
        self.set_request_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Removes a request header before forwarding.
    pub fn remove_request_header(mut self, name: &str) -> Rule {
        self.remove_request_headers.push(name.to_string());
        self
    }

    /// Replaces the status of the upstream's response.
    pub fn status(mut self, status: u16) -> Rule {
        self.edits().status = Some(StatusCode::from_u16(status).expect("valid status"));
        self
    }

    /// Sets a header of the upstream's response, replacing any value it had.
    pub fn response_header(mut self, name: &str, value: &str) -> Rule {
        self.edits()
            .set_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Removes a header from the upstream's response.
    pub fn remove_response_header(mut self, name: &str) -> Rule {
        self.edits().remove_headers.push(name.to_string());
        self
    }

    /// Replaces the body of the upstream's response, with a matching `Content-Length`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Rule {
        self.edits().body = Some(body.into());
        self
    }

    /// Sends the first `bytes` bytes of the upstream's response body, then drops the
    /// connection. The response keeps the upstream's `Content-Length`, so the client sees a
    /// body that ends early.
    pub fn drop_after(mut self, bytes: usize) -> Rule {
        self.edits().drop_after = Some(bytes);
        self
    }

    /// Answers with this response and never contacts the upstream.
    pub fn respond(
        mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Rule {
        self.action = Action::Respond {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        };
        self
    }

    /// Hands matching requests to `handler`, which may forward them through
    /// [`Exchange::forward`] or [`Upstream::send`].
    pub fn handle<F, Fut>(mut self, handler: F) -> Rule
    where
        F: Fn(Exchange) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        self.action = Action::Handle(Arc::new(move |exchange| Box::pin(handler(exchange))));
        self
    }

    /// Names the rule in [`Recorded::rule`].
    pub fn named(mut self, name: &str) -> Rule {
        self.name = name.to_string();
        self
    }

    fn edits(&mut self) -> &mut ResponseEdits {
        if !matches!(self.action, Action::Forward(_)) {
            self.action = Action::Forward(ResponseEdits::default());
        }
        match &mut self.action {
            Action::Forward(edits) => edits,
            _ => unreachable!("set just above"),
        }
    }

    fn matches(&self, head: &RequestHead) -> bool {
        self.method.as_ref().is_none_or(|m| m == head.method)
            && glob_match(&self.pattern, &head.path)
            && self.predicate.as_ref().is_none_or(|p| p(head))
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(position) => rest = &rest[position + middle.len()..],
            None => return false,
        }
    }
    true
}

struct RuleState {
    rule: Rule,
    matched: AtomicUsize,
    applied: AtomicUsize,
}

/// Counts of one rule.
#[derive(Clone)]
pub struct RuleHandle {
    state: Arc<RuleState>,
}

impl RuleHandle {
    /// Returns how many requests matched the rule, skipped ones included.
    pub fn matched(&self) -> usize {
        self.state.matched.load(Ordering::SeqCst)
    }

    /// Returns how many requests the rule changed.
    pub fn applied(&self) -> usize {
        self.state.applied.load(Ordering::SeqCst)
    }
}

struct Shared {
    upstream: Upstream,
    address: SocketAddr,
    rules: Mutex<Vec<Arc<RuleState>>>,
    log: Mutex<Vec<Recorded>>,
    bearer: Mutex<Option<Arc<BearerAuth>>>,
}

/// An HTTP proxy on 127.0.0.1 in front of one upstream. The server stops when the proxy is
/// dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy for `upstream`, such as `http://127.0.0.1:5000`.
    pub async fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_with_ca(upstream, None).await
    }

    /// Starts a proxy for an HTTPS upstream whose certificate is signed by the PEM `ca`.
    pub async fn start_with_ca(upstream: &str, ca: Option<&[u8]>) -> FaultProxy {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(pem) = ca {
            let certificate = reqwest::Certificate::from_pem(pem).expect("valid CA PEM");
            builder = builder.tls_certs_merge([certificate]);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Upstream {
                base: upstream.trim_end_matches('/').to_string(),
                client: builder.build().expect("reqwest client"),
            },
            address,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            bearer: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(serve_request)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fault proxy server");
        });
        FaultProxy { shared, server }
    }

    /// Returns `127.0.0.1:PORT`, the host part of image references through this proxy.
    pub fn host(&self) -> String {
        self.shared.address.to_string()
    }

    /// Returns `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// Adds a rule after the existing ones and returns its counters.
    pub fn add(&self, rule: Rule) -> RuleHandle {
        let state = Arc::new(RuleState {
            rule,
            matched: AtomicUsize::new(0),
            applied: AtomicUsize::new(0),
        });
        self.shared.rules.lock().unwrap().push(state.clone());
        RuleHandle { state }
    }

    /// Requires bearer tokens on `/v2/` requests, issued by this proxy at `/token`.
    pub fn require_bearer(&self, policy: BearerPolicy) -> Arc<BearerAuth> {
        let auth = Arc::new(BearerAuth {
            policy,
            realm: format!("{}/token", self.url()),
            state: Mutex::new(BearerState::default()),
        });
        *self.shared.bearer.lock().unwrap() = Some(auth.clone());
        auth
    }

    /// Returns every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Returns how many requests matched `method` (`*` for any) and the path pattern.
    pub fn count(&self, method: &str, pattern: &str) -> usize {
        let rule = Rule::new(method, pattern);
        self.requests()
            .iter()
            .filter(|recorded| rule.matches(&recorded.head))
            .count()
    }
}

async fn serve_request(State(shared): State<Arc<Shared>>, request: Request) -> Response<Body> {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let mut head = RequestHead {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
    };
    let original = head.clone();

    let bearer = shared.bearer.lock().unwrap().clone();
    let (response, rule_name) = match bearer.and_then(|auth| auth.check(&head)) {
        Some(Checked::Answer(response)) => (response, Some("bearer auth".to_string())),
        outcome => {
            if let Some(Checked::Forward) = outcome {
                // The upstream does not accept the proxy's tokens.
                head.headers.remove("authorization");
            }
            apply_rules(&shared, head, body).await
        }
    };

    shared.log.lock().unwrap().push(Recorded {
        head: original,
        status: response.status().as_u16(),
        received,
        rule: rule_name,
    });
    response
}

async fn apply_rules(
    shared: &Arc<Shared>,
    mut head: RequestHead,
    body: Body,
) -> (Response<Body>, Option<String>) {
    let chosen = {
        let rules = shared.rules.lock().unwrap();
        rules
            .iter()
            .find(|state| {
                if !state.rule.matches(&head) {
                    return false;
                }
                let position = state.matched.fetch_add(1, Ordering::SeqCst);
                let within = position >= state.rule.skip
                    && state
                        .rule
                        .times
                        .is_none_or(|times| position < state.rule.skip + times);
                if within {
                    state.applied.fetch_add(1, Ordering::SeqCst);
                }
                within
            })
            .cloned()
    };
    let Some(state) = chosen else {
        let path = head.path_and_query();
        let response = shared
            .upstream
            .send(&head.method, &path, &head.headers, body)
            .await;
        return (response, None);
    };

    let rule = &state.rule;
    if let Some(delay) = rule.delay {
        tokio::time::sleep(delay).await;
    }
    for name in &rule.remove_request_headers {
        head.headers.remove(name.as_str());
    }
    for (name, value) in &rule.set_request_headers {
        head.headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }

    let response = match &rule.action {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            response(*status, &headers, body.clone())
        }
        Action::Handle(handler) => {
            let exchange = Exchange {
                head,
                body,
                upstream: shared.upstream.clone(),
            };
            handler(exchange).await
        }
        Action::Forward(edits) => {
            let path = head.path_and_query();
            match shared
                .upstream
                .send_raw(&head.method, &path, &head.headers, body)
                .await
            {
                Ok(upstream) => edit_response(upstream, edits),
                Err(error) => text_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("fault proxy: upstream request failed: {error}"),
                ),
            }
        }
    };
    (response, Some(rule.name.clone()))
}

fn edit_response(upstream: reqwest::Response, edits: &ResponseEdits) -> Response<Body> {
    let mut out = match (&edits.body, edits.drop_after) {
        (Some(body), _) => {
            let mut out = Response::new(Body::from(body.clone()));
            *out.status_mut() = upstream.status();
            *out.headers_mut() = response_headers(upstream.headers());
            out.headers_mut().insert(
                "content-length",
                HeaderValue::from_str(&body.len().to_string()).unwrap(),
            );
            out
        }
        (None, Some(limit)) => {
            let status = upstream.status();
            let headers = response_headers(upstream.headers());
            let mut out = Response::new(Body::from_stream(cut_after(upstream, limit)));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        (None, None) => streaming_response(upstream),
    };
    if let Some(status) = edits.status {
        *out.status_mut() = status;
    }
    for name in &edits.remove_headers {
        out.headers_mut().remove(name.as_str());
    }
    for (name, value) in &edits.set_headers {
        out.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    out
}

/// Streams the first `limit` bytes of a response body, then ends with an error, which makes
/// the server close the connection before the body is complete.
fn cut_after(
    upstream: reqwest::Response,
    limit: usize,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    let dropped = || std::io::Error::other("fault proxy dropped the connection");
    let inner = upstream.bytes_stream().boxed();
    futures::stream::unfold(
        (inner, 0usize, false),
        move |(mut inner, sent, done)| async move {
            if done {
                return None;
            }
            if sent >= limit {
                // Give the server time to send the head and the bytes so far, because an
                // error at once can close the connection before any of it leaves.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                return Some((Err(dropped()), (inner, sent, true)));
            }
            match inner.next().await {
                None => None,
                Some(Err(error)) => Some((Err(std::io::Error::other(error)), (inner, sent, true))),
                Some(Ok(chunk)) => {
                    let keep = chunk.len().min(limit - sent);
                    Some((Ok(chunk.slice(..keep)), (inner, sent + keep, false)))
                }
            }
        },
    )
}

/// How the proxy's token server behaves.
#[derive(Clone, Debug, Default)]
pub struct BearerPolicy {
    /// Basic credentials the token endpoint requires; `None` issues tokens to anyone.
    pub credentials: Option<(String, String)>,
    /// Grant only the first repository scope of a token request, as registries do whose
    /// tokens cover one repository.
    pub one_repository_per_token: bool,
    /// Registry requests each token is good for; then it answers 401 as if it expired.
    pub token_uses: Option<usize>,
}

/// One request to the token endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// The username of the request's Basic credentials, if it had any.
    pub username: Option<String>,
    /// True when a token was issued.
    pub issued: bool,
}

struct IssuedToken {
    /// `(repository, action)` pairs.
    granted: Vec<(String, String)>,
    /// Registry requests the token is still good for; `None` for no limit.
    uses_left: Option<usize>,
}

#[derive(Default)]
struct BearerState {
    tokens: HashMap<String, IssuedToken>,
    requests: Vec<TokenRequest>,
    rejected: Vec<String>,
    issued: usize,
}

/// A token server and token check played by the proxy.
pub struct BearerAuth {
    policy: BearerPolicy,
    realm: String,
    state: Mutex<BearerState>,
}

enum Checked {
    Answer(Response<Body>),
    Forward,
}

/// Service name in the proxy's challenges and token requests.
pub const BEARER_SERVICE: &str = "fault-proxy";

impl BearerAuth {
    /// Returns every request made to the token endpoint.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Returns the `METHOD PATH` of every registry request answered 401.
    pub fn rejected(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }

    /// Returns every token issued so far; tests check that none leaks into messages.
    pub fn issued_tokens(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        (1..=state.issued).map(token_text).collect()
    }

    fn check(&self, head: &RequestHead) -> Option<Checked> {
        if head.path == "/token" {
            return Some(Checked::Answer(self.issue(head)));
        }
        if !head.path.starts_with("/v2/") {
            return None;
        }
        let needed = required_access(head);
        let token = head
            .header("authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_string);
        let mut state = self.state.lock().unwrap();
        let accepted = token.as_ref().is_some_and(|token| {
            let Some(issued) = state.tokens.get_mut(token) else {
                return false;
            };
            if issued.uses_left == Some(0) {
                return false;
            }
            let covered = needed.iter().all(|(repository, action)| {
                issued
                    .granted
                    .iter()
                    .any(|(r, a)| r == repository && (a == action || a == "*"))
            });
            if covered && let Some(left) = issued.uses_left.as_mut() {
                *left -= 1;
            }
            covered
        });
        if accepted {
            return Some(Checked::Forward);
        }
        state
            .rejected
            .push(format!("{} {}", head.method, head.path));
        let scope = needed
            .iter()
            .map(|(repository, action)| format!("repository:{repository}:{action}"))
            .next()
            .unwrap_or_default();
        let mut challenge = format!(
            "Bearer realm=\"{}\",service=\"{BEARER_SERVICE}\"",
            self.realm
        );
        if !scope.is_empty() {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        Some(Checked::Answer(response(
            StatusCode::UNAUTHORIZED,
            &[
                ("WWW-Authenticate", &challenge),
                ("Content-Type", "application/json"),
            ],
            body,
        )))
    }

    fn issue(&self, head: &RequestHead) -> Response<Body> {
        let query = head.query.clone().unwrap_or_default();
        let pairs: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{query}"))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let scopes: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect();
        let service = pairs
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let basic = head
            .header("authorization")
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        let allowed = match &self.policy.credentials {
            None => true,
            Some(expected) => basic.as_ref() == Some(expected),
        };

        let mut state = self.state.lock().unwrap();
        state.requests.push(TokenRequest {
            scopes: scopes.clone(),
            service,
            username: basic.map(|(u, _)| u),
            issued: allowed,
        });
        if !allowed {
            return response(
                StatusCode::UNAUTHORIZED,
                &[("Content-Type", "application/json")],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
            );
        }

        let mut granted = Vec::new();
        let mut first_repository: Option<String> = None;
        for scope in &scopes {
            let mut parts = scope.splitn(3, ':');
            let (Some("repository"), Some(repository), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if self.policy.one_repository_per_token {
                match &first_repository {
                    Some(first) if first != repository => continue,
                    Some(_) => {}
                    None => first_repository = Some(repository.to_string()),
                }
            }
            for action in actions.split(',') {
                granted.push((repository.to_string(), action.to_string()));
            }
        }
        state.issued += 1;
        let token = token_text(state.issued);
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                granted,
                uses_left: self.policy.token_uses,
            },
        );
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
        response(
            StatusCode::OK,
            &[("Content-Type", "application/json")],
            body,
        )
    }
}

fn token_text(number: usize) -> String {
    format!("fault-proxy-token-{number}")
}

/// Returns the `(repository, action)` pairs a registry request needs: `pull` to read,
/// `push` to write, and `pull` on the `from` repository of a cross-repository mount.
fn required_access(head: &RequestHead) -> Vec<(String, String)> {
    let rest = head.path.trim_start_matches("/v2/");
    let markers = ["/manifests/", "/blobs/", "/tags/", "/referrers/"];
    let repository = markers
        .iter()
        .filter_map(|marker| rest.find(marker).map(|position| &rest[..position]))
        .min_by_key(|repository| repository.len());
    let Some(repository) = repository else {
        return Vec::new();
    };
    let action = match head.method {
        Method::GET | Method::HEAD => "pull",
        _ => "push",
    };
    let mut needed = vec![(repository.to_string(), action.to_string())];
    if head.method == Method::POST
        && let Some(from) = head.query_param("from")
        && head.query_param("mount").is_some()
    {
        needed.push((from, "pull".to_string()));
    }
    needed
}
