//! Reads the source: the root manifest, then the manifests its entries point to.

use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use std::collections::HashMap;

use super::error::Error;
use super::manifest::{Kind, Parsed, kind_of, parse};
use super::plan::{Child, Content, Node};
use super::reference::ImageRef;
use super::registry::Registry;

/// Deepest nesting of indexes inside indexes that the engine follows.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Manifest requests in flight at once while walking a tree.
const MANIFEST_FETCHES: usize = 8;

/// Fetches the root manifest. A reference with a digest is fetched by digest, and the bytes
/// must hash to it in its algorithm; the registry's `Docker-Content-Digest` is not trusted.
pub async fn fetch_root(source: &Registry, image: &ImageRef) -> Result<Node, Error> {
    let reference = match image.digest() {
        Some(digest) => image.with_digest(digest),
        None => image.as_oci().clone(),
    };
    let fetched = source.get_manifest(&reference).await?;
    if let Some(expected) = image.digest()
        && expected != fetched.digest
    {
        return Err(Error::DigestMismatch {
            reference: image.to_string(),
            expected: expected.to_string(),
            actual: fetched.digest,
        });
    }
    let hint = known_type(fetched.content_type.as_deref());
    node_from_bytes(fetched.bytes, fetched.digest, hint, &image.to_string())
}

/// Returns a response's `Content-Type` when it is a supported manifest type; other
/// values (`application/json`, `text/plain`) do not identify the document type.
fn known_type(content_type: Option<&str>) -> Option<&str> {
    content_type.filter(|media_type| kind_of(media_type).is_some())
}

fn node_from_bytes(
    bytes: bytes::Bytes,
    digest: String,
    hint: Option<&str>,
    reference: &str,
) -> Result<Node, Error> {
    let (media_type, parsed) = parse(&bytes, hint, reference)?;
    let content = match parsed {
        Parsed::Index { manifests } => Content::Index {
            children: manifests
                .into_iter()
                .map(|descriptor| Child {
                    descriptor,
                    node: None,
                })
                .collect(),
        },
        Parsed::Image { config, layers, .. } => {
            let mut blobs = Vec::with_capacity(layers.len() + 1);
            blobs.push(*config);
            blobs.extend(layers);
            Content::Image { blobs }
        }
    };
    Ok(Node {
        digest,
        media_type,
        bytes,
        content,
    })
}

/// The entries of a tree to fetch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Only nested indexes, which the platform filter and the platform list need.
    IndexesOnly,
    /// Every entry, which a copy needs.
    Everything,
}

/// Fills in the entries of `root` that are not fetched yet, level by level.
pub async fn fetch_children(
    source: &Registry,
    image: &ImageRef,
    root: &mut Node,
    what: Fetch,
) -> Result<(), Error> {
    fill_level(source, image, root, what, 1).await
}

fn fill_level<'a>(
    source: &'a Registry,
    image: &'a ImageRef,
    node: &'a mut Node,
    what: Fetch,
    depth: usize,
) -> futures::future::BoxFuture<'a, Result<(), Error>> {
    Box::pin(async move {
        let Content::Index { children } = &mut node.content else {
            return Ok(());
        };
        if depth > MAX_INDEX_DEPTH {
            return Err(Error::NestingTooDeep {
                reference: image.to_string(),
                limit: MAX_INDEX_DEPTH,
            });
        }

        // Fetch each missing digest once, even when an index lists it twice.
        let mut wanted: Vec<(String, String)> = Vec::new();
        for child in children.iter() {
            let is_index = child.kind() == Some(Kind::Index);
            let needed = child.node.is_none() && (is_index || what == Fetch::Everything);
            let digest = &child.descriptor.digest;
            if needed && !wanted.iter().any(|(d, _)| d == digest) {
                wanted.push((digest.clone(), child.descriptor.media_type.clone()));
            }
        }
        let fetches: Vec<_> = wanted
            .into_iter()
            .map(|(digest, media_type)| fetch_child(source, image, digest, media_type))
            .collect();
        let fetched: HashMap<String, Node> = futures::stream::iter(fetches)
            .buffer_unordered(MANIFEST_FETCHES)
            .try_collect()
            .await?;

        for child in children.iter_mut() {
            if child.node.is_none() {
                child.node = fetched.get(&child.descriptor.digest).cloned();
            }
        }
        for child in children.iter_mut() {
            if let Some(nested) = child.node.as_mut() {
                fill_level(source, image, nested, what, depth + 1).await?;
            }
        }
        Ok(())
    })
}

async fn fetch_child(
    source: &Registry,
    image: &ImageRef,
    digest: String,
    media_type: String,
) -> Result<(String, Node), Error> {
    let reference: Reference = image.with_digest(&digest);
    let fetched = source.get_manifest(&reference).await?;
    if fetched.digest != digest {
        return Err(Error::DigestMismatch {
            reference: reference.whole(),
            expected: digest,
            actual: fetched.digest,
        });
    }
    let hint = (!media_type.is_empty())
        .then_some(media_type.as_str())
        .or(known_type(fetched.content_type.as_deref()));
    let node = node_from_bytes(fetched.bytes, digest.clone(), hint, &reference.whole())?;
    Ok((digest, node))
}
