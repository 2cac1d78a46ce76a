//! Property tests over the parsers that read untrusted input: image references and platform
//! strings from users, manifests from registries, and Docker config JSON from Secrets.
//!
//! Each property runs 256 cases by default. For a long run, raise the count:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use base64::Engine;
use pma2docker::copy::manifest::parse;
use pma2docker::copy::{DockerConfig, ImageRef, PlatformFilter};
use proptest::prelude::*;

/// Arbitrary JSON values up to a small depth, biased towards manifest-like keys.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        let key = prop_oneof![
            Just("mediaType".to_string()),
            Just("schemaVersion".to_string()),
            Just("manifests".to_string()),
            Just("config".to_string()),
            Just("layers".to_string()),
            Just("digest".to_string()),
            Just("size".to_string()),
            Just("platform".to_string()),
            Just("fsLayers".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn reference_parse_never_panics(text in ".{0,80}") {
        let _ = text.parse::<ImageRef>();
    }

    #[test]
    fn reference_display_round_trips(
        host in "[a-z]{1,8}\\.example(:[0-9]{2,5})?",
        path in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
    ) {
        let text = format!("{host}/{path}:{tag}");
        let parsed: ImageRef = text.parse().unwrap();
        prop_assert_eq!(parsed.to_string(), text.clone());
        let again: ImageRef = parsed.to_string().parse().unwrap();
        prop_assert_eq!(again, parsed);
    }

    #[test]
    fn platform_parse_never_panics(text in ".{0,40}") {
        if let Ok(filter) = text.parse::<PlatformFilter>() {
            prop_assert_eq!(filter.to_string(), text);
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes, None, "fuzz");
    }

    #[test]
    fn manifest_parse_never_panics_on_json(value in json_value(), hint in prop::option::of(".{0,20}")) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let _ = parse(&bytes, hint.as_deref(), "fuzz");
    }

    #[test]
    fn docker_config_errors_hide_secrets(
        key in "[a-z0-9.:/]{0,20}",
        password in "[A-Za-z0-9]{12,24}",
        cut in 0usize..200,
        encode in any::<bool>(),
    ) {
        let secret = format!("secret{password}");
        let entry = if encode {
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
            format!(r#"{{"auth":"{pair}"}}"#)
        } else {
            format!(r#"{{"username":"user","password":"{secret}"}}"#)
        };
        let json = format!(r#"{{"auths":{{"{key}":{entry}}}}}"#);
        // Cutting the document at any point must give an error that does not echo the secret.
        let truncated = &json.as_bytes()[..cut.min(json.len())];
        for input in [json.as_bytes(), truncated] {
            if let Err(error) = DockerConfig::parse(input, "fuzz") {
                let message = error.to_string();
                prop_assert!(!message.contains(&secret), "{}", message);
                prop_assert!(!message.contains(&password), "{}", message);
            }
        }
    }
}
