//! Registry behaviours that differ from the distribution spec's happy path, each reproduced
//! with the fault proxy (`support::fault_proxy`) in front of a real registry started by
//! `tests/env/up.sh`, and the engine's handling of it.

mod support;

use axum::http::StatusCode;
use pma2docker::copy::{
    self, ConnectOptions, CopyReport, CopyRequest, Credential, ErrorKind, Progress,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fault_proxy::{BEARER_SERVICE, BearerPolicy, FaultProxy, Rule, response};
use support::{Probe, assert_complete, env, fixtures, seed, unique_repository};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Starts a proxy in front of the plain-HTTP registry.
async fn plain_proxy() -> FaultProxy {
    FaultProxy::start(&format!("http://{}", env().registries.plain.host)).await
}

/// Starts a proxy in front of the registry with basic authentication.
async fn auth_proxy() -> FaultProxy {
    FaultProxy::start(&format!("http://{}", env().registries.auth.host)).await
}

/// Builds a request that reaches the test registries and `proxies` over plain HTTP, with no
/// credentials.
fn request(source: &str, target: &str, proxies: &[&FaultProxy]) -> CopyRequest {
    let env = env();
    let mut request = CopyRequest::new(source.parse().unwrap(), target.parse().unwrap());
    let mut plain_http = vec![
        env.registries.plain.host.clone(),
        env.registries.auth.host.clone(),
    ];
    plain_http.extend(proxies.iter().map(|proxy| proxy.host()));
    request.connect = ConnectOptions {
        plain_http,
        ..ConnectOptions::default()
    };
    request
}

/// Returns the auth registry's credentials.
fn auth_credential() -> Credential {
    let auth = &env().registries.auth;
    Credential::Basic {
        username: auth.username.clone().unwrap(),
        password: auth.password.clone().unwrap(),
    }
}

async fn run(request: &CopyRequest) -> Result<CopyReport, copy::Error> {
    copy::copy_image(request, &Arc::new(Progress::default())).await
}

/// Formats an error with its whole chain of causes.
fn chain(error: &copy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Seeds a fixture into the plain registry and returns its repository.
fn seed_plain(fixture: &str, prefix: &str) -> String {
    let repository = unique_repository(prefix);
    seed(fixture, &env().registries.plain, &repository, "v1");
    repository
}

/// Pushes manifest bytes to the plain registry under `reference` and returns their digest.
async fn push_manifest(
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let host = &env().registries.plain.host;
    let response = reqwest::Client::new()
        .put(format!(
            "http://{host}/v2/{repository}/manifests/{reference}"
        ))
        .header("Content-Type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "manifest push failed: {body}");
    support::sha256(bytes)
}

/// Returns an index entry (descriptor) for a manifest of the plain registry.
async fn entry(
    repository: &str,
    digest: &str,
    media_type: &str,
    platform: serde_json::Value,
) -> serde_json::Value {
    let bytes = Probe::new(&env().registries.plain)
        .manifest(repository, digest)
        .await
        .expect("child manifest exists");
    serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": bytes.len(),
        "platform": platform,
    })
}

/// Returns the recorded Accept headers of the engine's manifest reads.
fn manifest_accepts(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter(|r| {
            r.header("user-agent")
                .unwrap_or_default()
                .starts_with("pma2docker/")
        })
        .filter(|r| r.path().contains("/manifests/") && r.method().as_str() != "PUT")
        .map(|r| r.header("accept").unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn fault_proxy_rules_apply() {
    let repository = seed_plain("single", "compat/proxy");
    let blob = fixtures().image("single").content_blobs()[1].clone();
    let registry = plain_proxy().await;
    // A second proxy in front of the first: requests pass both.
    let front = FaultProxy::start(&registry.url()).await;
    let http = reqwest::Client::new();
    let get = |path: String| http.get(format!("{}{path}", front.url())).send();

    // Skip and times: the second and third matches get 503, the others pass.
    let flaky = front.add(Rule::new("GET", "/v2/").skip(1).times(2).status(503));
    let statuses: Vec<u16> = futures::future::join_all((0..4).map(|_| get("/v2/".to_string())))
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 503, 503], "{statuses:?}");
    assert_eq!(flaky.matched(), 4);
    assert_eq!(flaky.applied(), 2);
    assert_eq!(
        registry.count("GET", "/v2/"),
        4,
        "the back proxy saw every request"
    );

    // Headers and body of a forwarded response.
    let path = format!("/v2/{repository}/manifests/v1");
    front.add(
        Rule::new("GET", &path)
            .times(1)
            .response_header("x-test", "yes")
            .remove_response_header("docker-content-digest")
            .body("replaced"),
    );
    let answer = get(path.clone()).await.unwrap();
    assert_eq!(answer.headers()["x-test"], "yes");
    assert!(answer.headers().get("docker-content-digest").is_none());
    assert_eq!(answer.text().await.unwrap(), "replaced");

    // A delay, and a fixed response that never reaches the registry.
    front.add(
        Rule::new("GET", "/slow")
            .delay(Duration::from_millis(300))
            .respond(204, &[], ""),
    );
    let started = Instant::now();
    assert_eq!(get("/slow".to_string()).await.unwrap().status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(registry.count("*", "/slow"), 0);

    // A body cut short: the client sees an error, not a short body.
    let blob_path = format!("/v2/{repository}/blobs/{}", blob.digest);
    front.add(Rule::new("GET", &blob_path).times(1).drop_after(1000));
    let answer = get(blob_path.clone()).await.unwrap();
    assert_eq!(answer.content_length(), Some(blob.size));
    assert!(
        answer.bytes().await.is_err(),
        "the body must end with an error"
    );
    let whole = get(blob_path).await.unwrap().bytes().await.unwrap();
    assert_eq!(whole.len() as u64, blob.size);

    // The registry builds upload locations for the host the client used.
    let started = http
        .post(format!("{}/v2/{repository}/blobs/uploads/", front.url()))
        .header("x-probe", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(&front.url()), "{location}");
    let recorded = front.requests();
    let post = recorded
        .iter()
        .find(|r| r.method().as_str() == "POST")
        .unwrap();
    assert_eq!(post.status, 202);
    assert_eq!(
        post.header("x-probe"),
        Some("1"),
        "request headers are recorded"
    );
}

// ---------------------------------------------------------------------------------------
// Reading the source
// ---------------------------------------------------------------------------------------

/// Builds a rule for a registry that serves a list or index only to clients that accept its type: a Docker
/// manifest list becomes the first platform's manifest, an OCI index becomes a 404.
fn down_converting_proxy_rule(
    list_digest: String,
    first_child: String,
    list_type: &'static str,
) -> Rule {
    Rule::new("*", "/v2/*/manifests/*")
        .when(move |head| {
            let accept = head.header("accept").unwrap_or_default();
            head.method.as_str() != "PUT" && !accept.contains(list_type)
        })
        .handle(move |exchange| {
            let list_digest = list_digest.clone();
            let first_child = first_child.clone();
            async move {
                let by_digest = exchange.head.path.ends_with(&list_digest);
                let is_tag = !exchange.head.path.contains("/manifests/sha256:");
                if list_type == OCI_INDEX && (is_tag || by_digest) {
                    return support::fault_proxy::response(
                        axum::http::StatusCode::NOT_FOUND,
                        &[("Content-Type", "application/json")],
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    );
                }
                if is_tag || by_digest {
                    let path = exchange
                        .head
                        .path
                        .rsplit_once("/manifests/")
                        .unwrap()
                        .0
                        .to_string();
                    let child = format!("{path}/manifests/{first_child}");
                    return exchange
                        .upstream
                        .send(
                            &exchange.head.method,
                            &child,
                            &exchange.head.headers,
                            axum::body::Body::empty(),
                        )
                        .await;
                }
                exchange.forward().await
            }
        })
}

#[tokio::test]
async fn list_without_accept_type_still_copied_whole() {
    for (fixture_name, list_type) in [
        ("multiarch-docker", DOCKER_LIST),
        ("multiarch-oci", OCI_INDEX),
    ] {
        let fixture = fixtures().image(fixture_name);
        let source_repository = seed_plain(fixture_name, "compat/downconvert");
        let proxy = plain_proxy().await;
        let rule = proxy.add(down_converting_proxy_rule(
            fixture.digest.clone(),
            fixture.platforms[0].digest.clone(),
            list_type,
        ));
        // The rule must be able to fire: a request without the list type is down-converted.
        let probe = reqwest::Client::new()
            .get(format!("{}/v2/{source_repository}/manifests/v1", proxy.url()))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
            .send()
            .await
            .unwrap();
        assert_ne!(
            support::sha256(&probe.bytes().await.unwrap()),
            fixture.digest,
            "{fixture_name}: the proxy must down-convert without the list type"
        );
        assert_eq!(rule.applied(), 1);

        let target_repository = unique_repository("compat/downconvert-dst");
        let source = format!("{}/{source_repository}:v1", proxy.host());
        let target = format!("{}/{target_repository}:v1", env().registries.plain.host);
        let report = run(&request(&source, &target, &[&proxy])).await.unwrap();

        assert_eq!(report.source_digest, fixture.digest, "{fixture_name}");
        assert_eq!(report.target_digest, fixture.digest, "{fixture_name}");
        assert_eq!(
            report.platforms.len(),
            fixture.platforms.len(),
            "{fixture_name}"
        );
        assert_eq!(
            rule.applied(),
            1,
            "{fixture_name}: the engine's requests were not down-converted"
        );
        let accepts = manifest_accepts(&proxy);
        assert!(!accepts.is_empty(), "{fixture_name}");
        for accept in accepts {
            for media_type in [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST] {
                assert!(
                    accept.contains(media_type),
                    "Accept {accept:?} lacks {media_type}"
                );
            }
        }
        assert_complete(&env().registries.plain, &target_repository, fixture_name).await;
    }
}

#[tokio::test]
async fn content_digest_header_missing_or_wrong_trusts_bytes() {
    let fixture = fixtures().image("multiarch-oci");
    let wrong = format!("sha256:{}", "e".repeat(64));
    for variant in ["missing", "wrong"] {
        let source_repository = seed_plain("multiarch-oci", "compat/dcd");
        let proxy = plain_proxy().await;
        let rule = Rule::new("*", "/v2/*/manifests/*");
        let rule = match variant {
            "missing" => rule.remove_response_header("docker-content-digest"),
            _ => rule.response_header("docker-content-digest", &wrong),
        };
        let handle = proxy.add(rule);
        let target_repository = unique_repository("compat/dcd-dst");
        let source = format!("{}/{source_repository}:v1", proxy.host());
        // The target goes through the proxy too, so its answers carry the same fault.
        let target = format!("{}/{target_repository}:v1", proxy.host());

        let report = run(&request(&source, &target, &[&proxy])).await.unwrap();
        assert_eq!(report.target_digest, fixture.digest, "{variant}");
        assert!(handle.applied() > 0, "{variant}");
        assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;

        // A digest-pinned source is checked against the bytes, whatever the header claims.
        let pinned = format!("{}/{source_repository}@{}", proxy.host(), fixture.digest);
        let report = run(&request(&pinned, &target, &[&proxy])).await.unwrap();
        assert_eq!(report.source_digest, fixture.digest, "{variant}");
    }
}

#[tokio::test]
async fn pinned_digest_mismatch_rejected() {
    let fixture = fixtures().image("multiarch-oci");
    let source_repository = seed_plain("multiarch-oci", "compat/pin");
    let other = fixtures().image("single");
    let other_repository = seed_plain("single", "compat/pin-other");
    let other_bytes = Probe::new(&env().registries.plain)
        .manifest(&other_repository, "v1")
        .await
        .unwrap();

    // The proxy answers the pinned digest with other bytes and a header that claims the pin.
    let proxy = plain_proxy().await;
    proxy.add(
        Rule::new(
            "GET",
            &format!("/v2/{source_repository}/manifests/{}", fixture.digest),
        )
        .respond(
            200,
            &[
                ("Content-Type", OCI_MANIFEST),
                ("Docker-Content-Digest", &fixture.digest),
            ],
            other_bytes.clone(),
        ),
    );
    let target_repository = unique_repository("compat/pin-dst");
    let pinned = format!("{}/{source_repository}:v1@{}", proxy.host(), fixture.digest);
    let target = format!("{}/{target_repository}:v1", env().registries.plain.host);

    let error = run(&request(&pinned, &target, &[&proxy]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{}", chain(&error));
    assert!(chain(&error).contains(&other.digest), "{}", chain(&error));
    let probe = Probe::new(&env().registries.plain);
    assert_eq!(probe.manifest_digest(&target_repository, "v1").await, None);
}

#[tokio::test]
async fn manifest_head_404_or_405_uses_get() {
    let fixture = fixtures().image("multiarch-docker");
    for status in [405u16, 404] {
        let source_repository = seed_plain("multiarch-docker", "compat/head");
        let proxy = plain_proxy().await;
        let head_rule = proxy.add(Rule::new("HEAD", "/v2/*/manifests/*").respond(status, &[], ""));
        let target_repository = unique_repository("compat/head-dst");
        let source = format!("{}/{source_repository}:v1", proxy.host());
        let target = format!("{}/{target_repository}:v1", proxy.host());

        let first = run(&request(&source, &target, &[&proxy])).await.unwrap();
        assert_eq!(first.target_digest, fixture.digest, "HEAD {status}");
        assert!(head_rule.applied() > 0, "HEAD {status}");
        assert_complete(
            &env().registries.plain,
            &target_repository,
            "multiarch-docker",
        )
        .await;

        // With the earlier digests given, a registry without HEAD still lets the copy see
        // that nothing changed. A registry that returns 404 to HEAD costs a full check.
        let mut again = request(&source, &target, &[&proxy]);
        again.previous = Some(copy::PreviousCopy {
            source_digest: first.source_digest.clone(),
            target_digest: first.target_digest.clone(),
        });
        let second = run(&again).await.unwrap();
        assert_eq!(second.target_digest, fixture.digest, "HEAD {status}");
        assert_eq!(second.blobs.copied, 0, "HEAD {status}");
        if status == 405 {
            assert!(second.unchanged, "HEAD 405");
        }
    }
}

#[tokio::test]
async fn error_bodies_empty_or_not_json() {
    let fixture = fixtures().image("single");
    let source_repository = seed_plain("single", "compat/body");
    let proxy = plain_proxy().await;
    // A 500 with an empty body on the first manifest GET is retried.
    let flaky = proxy.add(
        Rule::new("GET", "/v2/*/manifests/*")
            .times(1)
            .respond(500, &[], ""),
    );
    let target_repository = unique_repository("compat/body-dst");
    let source = format!("{}/{source_repository}:v1", proxy.host());
    let target = format!("{}/{target_repository}:v1", env().registries.plain.host);
    let report = run(&request(&source, &target, &[&proxy])).await.unwrap();
    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(flaky.applied(), 1);

    // A 404 with an HTML body is "not found".
    let html = "<html><body><h1>404 Not Found</h1></body></html>";
    proxy.add(Rule::new("*", "/v2/compat/missing/*").respond(
        404,
        &[("Content-Type", "text/html")],
        html,
    ));
    let missing = format!("{}/compat/missing:v1", proxy.host());
    let error = run(&request(&missing, &target, &[&proxy]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{}", chain(&error));

    // A 401 with a text body and no challenge is an authentication failure.
    proxy.add(Rule::new("*", "/v2/compat/locked/*").respond(
        401,
        &[("Content-Type", "text/plain")],
        "go away",
    ));
    let locked = format!("{}/compat/locked:v1", proxy.host());
    let error = run(&request(&locked, &target, &[&proxy]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{}", chain(&error));

    // A push rejected with an empty body is reported with its status.
    proxy.add(Rule::new("PUT", "/v2/compat/readonly-*/manifests/*").respond(400, &[], ""));
    let readonly = format!(
        "{}/{}:v1",
        proxy.host(),
        unique_repository("compat/readonly")
    );
    let error = run(&request(&source, &readonly, &[&proxy]))
        .await
        .unwrap_err();
    let message = chain(&error);
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("empty response body"), "{message}");
    assert!(!error.is_retryable(), "{message}");
}

#[tokio::test]
async fn blob_5xx_and_dropped_connection_retry_that_blob() {
    let fixture = fixtures().image("multiarch-oci");
    let source_repository = seed_plain("multiarch-oci", "compat/drop");
    let mut layers: Vec<_> = fixture
        .content_blobs()
        .into_iter()
        .filter(|b| b.size > 500_000)
        .collect();
    layers.sort_by_key(|b| b.digest.clone());
    let (dropped, failed) = (layers[0].digest.clone(), layers[1].digest.clone());

    let proxy = plain_proxy().await;
    let drop_rule = proxy.add(
        Rule::new("GET", &format!("/v2/*/blobs/{dropped}"))
            .times(1)
            .drop_after(100_000),
    );
    let fail_rule = proxy.add(
        Rule::new("GET", &format!("/v2/*/blobs/{failed}"))
            .times(1)
            .respond(
                503,
                &[("Content-Type", "text/html")],
                "<h1>upstream unavailable</h1>",
            ),
    );
    let target_repository = unique_repository("compat/drop-dst");
    let source = format!("{}/{source_repository}:v1", proxy.host());
    let target = format!("{}/{target_repository}:v1", env().registries.plain.host);

    let report = run(&request(&source, &target, &[&proxy])).await.unwrap();
    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(drop_rule.applied(), 1);
    assert_eq!(fail_rule.applied(), 1);
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;
    for blob in fixture.content_blobs() {
        let gets = proxy.count("GET", &format!("/v2/*/blobs/{}", blob.digest));
        let expected = if blob.digest == dropped || blob.digest == failed {
            2
        } else {
            1
        };
        assert_eq!(gets, expected, "GETs of blob {}", blob.digest);
    }
}

/// Formats a time `seconds_ahead` from now as an HTTP date, with the system's `date`.
fn http_date_in(seconds_ahead: u64) -> String {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds_ahead;
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{at}"), "+%a, %d %b %Y %H:%M:%S GMT"])
        .env("LC_ALL", "C")
        .output()
        .expect("failed to run date");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn rate_limit_retry_after_shared_across_copies() {
    // Both forms mean at least two seconds: an HTTP date has whole seconds, so three seconds
    // ahead is two seconds or more.
    let wait = Duration::from_secs(2);
    for variant in ["seconds", "HTTP date"] {
        let proxy = plain_proxy().await;
        let repository_a = seed_plain("multiarch-oci", "compat/limit-a");
        let repository_b = seed_plain("multiarch-oci", "compat/limit-b");
        let retry_after = match variant {
            "seconds" => "2".to_string(),
            _ => http_date_in(3),
        };
        let limited = proxy.add(Rule::new("GET", "/v2/*/manifests/*").times(1).respond(
            429,
            &[
                ("Retry-After", &retry_after),
                ("Content-Type", "text/plain"),
            ],
            "Too Many Requests. Slow down.",
        ));
        let plain = &env().registries.plain.host;
        let copy_a = request(
            &format!("{}/{repository_a}:v1", proxy.host()),
            &format!("{plain}/{}:v1", unique_repository("compat/limit-dst")),
            &[&proxy],
        );
        let copy_b = request(
            &format!("{}/{repository_b}:v1", proxy.host()),
            &format!("{plain}/{}:v1", unique_repository("compat/limit-dst")),
            &[&proxy],
        );

        let (result_a, result_b) = tokio::join!(run(&copy_a), run(&copy_b));
        result_a.unwrap();
        result_b.unwrap();
        assert_eq!(limited.applied(), 1, "{variant}");

        let requests = proxy.requests();
        let limited_at = requests.iter().find(|r| r.status == 429).unwrap().received;
        // Requests already on the way when the gate closed may arrive a moment later.
        let in_flight = Duration::from_millis(500);
        let early: Vec<String> = requests
            .iter()
            .filter(|r| r.received > limited_at + in_flight && r.received < limited_at + wait)
            .map(|r| format!("{} {}", r.method(), r.path()))
            .collect();
        assert!(
            early.is_empty(),
            "{variant}: sent during the wait: {early:?}"
        );
        for repository in [&repository_a, &repository_b] {
            let resumed = requests
                .iter()
                .any(|r| r.received >= limited_at + wait && r.path().contains(repository.as_str()));
            assert!(
                resumed,
                "{variant}: copy of {repository} did not go on after the wait"
            );
        }
    }
}

#[tokio::test]
async fn rate_limit_wait_beyond_limit_fails_clearly() {
    let proxy = plain_proxy().await;
    let repository = seed_plain("single", "compat/limit-long");
    proxy.add(Rule::new("GET", "/v2/*/manifests/*").respond(
        429,
        &[("Retry-After", "3600")],
        "come back in an hour",
    ));
    let source = format!("{}/{repository}:v1", proxy.host());
    let target = format!(
        "{}/{}:v1",
        env().registries.plain.host,
        unique_repository("compat/limit-long-dst")
    );
    let started = Instant::now();
    let error = run(&request(&source, &target, &[&proxy]))
        .await
        .unwrap_err();
    let message = chain(&error);
    assert!(started.elapsed() < Duration::from_secs(30), "{message}");
    assert!(message.contains("3600 s"), "{message}");
    assert!(!error.is_retryable(), "{message}");
}

#[tokio::test]
async fn blob_redirect_to_other_host_gets_no_credentials() {
    let fixture = fixtures().image("single");
    let source_repository = seed_plain("single", "compat/redirect");
    // The "object storage" host: another listener, in front of the same registry.
    let storage = plain_proxy().await;
    let registry = plain_proxy().await;
    let auth = registry.require_bearer(BearerPolicy {
        credentials: Some(("reader".to_string(), "reader-secret-7".to_string())),
        ..BearerPolicy::default()
    });
    let storage_url = storage.url();
    let redirects = registry.add(Rule::new("GET", "/v2/*/blobs/*").handle(move |exchange| {
        let location = format!("{storage_url}{}?X-Signature=abc", exchange.head.path);
        async move {
            response(
                StatusCode::TEMPORARY_REDIRECT,
                &[("Location", &location)],
                "",
            )
        }
    }));
    let target_repository = unique_repository("compat/redirect-dst");
    let source = format!("{}/{source_repository}:v1", registry.host());
    let target = format!("{}/{target_repository}:v1", env().registries.plain.host);
    let mut request = request(&source, &target, &[&registry, &storage]);
    request.source_credential = Some(Credential::Basic {
        username: "reader".to_string(),
        password: "reader-secret-7".to_string(),
    });

    let report = run(&request).await.unwrap();
    assert_eq!(report.target_digest, fixture.digest);
    assert_complete(&env().registries.plain, &target_repository, "single").await;

    // Every blob, the config included, came from the storage host, without credentials.
    let blob_count = fixture.content_blobs().len();
    assert!(
        redirects.applied() >= blob_count,
        "{} redirects",
        redirects.applied()
    );
    let downloads = storage.requests();
    assert!(downloads.len() >= blob_count);
    for download in &downloads {
        assert_eq!(
            download.header("authorization"),
            None,
            "{}",
            download.path()
        );
        assert_eq!(
            download.head.query_param("X-Signature").as_deref(),
            Some("abc")
        );
    }
    // The registry itself got the bearer token on the same requests.
    let with_token = registry
        .requests()
        .iter()
        .filter(|r| r.path().contains("/blobs/"))
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer "))
        })
        .count();
    assert!(
        with_token >= blob_count,
        "{with_token} blob requests with a token"
    );
    assert!(!auth.token_requests().is_empty());
}

// ---------------------------------------------------------------------------------------
// Tokens and mounts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_tokens_scoped_pull_source_push_target() {
    let source_repository = seed_plain("multiarch-oci", "compat/scope");
    let target_repository = unique_repository("compat/scope-dst");
    let source_registry = plain_proxy().await;
    let target_registry = plain_proxy().await;
    let source_auth = source_registry.require_bearer(BearerPolicy {
        credentials: Some(("reader".to_string(), "reader-secret".to_string())),
        ..BearerPolicy::default()
    });
    let target_auth = target_registry.require_bearer(BearerPolicy {
        credentials: Some(("writer".to_string(), "writer-secret".to_string())),
        ..BearerPolicy::default()
    });
    let source = format!("{}/{source_repository}:v1", source_registry.host());
    let target = format!("{}/{target_repository}:v1", target_registry.host());
    let mut request = request(&source, &target, &[&source_registry, &target_registry]);
    request.source_credential = Some(Credential::Basic {
        username: "reader".to_string(),
        password: "reader-secret".to_string(),
    });
    request.target_credential = Some(Credential::Basic {
        username: "writer".to_string(),
        password: "writer-secret".to_string(),
    });

    let report = run(&request).await.unwrap();
    assert_eq!(
        report.target_digest,
        fixtures().image("multiarch-oci").digest
    );
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;

    let source_requests = source_auth.token_requests();
    assert!(!source_requests.is_empty());
    for token_request in &source_requests {
        assert_eq!(
            token_request.scopes,
            [format!("repository:{source_repository}:pull")]
        );
        assert_eq!(token_request.service.as_deref(), Some(BEARER_SERVICE));
        assert_eq!(token_request.username.as_deref(), Some("reader"));
    }
    let target_requests = target_auth.token_requests();
    assert!(!target_requests.is_empty());
    for token_request in &target_requests {
        assert_eq!(
            token_request.scopes,
            [format!("repository:{target_repository}:pull,push")]
        );
        assert_eq!(token_request.username.as_deref(), Some("writer"));
    }
    // One token per side is enough for the whole copy.
    assert_eq!(source_requests.len(), 1);
    assert_eq!(target_requests.len(), 1);
}

#[tokio::test]
async fn expired_token_renewed_mid_copy() {
    let source_repository = seed_plain("multiarch-oci", "compat/expire");
    let target_repository = unique_repository("compat/expire-dst");
    let registry = plain_proxy().await;
    // Each token works for five requests, then answers 401 as an expired one would.
    let auth = registry.require_bearer(BearerPolicy {
        token_uses: Some(5),
        ..BearerPolicy::default()
    });
    let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
    let target = format!("{}/{target_repository}:v1", registry.host());

    let report = run(&request(&source, &target, &[&registry])).await.unwrap();
    assert_eq!(
        report.target_digest,
        fixtures().image("multiarch-oci").digest
    );
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;
    assert!(
        auth.token_requests().len() > 2,
        "{} tokens",
        auth.token_requests().len()
    );
    let expired = auth
        .rejected()
        .iter()
        .filter(|r| !r.ends_with("/v2/"))
        .count();
    assert!(expired > 1, "{expired} requests with an expired token");
}

#[tokio::test]
async fn mount_answered_202_copies_into_that_upload() {
    let fixture = fixtures().image("multiarch-oci");
    let source_repository = seed_plain("multiarch-oci", "compat/mount202");
    let target_repository = unique_repository("compat/mount202-dst");
    let registry = plain_proxy().await;
    // The registry opens an upload instead of mounting, as some do by policy.
    let refused = registry.add(
        Rule::new("POST", "/v2/*/blobs/uploads/")
            .when(|head| head.query_param("mount").is_some())
            .handle(|exchange| async move {
                let path = exchange.head.path.clone();
                exchange
                    .upstream
                    .send(
                        &exchange.head.method,
                        &path,
                        &exchange.head.headers,
                        exchange.body,
                    )
                    .await
            }),
    );
    let source = format!("{}/{source_repository}:v1", registry.host());
    let target = format!("{}/{target_repository}:v1", registry.host());

    let report = run(&request(&source, &target, &[&registry])).await.unwrap();
    let blob_count = fixture.content_blobs().len();
    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(report.blobs.mounted, 0);
    assert_eq!(report.blobs.copied as usize, blob_count);
    assert_eq!(refused.applied(), blob_count);
    // Each blob went into the upload that the mount request opened: no second POST.
    assert_eq!(registry.count("POST", "/v2/*/blobs/uploads/"), blob_count);
    assert_eq!(registry.count("PUT", "/v2/*/blobs/uploads/*"), blob_count);
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;
}

#[tokio::test]
async fn token_for_one_repository_copies_without_mount() {
    let fixture = fixtures().image("multiarch-oci");
    let source_repository = seed_plain("multiarch-oci", "compat/onerepo");
    let target_repository = unique_repository("compat/onerepo-dst");
    let registry = plain_proxy().await;
    let auth = registry.require_bearer(BearerPolicy {
        credentials: Some(("robot".to_string(), "robot-secret".to_string())),
        one_repository_per_token: true,
        ..BearerPolicy::default()
    });
    let source = format!("{}/{source_repository}:v1", registry.host());
    let target = format!("{}/{target_repository}:v1", registry.host());
    let mut request = request(&source, &target, &[&registry]);
    let credential = Credential::Basic {
        username: "robot".to_string(),
        password: "robot-secret".to_string(),
    };
    request.source_credential = Some(credential.clone());
    request.target_credential = Some(credential);

    let report = run(&request).await.unwrap();
    let blob_count = fixture.content_blobs().len();
    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(report.blobs.mounted, 0);
    assert_eq!(report.blobs.copied as usize, blob_count);
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;

    // The engine asked for both repositories in one token, as a mount needs.
    let both = auth.token_requests().into_iter().any(|r| {
        r.scopes
            .contains(&format!("repository:{target_repository}:pull,push"))
            && r.scopes
                .contains(&format!("repository:{source_repository}:pull"))
    });
    assert!(both, "{:?}", auth.token_requests());
    // After the refusal, later blobs did not try to mount again.
    let mounts = registry
        .requests()
        .iter()
        .filter(|r| r.method().as_str() == "POST" && r.head.query_param("mount").is_some())
        .count();
    assert!(mounts <= 2 * copy::DEFAULT_JOBS, "{mounts} mount requests");
}

// ---------------------------------------------------------------------------------------
// Writing the target
// ---------------------------------------------------------------------------------------

/// How the upload-session rewriter presents upload locations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LocationStyle {
    /// `http://proxy/sessions/ID?sig=…`
    Absolute,
    /// `/sessions/ID`, with no query.
    AbsolutePath,
    /// `session-ID?sig=…`, relative to the request URL.
    Relative,
    /// `http://other-host/sessions/ID?sig=…`, on a second listener.
    OtherHost,
}

#[derive(Clone, Copy, Debug)]
struct SessionOptions {
    style: LocationStyle,
    /// Answer PATCH without a `Location`, so the client must keep the one it has.
    patch_without_location: bool,
    /// Write `Range: bytes=0-N` in place of `0-N`.
    range_with_unit: bool,
    /// Status of the closing PUT (201 or 204).
    close_status: u16,
    /// `OCI-Chunk-Min-Length` of new sessions, if any.
    min_chunk: Option<usize>,
}

/// A signature the upload URLs carry; a request that lost it is rejected.
const SESSION_SIGNATURE: &str = "a/b=c";

/// Rewrites the registry's upload sessions into URLs of another shape, and maps requests to
/// them back to the registry's own session URLs.
#[derive(Clone, Default)]
struct Sessions {
    /// Session id → the registry's current upload path and query.
    upstream: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sessions {
    fn install(&self, registry: &FaultProxy, other: Option<&FaultProxy>, options: SessionOptions) {
        let registry_url = registry.url();
        let other_url = other.map(FaultProxy::url).unwrap_or_default();
        let base = move |options: &SessionOptions| match options.style {
            LocationStyle::OtherHost => other_url.clone(),
            _ => registry_url.clone(),
        };
        for proxy in std::iter::once(registry).chain(other) {
            let sessions = self.clone();
            let base = base.clone();
            proxy.add(Rule::new("*", "*session*").handle(move |exchange| {
                let sessions = sessions.clone();
                let base = base(&options);
                async move { sessions.serve(exchange, &base, options).await }
            }));
        }
        let sessions = self.clone();
        let base = base.clone();
        registry.add(
            Rule::new("POST", "/v2/*/blobs/uploads/")
                .when(|head| head.query_param("mount").is_none())
                .handle(move |exchange| {
                    let sessions = sessions.clone();
                    let base = base(&options);
                    async move {
                        let path = exchange.head.path_and_query();
                        let answer = exchange
                            .upstream
                            .send_raw(
                                &exchange.head.method,
                                &path,
                                &exchange.head.headers,
                                exchange.body,
                            )
                            .await
                            .unwrap();
                        let id = sessions
                            .count
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                            .to_string();
                        sessions.remember(&id, &answer);
                        let shown = session_location(&id, &base, options.style);
                        let min_chunk = options.min_chunk.unwrap_or(0).to_string();
                        let mut headers =
                            vec![("Location", shown.as_str()), ("Content-Length", "0")];
                        if options.min_chunk.is_some() {
                            headers.push(("OCI-Chunk-Min-Length", min_chunk.as_str()));
                        }
                        response(
                            StatusCode::from_u16(answer.status().as_u16()).unwrap(),
                            &headers,
                            "",
                        )
                    }
                }),
        );
    }

    /// Stores the upload location of a registry answer under `id` and returns it.
    fn remember(&self, id: &str, answer: &reqwest::Response) -> Option<String> {
        let location = answer.headers().get("location")?.to_str().ok()?;
        let url = reqwest::Url::parse(location).ok()?;
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        self.upstream
            .lock()
            .unwrap()
            .insert(id.to_string(), path.clone());
        Some(path)
    }

    async fn serve(
        &self,
        exchange: support::fault_proxy::Exchange,
        base: &str,
        options: SessionOptions,
    ) -> axum::response::Response {
        let head = exchange.head.clone();
        let id = head
            .path
            .rsplit(['/', '-'])
            .next()
            .unwrap_or_default()
            .to_string();
        let expects_signature = options.style != LocationStyle::AbsolutePath;
        if expects_signature && head.query_param("sig").as_deref() != Some(SESSION_SIGNATURE) {
            return response(
                StatusCode::BAD_REQUEST,
                &[],
                "upload URL lost its signature",
            );
        }
        let Some(mut upstream) = self.upstream.lock().unwrap().get(&id).cloned() else {
            return response(StatusCode::NOT_FOUND, &[], "no such upload session");
        };
        if let Some(digest) = head.query_param("digest") {
            let separator = if upstream.contains('?') { '&' } else { '?' };
            upstream = format!("{upstream}{separator}digest={}", digest.replace(':', "%3A"));
        }
        let answer = exchange
            .upstream
            .send_raw(&head.method, &upstream, &head.headers, exchange.body)
            .await
            .unwrap();
        let status = answer.status();
        let range = answer
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.remember(&id, &answer);
        let mut headers: Vec<(String, String)> = Vec::new();
        if head.method.as_str() == "PATCH" && status.is_success() {
            if !options.patch_without_location {
                headers.push((
                    "Location".into(),
                    session_location(&id, base, options.style),
                ));
            }
            if let Some(range) = range {
                let range = if options.range_with_unit {
                    format!("bytes={range}")
                } else {
                    range
                };
                headers.push(("Range".into(), range));
            }
        }
        let status = if head.method.as_str() == "PUT" && status == StatusCode::CREATED {
            StatusCode::from_u16(options.close_status).unwrap()
        } else {
            status
        };
        let body = answer.bytes().await.unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        response(status, &headers, body)
    }
}

fn session_location(id: &str, base: &str, style: LocationStyle) -> String {
    let signature = format!(
        "sig={}",
        SESSION_SIGNATURE.replace('/', "%2F").replace('=', "%3D")
    );
    match style {
        LocationStyle::Absolute | LocationStyle::OtherHost => {
            format!("{base}/sessions/{id}?{signature}")
        }
        LocationStyle::AbsolutePath => format!("/sessions/{id}"),
        LocationStyle::Relative => format!("session-{id}?{signature}"),
    }
}

#[tokio::test]
async fn upload_location_relative_absolute_or_with_query() {
    let styles = [
        LocationStyle::Absolute,
        LocationStyle::AbsolutePath,
        LocationStyle::Relative,
        LocationStyle::OtherHost,
    ];
    for style in styles {
        for mode in [copy::UploadMode::Streaming, copy::UploadMode::Chunked] {
            let source_repository = seed_plain("single", "compat/location");
            let target_repository = unique_repository("compat/location-dst");
            let registry = plain_proxy().await;
            let other = plain_proxy().await;
            let auth = registry.require_bearer(BearerPolicy::default());
            let sessions = Sessions::default();
            let options = SessionOptions {
                style,
                patch_without_location: false,
                range_with_unit: false,
                close_status: 201,
                min_chunk: None,
            };
            sessions.install(&registry, Some(&other), options);
            let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
            let target = format!("{}/{target_repository}:v1", registry.host());
            let mut request = request(&source, &target, &[&registry, &other]);
            request.upload_mode = mode;
            request.chunk_size = 256 * 1024;

            let report = run(&request)
                .await
                .unwrap_or_else(|error| panic!("{style:?} {mode:?}: {}", chain(&error)));
            let blob_count = fixtures().image("single").content_blobs().len();
            assert_eq!(
                report.blobs.copied as usize, blob_count,
                "{style:?} {mode:?}"
            );
            // Every blob went through an upload session of this style; a blob whose copy was
            // retried (a source connection closed under load) opens one more.
            let session_count = sessions.count.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                session_count >= blob_count,
                "{style:?} {mode:?}: {session_count} sessions"
            );
            assert_complete(&env().registries.plain, &target_repository, "single").await;
            assert!(!auth.token_requests().is_empty());
            if style == LocationStyle::OtherHost {
                let uploads = other.requests();
                assert!(uploads.len() >= blob_count, "{mode:?}");
                for upload in uploads {
                    assert_eq!(
                        upload.header("authorization"),
                        None,
                        "{mode:?} {}",
                        upload.path()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn chunked_upload_header_variants() {
    let source_repository = seed_plain("multiarch-oci", "compat/chunk");
    let target_repository = unique_repository("compat/chunk-dst");
    let registry = plain_proxy().await;
    let sessions = Sessions::default();
    sessions.install(
        &registry,
        None,
        SessionOptions {
            style: LocationStyle::AbsolutePath,
            patch_without_location: true,
            range_with_unit: true,
            close_status: 204,
            min_chunk: Some(300_000),
        },
    );
    let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
    let target = format!("{}/{target_repository}:v1", registry.host());
    // The registry's minimum chunk (300000 bytes) is above the requested 256 KiB, so it wins.
    let mut request = request(&source, &target, &[&registry]);
    request.upload_mode = copy::UploadMode::Chunked;
    request.chunk_size = 256 * 1024;
    let chunk_size = 300_000;

    let report = run(&request).await.unwrap();
    assert_eq!(
        report.target_digest,
        fixtures().image("multiarch-oci").digest
    );
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;

    let requests = registry.requests();
    let patches: Vec<_> = requests
        .iter()
        .filter(|r| r.method().as_str() == "PATCH")
        .collect();
    let expected: u64 = fixtures()
        .image("multiarch-oci")
        .content_blobs()
        .iter()
        .map(|b| b.size.div_ceil(chunk_size as u64))
        .sum();
    assert_eq!(patches.len() as u64, expected);
    let full_chunks = patches
        .iter()
        .filter(|p| p.header("content-length") == Some(chunk_size.to_string().as_str()))
        .count() as u64;
    let blob_count = fixtures().image("multiarch-oci").content_blobs().len() as u64;
    assert!(
        full_chunks >= expected - blob_count,
        "{full_chunks} PATCHes of the full chunk size"
    );
    for patch in &patches {
        let length: usize = patch.header("content-length").unwrap().parse().unwrap();
        assert!(length <= chunk_size, "PATCH of {length} bytes");
        assert!(patch.header("content-range").is_some());
    }
    // Chunked mode never sends a blob in its closing PUT.
    for put in requests
        .iter()
        .filter(|r| r.method().as_str() == "PUT" && r.path().contains("session"))
    {
        assert_eq!(put.header("content-length"), Some("0"));
    }
}

/// Rejects blob PUTs of more than `limit` bytes with 413, like a front proxy with a body
/// limit. With `drain`, it reads and drops the body first, as nginx does. Without, it
/// responds at once, and the client may see a broken connection in place of the 413.
fn body_limit_rule(limit: u64, drain: bool) -> Rule {
    Rule::new("PUT", "/v2/*/blobs/uploads/*")
        .when(move |head| {
            head.header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|length| length > limit)
        })
        .handle(move |exchange| async move {
            if drain {
                let mut body = exchange.body.into_data_stream();
                while futures::StreamExt::next(&mut body).await.is_some() {}
            }
            response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &[("Content-Type", "text/html")],
                "<html><body>413 Request Entity Too Large</body></html>",
            )
        })
}

#[tokio::test]
async fn large_blob_put_413_falls_back_to_chunks() {
    let fixture = fixtures().image("multiarch-oci");
    let limit: u64 = 200_000;
    let chunk_size = 128 * 1024;
    let large: Vec<_> = fixture
        .content_blobs()
        .into_iter()
        .filter(|b| b.size > limit)
        .collect();
    for drain in [true, false] {
        let source_repository = seed_plain("multiarch-oci", "compat/413");
        let target_repository = unique_repository("compat/413-dst");
        let registry = plain_proxy().await;
        let too_large = registry.add(body_limit_rule(limit, drain));
        let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
        let target = format!("{}/{target_repository}:v1", registry.host());
        let mut request = request(&source, &target, &[&registry]);
        request.chunk_size = chunk_size;

        let report = run(&request).await.unwrap();
        assert_eq!(report.target_digest, fixture.digest, "drain {drain}");
        assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;
        assert!(too_large.applied() >= 1, "drain {drain}");
        let requests = registry.requests();
        for patch in requests.iter().filter(|r| r.method().as_str() == "PATCH") {
            let length: usize = patch.header("content-length").unwrap().parse().unwrap();
            assert!(length <= chunk_size, "PATCH of {length} bytes");
        }
        let patched: u64 = requests
            .iter()
            .filter(|r| r.method().as_str() == "PATCH")
            .map(|r| r.header("content-length").unwrap().parse::<u64>().unwrap())
            .sum();
        let large_bytes: u64 = large.iter().map(|b| b.size).sum();
        assert_eq!(
            patched, large_bytes,
            "drain {drain}: every large blob went in chunks, once"
        );
        // Small blobs still went in one PUT each.
        for blob in fixture.content_blobs().iter().filter(|b| b.size <= limit) {
            let single = requests.iter().any(|r| {
                r.method().as_str() == "PUT"
                    && r.header("content-length") == Some(blob.size.to_string().as_str())
            });
            assert!(single, "blob {} of {} bytes", blob.digest, blob.size);
        }
        if drain {
            // After a 413, larger blobs go in chunks at once; only concurrent uploads that
            // started before the first 413 are rejected too.
            assert!(
                too_large.applied() <= large.len(),
                "{} rejected PUTs",
                too_large.applied()
            );
        }
    }
}

#[tokio::test]
async fn index_rejected_by_target_names_type() {
    let source_repository = seed_plain("multiarch-oci", "compat/noindex");
    let target_repository = unique_repository("compat/noindex-dst");
    let registry = plain_proxy().await;
    let body = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"media type application/vnd.oci.image.index.v1+json is not supported"}]}"#;
    let rejected = registry.add(
        Rule::new("PUT", "/v2/*/manifests/*")
            .when(|head| head.header("content-type") == Some(OCI_INDEX))
            .respond(400, &[("Content-Type", "application/json")], body),
    );
    let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
    let target = format!("{}/{target_repository}:v1", registry.host());

    let error = run(&request(&source, &target, &[&registry]))
        .await
        .unwrap_err();
    let message = chain(&error);
    assert_eq!(rejected.applied(), 1, "{message}");
    assert!(message.contains("rejected OCI image index"), "{message}");
    assert!(message.contains(OCI_INDEX), "{message}");
    assert!(message.contains("MANIFEST_INVALID"), "{message}");
    assert!(!error.is_retryable(), "{message}");
    // Nothing else was tried in its place.
    let other_types = registry
        .requests()
        .iter()
        .filter(|r| r.method().as_str() == "PUT" && r.header("content-type") == Some(DOCKER_LIST))
        .count();
    assert_eq!(other_types, 0);
    let probe = Probe::new(&env().registries.plain);
    assert_eq!(probe.manifest_digest(&target_repository, "v1").await, None);
}

#[tokio::test]
async fn immutable_tag_not_overwritten() {
    let existing = fixtures().image("single");
    let target_repository = unique_repository("compat/immutable");
    seed("single", &env().registries.plain, &target_repository, "v1");
    let source_repository = seed_plain("multiarch-oci", "compat/immutable-src");
    let registry = plain_proxy().await;
    let body = r#"{"errors":[{"code":"TAG_INVALID","message":"The image tag 'v1' already exists and cannot be overwritten because the repository is immutable."}]}"#;
    registry.add(
        Rule::new("PUT", &format!("/v2/{target_repository}/manifests/v1")).respond(
            400,
            &[("Content-Type", "application/json")],
            body,
        ),
    );
    let source = format!("{}/{source_repository}:v1", env().registries.plain.host);
    let target = format!("{}/{target_repository}:v1", registry.host());

    let error = run(&request(&source, &target, &[&registry]))
        .await
        .unwrap_err();
    let message = chain(&error);
    assert!(
        matches!(error, copy::Error::TagNotMoved { .. }),
        "{message}"
    );
    assert!(message.contains(&existing.digest), "{message}");
    assert!(message.contains("TAG_INVALID"), "{message}");
    assert!(message.contains("immutable"), "{message}");
    let probe = Probe::new(&env().registries.plain);
    assert_eq!(
        probe
            .manifest_digest(&target_repository, "v1")
            .await
            .as_deref(),
        Some(existing.digest.as_str()),
        "the tag must still point to the old image"
    );
}

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE_LAYER: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// Reads a manifest of the plain registry as JSON.
async fn manifest_json(repository: &str, reference: &str) -> serde_json::Value {
    let bytes = Probe::new(&env().registries.plain)
        .manifest(repository, reference)
        .await
        .expect("manifest exists");
    serde_json::from_slice(&bytes).unwrap()
}

/// Serves the manifests of `repository` from memory: PUT stores them, GET and HEAD return
/// them. It is a registry that accepts manifests with foreign-layer URLs, which the test
/// registry rejects (distribution does unless its `validation.manifests.urls` settings allow
/// them).
fn manifests_in_memory(proxy: &FaultProxy, repository: &str) {
    type Store = std::collections::HashMap<String, (bytes::Bytes, String)>;
    let store: Arc<std::sync::Mutex<Store>> = Arc::default();
    proxy.add(
        Rule::new("*", &format!("/v2/{repository}/manifests/*")).handle(move |exchange| {
            let store = store.clone();
            async move {
                let name = exchange.head.path.rsplit('/').next().unwrap().to_string();
                if exchange.head.method.as_str() == "PUT" {
                    let media_type = exchange
                        .head
                        .header("content-type")
                        .unwrap_or_default()
                        .to_string();
                    let body = axum::body::to_bytes(exchange.body, 4 << 20).await.unwrap();
                    let digest = support::sha256(&body);
                    let mut store = store.lock().unwrap();
                    store.insert(name, (body.clone(), media_type.clone()));
                    store.insert(digest.clone(), (body, media_type));
                    return response(
                        StatusCode::CREATED,
                        &[("Docker-Content-Digest", &digest)],
                        "",
                    );
                }
                let found = store.lock().unwrap().get(&name).cloned();
                match found {
                    Some((body, media_type)) => {
                        let digest = support::sha256(&body);
                        response(
                            StatusCode::OK,
                            &[
                                ("Content-Type", &media_type),
                                ("Docker-Content-Digest", &digest),
                            ],
                            body,
                        )
                    }
                    None => response(
                        StatusCode::NOT_FOUND,
                        &[("Content-Type", "application/json")],
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    ),
                }
            }
        }),
    );
}

#[tokio::test]
async fn foreign_layers_skipped_by_default_copied_on_request() {
    let source_repository = seed_plain("single", "compat/foreign");
    let single = manifest_json(&source_repository, "v1").await;
    let foreign_bytes = b"a layer that only its vendor may distribute\n".repeat(2000);
    let foreign_digest = support::sha256(&foreign_bytes);
    // The download host of the foreign layer.
    let vendor = plain_proxy().await;
    let downloads = vendor.add(Rule::new("GET", "/layers/*").respond(
        200,
        &[("Content-Type", "application/octet-stream")],
        foreign_bytes.clone(),
    ));
    let url = format!("{}/layers/{foreign_digest}", vendor.url());
    let probe = Probe::new(&env().registries.plain);

    // A Docker manifest with a foreign layer, and an OCI one with a non-distributable layer.
    let kinds = [
        (
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            DOCKER_LAYER,
            DOCKER_FOREIGN_LAYER,
        ),
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            OCI_NONDISTRIBUTABLE_LAYER,
        ),
    ];
    for (manifest_type, config_type, layer_type, foreign_type) in kinds {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": single["config"]["digest"], "size": single["config"]["size"]},
            "layers": [
                {"mediaType": layer_type, "digest": single["layers"][0]["digest"], "size": single["layers"][0]["size"]},
                {"mediaType": foreign_type, "digest": foreign_digest, "size": foreign_bytes.len(), "urls": [url]},
            ],
        });
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        let digest = support::sha256(&bytes);
        // The source registry serves the manifest and has every blob but the foreign one. It
        // wants tokens, to show that the download host gets none.
        let registry = plain_proxy().await;
        registry.require_bearer(BearerPolicy::default());
        registry.add(
            Rule::new("*", &format!("/v2/{source_repository}/manifests/foreign")).respond(
                200,
                &[("Content-Type", manifest_type)],
                bytes.clone(),
            ),
        );
        let source = format!("{}/{source_repository}:foreign", registry.host());

        let skipped_repository = unique_repository("compat/foreign-skip");
        manifests_in_memory(&registry, &skipped_repository);
        let skip = request(
            &source,
            &format!("{}/{skipped_repository}:v1", registry.host()),
            &[&registry],
        );
        let before = downloads.applied();
        let report = run(&skip)
            .await
            .unwrap_or_else(|e| panic!("{manifest_type}: {}", chain(&e)));
        assert_eq!(report.target_digest, digest, "{manifest_type}");
        assert_eq!(report.blobs.foreign, 1, "{manifest_type}");
        assert_eq!(
            report.blobs.copied + report.blobs.mounted,
            2,
            "{manifest_type}"
        );
        assert_eq!(
            downloads.applied(),
            before,
            "{manifest_type}: skipping downloads nothing"
        );
        assert_eq!(
            probe
                .blob_digest(&skipped_repository, &foreign_digest)
                .await,
            None
        );

        let copied_repository = unique_repository("compat/foreign-copy");
        manifests_in_memory(&registry, &copied_repository);
        let mut copy_all = request(
            &source,
            &format!("{}/{copied_repository}:v1", registry.host()),
            &[&registry, &vendor],
        );
        copy_all.foreign_layers = copy::ForeignLayers::Copy;
        let report = run(&copy_all)
            .await
            .unwrap_or_else(|e| panic!("{manifest_type}: {}", chain(&e)));
        assert_eq!(report.target_digest, digest, "{manifest_type}");
        assert_eq!(report.blobs.foreign, 0, "{manifest_type}");
        assert_eq!(
            report.blobs.copied + report.blobs.mounted,
            3,
            "{manifest_type}"
        );
        assert_eq!(downloads.applied(), before + 1, "{manifest_type}");
        assert_eq!(
            probe.blob_digest(&copied_repository, &foreign_digest).await,
            Some((foreign_digest.clone(), foreign_bytes.len() as u64))
        );

        // A registry that does not allow URLs in manifests names the reason, and the copy fails.
        let strict = format!(
            "{}/{}:v1",
            env().registries.plain.host,
            unique_repository("compat/foreign-strict")
        );
        let error = run(&request(&source, &strict, &[&registry]))
            .await
            .unwrap_err();
        assert!(
            chain(&error).contains("invalid URL on layer"),
            "{}",
            chain(&error)
        );
    }
    for download in vendor.requests() {
        assert_eq!(download.header("authorization"), None);
    }
}

#[tokio::test]
async fn windows_os_version_entries_kept_apart() {
    let oci = fixtures().image("multiarch-oci");
    let repository = seed_plain("multiarch-oci", "compat/windows");
    let (old, new) = ("10.0.17763.5458", "10.0.20348.2227");
    // Children of the seeded index stand in for Windows images of two OS versions.
    let entries = vec![
        entry(
            &repository,
            &oci.platforms[0].digest,
            OCI_MANIFEST,
            serde_json::json!({"os": "windows", "architecture": "amd64", "os.version": old}),
        )
        .await,
        entry(
            &repository,
            &oci.platforms[1].digest,
            OCI_MANIFEST,
            serde_json::json!({"os": "windows", "architecture": "amd64", "os.version": new}),
        )
        .await,
        entry(
            &repository,
            &oci.platforms[2].digest,
            OCI_MANIFEST,
            serde_json::json!({"os": "linux", "architecture": "amd64"}),
        )
        .await,
    ];
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    let digest = push_manifest(&repository, "windows", OCI_INDEX, &bytes).await;
    let source = format!("{}/{repository}:windows", env().registries.plain.host);
    let target = |tag: &str| {
        format!(
            "{}/{}:{tag}",
            env().registries.plain.host,
            unique_repository("compat/windows-dst")
        )
    };

    let report = run(&request(&source, &target("all"), &[])).await.unwrap();
    assert_eq!(report.target_digest, digest);
    let platforms: Vec<&str> = report
        .platforms
        .iter()
        .map(|p| p.platform.as_str())
        .collect();
    assert_eq!(
        platforms,
        [
            format!("windows({old})/amd64"),
            format!("windows({new})/amd64"),
            "linux/amd64".to_string()
        ]
    );

    // A filter without an OS version keeps every version.
    let mut both = request(&source, &target("windows"), &[]);
    both.platforms = vec!["windows/amd64".parse().unwrap()];
    let report = run(&both).await.unwrap();
    assert_eq!(report.platforms.len(), 2);
    assert!(report.index_rewritten);

    // A filter with one keeps that version only.
    let one_target = target("ltsc2022");
    let mut one = request(&source, &one_target, &[]);
    one.platforms = vec![format!("windows({new})/amd64").parse().unwrap()];
    let report = run(&one).await.unwrap();
    assert_eq!(report.platforms.len(), 1);
    assert_eq!(
        report.platforms[0].platform,
        format!("windows({new})/amd64")
    );
    let (repository, tag) = one_target
        .split_once('/')
        .unwrap()
        .1
        .rsplit_once(':')
        .unwrap();
    let copied = manifest_json(repository, tag).await;
    let kept = copied["manifests"].as_array().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["platform"]["os.version"], new);
}

#[tokio::test]
async fn duplicate_child_digests_pushed_once() {
    let oci = fixtures().image("multiarch-oci");
    let repository = seed_plain("multiarch-oci", "compat/dup");
    let amd64 = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let arm64 = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let twice = &oci.platforms[0].digest;
    let entries = vec![
        entry(&repository, twice, OCI_MANIFEST, amd64.clone()).await,
        entry(&repository, twice, OCI_MANIFEST, amd64).await,
        entry(&repository, &oci.platforms[1].digest, OCI_MANIFEST, arm64).await,
    ];
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    let digest = push_manifest(&repository, "dup", OCI_INDEX, &bytes).await;
    let registry = plain_proxy().await;
    let target_repository = unique_repository("compat/dup-dst");
    let source = format!("{}/{repository}:dup", registry.host());
    let target = format!("{}/{target_repository}:v1", registry.host());

    let report = run(&request(&source, &target, &[&registry])).await.unwrap();
    assert_eq!(report.target_digest, digest);
    assert_eq!(report.manifests.pushed, 3, "two children and the index");
    assert_eq!(
        registry.count("GET", &format!("/v2/*/manifests/{twice}")),
        1
    );
    assert_eq!(
        registry.count("PUT", &format!("/v2/*/manifests/{twice}")),
        1
    );
    let copied = Probe::new(&env().registries.plain)
        .manifest(&target_repository, "v1")
        .await
        .unwrap();
    assert_eq!(copied.as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn mixed_docker_and_oci_children_keep_types() {
    let mixed = fixtures().image("mixed");
    let repository = seed_plain("mixed", "compat/mixed");
    let children: Vec<_> = mixed
        .manifests
        .iter()
        .filter(|m| m.digest != mixed.digest)
        .collect();
    assert!(children.iter().any(|c| c.media_type == DOCKER_MANIFEST));
    assert!(children.iter().any(|c| c.media_type == OCI_MANIFEST));
    // The same children under a Docker manifest list, the other way round.
    let mut entries = Vec::new();
    for (child, architecture) in children.iter().zip(["amd64", "arm64"]) {
        let platform = serde_json::json!({"os": "linux", "architecture": architecture});
        entries.push(entry(&repository, &child.digest, &child.media_type, platform).await);
    }
    let list =
        serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries});
    let list_bytes = serde_json::to_vec_pretty(&list).unwrap();
    let list_digest = push_manifest(&repository, "list", DOCKER_LIST, &list_bytes).await;

    for (tag, expected) in [("v1", mixed.digest.clone()), ("list", list_digest)] {
        let registry = plain_proxy().await;
        let target_repository = unique_repository("compat/mixed-dst");
        let source = format!("{}/{repository}:{tag}", env().registries.plain.host);
        let target = format!("{}/{target_repository}:v1", registry.host());
        let report = run(&request(&source, &target, &[&registry])).await.unwrap();
        assert_eq!(report.target_digest, expected, "{tag}");
        for child in &children {
            let put = registry
                .requests()
                .into_iter()
                .find(|r| r.method().as_str() == "PUT" && r.path().ends_with(&child.digest))
                .unwrap_or_else(|| panic!("{tag}: child {} not pushed", child.digest));
            assert_eq!(
                put.header("content-type"),
                Some(child.media_type.as_str()),
                "{tag}"
            );
        }
    }
}

#[tokio::test]
async fn oversized_manifest_rejected_before_read() {
    const BODY: usize = 64 * 1024 * 1024;
    for with_length in [true, false] {
        let registry = plain_proxy().await;
        let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = produced.clone();
        registry.add(
            Rule::new("GET", "/v2/compat/huge/manifests/*").handle(move |_| {
                let counter = counter.clone();
                async move {
                    let chunks = futures::stream::unfold(0usize, move |sent| {
                        let counter = counter.clone();
                        async move {
                            if sent >= BODY {
                                return None;
                            }
                            let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
                            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                            Some((Ok::<_, std::io::Error>(chunk), sent + 64 * 1024))
                        }
                    });
                    let mut answer =
                        axum::response::Response::new(axum::body::Body::from_stream(chunks));
                    let headers = answer.headers_mut();
                    headers.insert("content-type", OCI_MANIFEST.parse().unwrap());
                    if with_length {
                        headers.insert("content-length", BODY.to_string().parse().unwrap());
                    }
                    answer
                }
            }),
        );
        let source = format!("{}/compat/huge:v1", registry.host());
        let target = format!(
            "{}/{}:v1",
            env().registries.plain.host,
            unique_repository("compat/huge-dst")
        );

        let error = run(&request(&source, &target, &[&registry]))
            .await
            .unwrap_err();
        let message = chain(&error);
        assert!(
            matches!(error, copy::Error::ManifestTooLarge { .. }),
            "{message}"
        );
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        if with_length {
            assert!(message.contains(&BODY.to_string()), "{message}");
        }
        // Give the server a moment to notice the closed connection, then check how much of
        // the body it produced: a few MiB of socket buffers at most, not the whole body.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let produced = produced.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            produced < 16 * 1024 * 1024,
            "with length {with_length}: {produced} bytes produced"
        );
    }
}

#[tokio::test]
async fn references_registries_reject_fail_early() {
    let host = &env().registries.plain.host;
    let bad = [
        format!("{host}/Upper/app:v1"),
        format!("{host}/app:bad+tag"),
        format!("{host}/app:{}", "t".repeat(129)),
        format!("{host}/a___b:v1"),
        format!("{host}/app@sha256:{}", "a".repeat(63)),
        format!("{host}/app@sha256:{}", "A".repeat(64)),
        format!("{host}/app@md5:{}", "a".repeat(32)),
        format!("{host}/app@sha512:{}", "a".repeat(64)),
        format!("{host}/{}:v1", "a".repeat(256)),
    ];
    for text in &bad {
        let error = text.parse::<copy::ImageRef>().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{text}: {error}");
    }
    for good in [
        format!("{host}/a__b/c-d.e_f:v1.0-rc_1"),
        format!("{host}/app@sha512:{}", "a".repeat(128)),
    ] {
        good.parse::<copy::ImageRef>()
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }

    // A manifest that names an invalid digest is rejected before the digest reaches a URL.
    let registry = plain_proxy().await;
    let evil = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:../../../other/blobs/x","size":1}}]}}"#,
        "a".repeat(64)
    );
    registry.add(Rule::new("GET", "/v2/compat/evil/manifests/v1").respond(
        200,
        &[("Content-Type", OCI_MANIFEST)],
        evil,
    ));
    let target = format!("{host}/{}:v1", unique_repository("compat/evil-dst"));
    let error = run(&request(
        &format!("{}/compat/evil:v1", registry.host()),
        &target,
        &[&registry],
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, copy::Error::InvalidManifest { .. }),
        "{}",
        chain(&error)
    );
    assert_eq!(
        registry.requests().len(),
        1,
        "only the manifest was requested"
    );

    // A registry that rejects a name says why, and it is not "not found".
    let body = r#"{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}"#;
    registry.add(Rule::new("*", "/v2/compat/reserved/*").respond(
        400,
        &[("Content-Type", "application/json")],
        body,
    ));
    let error = run(&request(
        &format!("{}/compat/reserved:v1", registry.host()),
        &target,
        &[&registry],
    ))
    .await
    .unwrap_err();
    let message = chain(&error);
    assert_ne!(error.kind(), ErrorKind::NotFound, "{message}");
    assert!(message.contains("NAME_INVALID"), "{message}");
}

#[tokio::test]
async fn sha512_pinned_source_verified() {
    use sha2::Digest;
    let fixture = fixtures().image("multiarch-oci");
    let repository = seed_plain("multiarch-oci", "compat/sha512");
    let bytes = Probe::new(&env().registries.plain)
        .manifest(&repository, &fixture.digest)
        .await
        .unwrap();
    let sha512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&bytes)));
    let other = format!(
        "sha512:{}",
        hex::encode(sha2::Sha512::digest(b"other bytes"))
    );
    // The test registry keeps sha256 digests only, so the proxy serves the manifest for
    // sha512 references. The other digest gets the same bytes, which do not match it.
    let registry = plain_proxy().await;
    let sha256 = fixture.digest.clone();
    let mapped = registry.add(
        Rule::new("*", "/v2/*/manifests/sha512:*").handle(move |exchange| {
            let sha256 = sha256.clone();
            async move {
                let (repository_path, _) = exchange.head.path.rsplit_once("/manifests/").unwrap();
                let path = format!("{repository_path}/manifests/{sha256}");
                exchange
                    .upstream
                    .send(
                        &exchange.head.method,
                        &path,
                        &exchange.head.headers,
                        axum::body::Body::empty(),
                    )
                    .await
            }
        }),
    );
    let target_repository = unique_repository("compat/sha512-dst");
    let target = format!("{}/{target_repository}:v1", env().registries.plain.host);

    let pinned = format!("{}/{repository}@{sha512}", registry.host());
    let report = run(&request(&pinned, &target, &[&registry])).await.unwrap();
    assert!(mapped.applied() >= 1);
    assert_eq!(report.source_digest, sha512);
    let copied = Probe::new(&env().registries.plain)
        .manifest(&target_repository, "v1")
        .await
        .unwrap();
    assert_eq!(copied, bytes);
    assert_complete(&env().registries.plain, &target_repository, "multiarch-oci").await;

    let wrong = format!("{}/{repository}@{other}", registry.host());
    let error = run(&request(&wrong, &target, &[&registry]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DigestMismatch, "{}", chain(&error));
    assert!(chain(&error).contains(&sha512), "{}", chain(&error));
}

// ---------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------

#[test]
fn docker_hub_aliases_share_credentials() {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("hub-user:hub-secret-3");
    let keys = [
        "https://index.docker.io/v1/",
        "index.docker.io",
        "registry-1.docker.io",
        "docker.io",
        "https://registry-1.docker.io/v2/",
    ];
    let hub_images = [
        "nginx",
        "docker.io/library/nginx:1",
        "index.docker.io/team/app",
        "registry-1.docker.io/team/app:v2",
    ];
    let expected = Credential::Basic {
        username: "hub-user".to_string(),
        password: "hub-secret-3".to_string(),
    };
    for key in keys {
        let json = format!(r#"{{"auths":{{"{key}":{{"auth":"{encoded}"}}}}}}"#);
        let config = copy::DockerConfig::parse(json.as_bytes(), "config.json").unwrap();
        for image in hub_images {
            let image: copy::ImageRef = image.parse().unwrap();
            assert_eq!(
                config.credential_for(&image),
                Some(&expected),
                "key {key}, image {image}"
            );
        }
        let elsewhere: copy::ImageRef = "ghcr.io/team/app".parse().unwrap();
        assert_eq!(config.credential_for(&elsewhere), None, "key {key}");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hub-secret-3"), "{shown}");
    }
}

#[tokio::test]
async fn auth_failure_never_reported_as_not_found() {
    let source_repository = unique_repository("compat/private");
    seed("single", &env().registries.auth, &source_repository, "v1");
    let plain = &env().registries.plain.host;
    let target = || format!("{plain}/{}:v1", unique_repository("compat/private-dst"));

    // A registry that hides private repositories: anonymous requests get 404, while /v2/
    // requests credentials.
    let hiding = auth_proxy().await;
    let hidden = hiding.add(
        Rule::new("*", "/v2/*/*")
            .when(|head| head.header("authorization").is_none())
            .respond(
                404,
                &[("Content-Type", "application/json")],
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            ),
    );
    let source = format!("{}/{source_repository}:v1", hiding.host());
    let mut with_credentials = request(&source, &target(), &[&hiding]);
    with_credentials.source_credential = Some(auth_credential());
    let report = run(&with_credentials).await.unwrap();
    assert_eq!(report.target_digest, fixtures().image("single").digest);
    assert_eq!(
        hidden.applied(),
        0,
        "credentials went with the first request"
    );

    let mut wrong_password = request(&source, &target(), &[&hiding]);
    wrong_password.source_credential = Some(Credential::Basic {
        username: env().registries.auth.username.clone().unwrap(),
        password: "wrong-password-5".to_string(),
    });
    let error = run(&wrong_password).await.unwrap_err();
    let message = chain(&error);
    assert_eq!(error.kind(), ErrorKind::Authentication, "{message}");
    assert!(!message.contains("wrong-password-5"), "{message}");
    assert!(!format!("{error:?}").contains("wrong-password-5"));

    // A token server that refuses the credentials.
    let token_registry = plain_proxy().await;
    let auth = token_registry.require_bearer(BearerPolicy {
        credentials: Some(("robot".to_string(), "robot-secret-9".to_string())),
        ..BearerPolicy::default()
    });
    let plain_repository = seed_plain("single", "compat/private-token");
    let source = format!("{}/{plain_repository}:v1", token_registry.host());
    let mut refused = request(&source, &target(), &[&token_registry]);
    refused.source_credential = Some(Credential::Basic {
        username: "robot".to_string(),
        password: "not-the-secret-4".to_string(),
    });
    let error = run(&refused).await.unwrap_err();
    let message = chain(&error);
    assert_eq!(error.kind(), ErrorKind::Authentication, "{message}");
    assert!(!message.contains("not-the-secret-4"), "{message}");
    assert!(auth.token_requests().iter().all(|r| !r.issued));

    // With the right secret the tokens work, and none of them shows up in a later error.
    let mut accepted = request(&source, &target(), &[&token_registry]);
    accepted.source_credential = Some(Credential::Basic {
        username: "robot".to_string(),
        password: "robot-secret-9".to_string(),
    });
    token_registry.add(Rule::new("PUT", "/v2/*/manifests/*").respond(
        400,
        &[],
        "read-only registry",
    ));
    let readonly_target = format!(
        "{}/{}:v1",
        token_registry.host(),
        unique_repository("compat/ro")
    );
    let mut readonly = request(&source, &readonly_target, &[&token_registry]);
    readonly.source_credential = accepted.source_credential.clone();
    readonly.target_credential = accepted.source_credential.clone();
    let error = run(&readonly).await.unwrap_err();
    let debug = format!("{error:?} {}", chain(&error));
    for token in auth.issued_tokens() {
        assert!(!debug.contains(&token), "token leaked: {debug}");
    }
    assert!(!debug.contains("robot-secret-9"), "{debug}");
    run(&accepted).await.unwrap();

    // A 404 whose error code says access was denied.
    let denying = plain_proxy().await;
    denying.add(Rule::new("*", "/v2/*/manifests/*").respond(
        404,
        &[("Content-Type", "application/json")],
        r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
    ));
    let source = format!("{}/{plain_repository}:v1", denying.host());
    let error = run(&request(&source, &target(), &[&denying]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication, "{}", chain(&error));
}
