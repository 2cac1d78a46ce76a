//! Registry behaviours that differ from the distribution specification's happy path, each
//! reproduced with the fault proxy in front of a real registry.

mod support;

use support::env;
use support::fault_proxy::{FaultProxy, Rule};

#[tokio::test]
async fn proxy_forwards_and_counts() {
    let env = env();
    let proxy = FaultProxy::start(&format!("http://{}", env.registries.plain.host)).await;
    let handle = proxy.add(Rule::new("GET", "/v2/").status(418));
    let response = reqwest::get(format!("{}/v2/", proxy.url())).await.unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(handle.applied(), 1);
    assert_eq!(proxy.count("GET", "/v2/"), 1);
}
