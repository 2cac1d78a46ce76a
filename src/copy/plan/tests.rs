use super::*;
use crate::copy::manifest::{OCI_INDEX, OCI_MANIFEST, Parsed, parse};

/// Returns a valid digest made from a label, for blobs that are never read.
fn fake(label: &str) -> String {
    sha256_digest(label.as_bytes())
}

/// Builds an image node whose bytes name its platform, so each digest differs. `layer` is a
/// label for the layer's digest.
fn image(platform: &str, layer: &str) -> Node {
    let config = fake(&format!("c-{platform}"));
    let layer = fake(layer);
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":
        "application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
        "digest":"{layer}","size":10}}]}}"#
    ));
    let (media_type, parsed) = parse(&bytes, None, "test").unwrap();
    let Parsed::Image { config, layers, .. } = parsed else {
        unreachable!()
    };
    let mut blobs = vec![*config];
    blobs.extend(layers);
    Node {
        digest: sha256_digest(&bytes),
        media_type,
        bytes,
        content: Content::Image { blobs },
    }
}

fn entry_json(node: &Node, platform: Option<&str>, annotations: &str) -> String {
    let platform = match platform {
        Some(text) => {
            let parts: Vec<&str> = text.split('/').collect();
            let variant = parts
                .get(2)
                .map(|v| format!(r#","variant":"{v}""#))
                .unwrap_or_default();
            format!(
                r#","platform":{{"os":"{}","architecture":"{}"{variant}}}"#,
                parts[0], parts[1]
            )
        }
        None => String::new(),
    };
    format!(
        r#"{{"mediaType":"{}","digest":"{}","size":{}{platform}{annotations}}}"#,
        node.media_type,
        node.digest,
        node.bytes.len()
    )
}

fn index(entries: Vec<(Node, Option<&str>, String)>) -> Node {
    let json: Vec<String> = entries
        .iter()
        .map(|(node, platform, extra)| entry_json(node, *platform, extra))
        .collect();
    let bytes = Bytes::from(format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{OCI_INDEX}\",\n   \"manifests\": [{}]}}\n",
        json.join(",\n")
    ));
    let (media_type, parsed) = parse(&bytes, None, "test").unwrap();
    let Parsed::Index { manifests } = parsed else {
        unreachable!()
    };
    let children = manifests
        .into_iter()
        .zip(entries)
        .map(|(descriptor, (node, _, _))| Child {
            descriptor,
            node: Some(node),
        })
        .collect();
    Node {
        digest: sha256_digest(&bytes),
        media_type,
        bytes,
        content: Content::Index { children },
    }
}

fn attestation_for(node: &Node) -> String {
    format!(
        r#","annotations":{{"vnd.docker.reference.type":"attestation-manifest",
        "vnd.docker.reference.digest":"{}"}}"#,
        node.digest
    )
}

fn filters(list: &[&str]) -> Vec<PlatformFilter> {
    list.iter().map(|text| text.parse().unwrap()).collect()
}

fn four_platforms_with_attestations() -> (Node, Vec<Node>) {
    let platforms = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"];
    let images: Vec<Node> = platforms
        .iter()
        .map(|p| image(p, "sha256:shared"))
        .collect();
    let mut entries: Vec<(Node, Option<&str>, String)> = images
        .iter()
        .zip(platforms)
        .map(|(node, platform)| (node.clone(), Some(platform), String::new()))
        .collect();
    for (position, node) in images.iter().enumerate() {
        let attestation = image(&format!("attestation-{position}"), "sha256:sbom");
        entries.push((attestation, Some("unknown/unknown"), attestation_for(node)));
    }
    (index(entries), images)
}

#[test]
fn select_without_filter_keeps_bytes() {
    let (root, _) = four_platforms_with_attestations();
    let selection = select(root.clone(), &[], "src").unwrap();
    assert_eq!(selection.root.digest, root.digest);
    assert_eq!(selection.root.bytes, root.bytes);
    assert!(selection.rewrite_reason.is_none());
}

#[test]
fn select_subset_keeps_attestations() {
    let (root, images) = four_platforms_with_attestations();
    let selection = select(
        root.clone(),
        &filters(&["linux/arm64", "linux/arm/v7"]),
        "src",
    )
    .unwrap();

    assert_ne!(selection.root.digest, root.digest);
    assert_eq!(selection.root.digest, sha256_digest(&selection.root.bytes));
    assert!(
        selection
            .rewrite_reason
            .unwrap()
            .contains("linux/arm64, linux/arm/v7")
    );

    let Content::Index { children } = &selection.root.content else {
        panic!("not an index")
    };
    assert_eq!(children.len(), 4, "two images and their two attestations");
    let kept: Vec<&str> = children
        .iter()
        .map(|c| c.descriptor.digest.as_str())
        .collect();
    assert!(kept.contains(&images[1].digest.as_str()));
    assert!(kept.contains(&images[2].digest.as_str()));
    assert!(!kept.contains(&images[0].digest.as_str()));

    // The rebuilt bytes parse back to the same entries.
    let (_, parsed) = parse(&selection.root.bytes, None, "rebuilt").unwrap();
    let Parsed::Index { manifests } = parsed else {
        panic!("not an index")
    };
    let reparsed: Vec<&str> = manifests.iter().map(|d| d.digest.as_str()).collect();
    assert_eq!(reparsed, kept);
    let targets: Vec<&str> = manifests.iter().filter_map(attestation_target).collect();
    assert_eq!(
        targets,
        vec![images[1].digest.as_str(), images[2].digest.as_str()]
    );
}

#[test]
fn select_every_platform_keeps_digest() {
    let (root, _) = four_platforms_with_attestations();
    let all = filters(&["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]);
    let selection = select(root.clone(), &all, "src").unwrap();
    assert_eq!(selection.root.digest, root.digest);
    assert!(selection.rewrite_reason.is_none());
}

#[test]
fn select_missing_platform_is_error() {
    let (root, _) = four_platforms_with_attestations();
    let error = select(root, &filters(&["linux/arm64", "linux/riscv64"]), "src").unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::PlatformNotFound { .. }), "{message}");
    assert!(message.contains("linux/riscv64"), "{message}");
    assert!(
        message.contains("linux/arm/v7"),
        "lists what exists: {message}"
    );
}

#[test]
fn select_on_single_image_is_error() {
    let single = image("linux/amd64", "sha256:l");
    let error = select(single, &filters(&["linux/amd64"]), "src").unwrap_err();
    assert!(matches!(error, Error::FilterOnSingleImage { .. }));
}

#[test]
fn select_filters_nested_index() {
    let amd64 = image("linux/amd64", "sha256:a");
    let arm64 = image("linux/arm64", "sha256:b");
    let s390x = image("linux/s390x", "sha256:c");
    let nested = index(vec![
        (arm64.clone(), Some("linux/arm64"), String::new()),
        (s390x, Some("linux/s390x"), String::new()),
    ]);
    let root = index(vec![
        (amd64, Some("linux/amd64"), String::new()),
        (nested.clone(), None, String::new()),
    ]);

    let selection = select(root, &filters(&["linux/arm64"]), "src").unwrap();
    let Content::Index { children } = &selection.root.content else {
        panic!("not an index")
    };
    assert_eq!(children.len(), 1);
    let rewritten = children[0].node.as_ref().unwrap();
    assert_ne!(rewritten.digest, nested.digest);
    assert_eq!(children[0].descriptor.digest, rewritten.digest);
    assert_eq!(children[0].descriptor.size, rewritten.bytes.len() as u64);
    assert_eq!(
        platforms(&selection.root),
        vec![("linux/arm64".to_string(), arm64.digest)]
    );
}

#[test]
fn plan_lists_shared_blob_once() {
    let (root, _) = four_platforms_with_attestations();
    let plan = plan_pushes(&root, ForeignLayers::Skip).unwrap();
    let shared = plan
        .blobs
        .iter()
        .filter(|b| b.digest == fake("sha256:shared"))
        .count();
    assert_eq!(shared, 1);
    let sbom = plan
        .blobs
        .iter()
        .filter(|b| b.digest == fake("sha256:sbom"))
        .count();
    assert_eq!(sbom, 1);
    // 8 configs, one shared layer, one attestation layer.
    assert_eq!(plan.blobs.len(), 10);
    assert_eq!(plan.manifest_levels.len(), 1);
    assert_eq!(plan.manifest_levels[0].len(), 8);
}

#[test]
fn plan_orders_deepest_level_first() {
    let arm64 = image("linux/arm64", "sha256:b");
    let nested = index(vec![(arm64.clone(), Some("linux/arm64"), String::new())]);
    let root = index(vec![(nested.clone(), None, String::new())]);
    let plan = plan_pushes(&root, ForeignLayers::Skip).unwrap();
    let order: Vec<&str> = plan
        .manifest_levels
        .iter()
        .flatten()
        .map(|n| n.digest.as_str())
        .collect();
    assert_eq!(order, vec![arm64.digest.as_str(), nested.digest.as_str()]);
}

#[test]
fn plan_dedups_repeated_children() {
    let amd64 = image("linux/amd64", "sha256:a");
    let root = index(vec![
        (amd64.clone(), Some("linux/amd64"), String::new()),
        (amd64.clone(), Some("linux/amd64"), String::new()),
    ]);
    let plan = plan_pushes(&root, ForeignLayers::Skip).unwrap();
    assert_eq!(plan.manifest_levels[0].len(), 1);
}

fn image_with_foreign_layer() -> Node {
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":
        "application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":
        "application/vnd.docker.container.image.v1+json","digest":"{}","size":1}},
        "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest":"{}","size":9,"urls":["https://example.invalid/f"]}}]}}"#,
        fake("c"),
        fake("f")
    ));
    let (media_type, parsed) = parse(&bytes, None, "t").unwrap();
    let Parsed::Image { config, layers, .. } = parsed else {
        unreachable!()
    };
    let mut blobs = vec![*config];
    blobs.extend(layers);
    Node {
        digest: sha256_digest(&bytes),
        media_type,
        bytes,
        content: Content::Image { blobs },
    }
}

#[test]
fn plan_skips_foreign_layers() {
    let plan = plan_pushes(&image_with_foreign_layer(), ForeignLayers::Skip).unwrap();
    assert_eq!(plan.foreign_layers, 1);
    assert_eq!(plan.blobs.len(), 1);
}

#[test]
fn plan_copies_foreign_layers_on_request() {
    let plan = plan_pushes(&image_with_foreign_layer(), ForeignLayers::Copy).unwrap();
    assert_eq!(plan.foreign_layers, 0);
    assert_eq!(plan.blobs.len(), 2);
    assert_eq!(plan.blobs[1].urls, ["https://example.invalid/f"]);
}
