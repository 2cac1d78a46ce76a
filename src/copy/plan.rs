//! Pure planning: the manifest tree of an image, the platform filter, and the push order.
//!
//! Nothing here does I/O. `select` decides which index entries to keep and rewrites an index
//! only when a filter drops entries; `plan_pushes` lists blobs once each and manifests
//! children first, so the root, pushed last by tag, never points at missing content.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashSet};

use super::error::Error;
use super::manifest::{Descriptor, Kind, attestation_target, is_foreign, kind_of};
use super::reference::PlatformFilter;

/// A manifest or index with its exact bytes and, for an index, its entries.
#[derive(Clone, Debug)]
pub struct Node {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
    pub content: Content,
}

#[derive(Clone, Debug)]
pub enum Content {
    Index {
        children: Vec<Child>,
    },
    /// An image manifest's config and layers, in manifest order.
    Image {
        blobs: Vec<Descriptor>,
    },
}

/// An index entry, with the manifest it points to once fetched.
#[derive(Clone, Debug)]
pub struct Child {
    pub descriptor: Descriptor,
    pub node: Option<Node>,
}

impl Child {
    /// The kind of manifest the entry points to, from its descriptor.
    pub fn kind(&self) -> Option<Kind> {
        kind_of(&self.descriptor.media_type)
    }
}

/// The image to push: the root, possibly rewritten, and why it was rewritten.
#[derive(Debug)]
pub struct Selection {
    pub root: Node,
    pub rewrite_reason: Option<String>,
}

/// Returns the sha256 digest of `bytes` as `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Applies a platform filter. Without filters, or when every entry is kept, the root is
/// returned unchanged, so its digest is kept.
///
/// A filter keeps the image entries whose platform matches, the attestation entries that refer
/// to a kept entry, and nested indexes filtered the same way. Entries that are neither (other
/// artifacts) are dropped, because they describe the whole source index.
pub fn select(root: Node, filters: &[PlatformFilter], reference: &str) -> Result<Selection, Error> {
    if filters.is_empty() {
        return Ok(Selection {
            root,
            rewrite_reason: None,
        });
    }
    if !matches!(root.content, Content::Index { .. }) {
        return Err(Error::FilterOnSingleImage {
            reference: reference.to_string(),
        });
    }

    let mut matched = vec![false; filters.len()];
    let filtered = filter_index(&root, filters, &mut matched, reference)?;
    if let Some(position) = matched.iter().position(|found| !found) {
        return Err(Error::PlatformNotFound {
            reference: reference.to_string(),
            platform: filters[position].to_string(),
            available: platforms(&root)
                .into_iter()
                .map(|(platform, _)| platform)
                .collect(),
        });
    }

    let filtered = filtered.expect("a filter that matched keeps at least one entry");
    let rewrite_reason = (filtered.digest != root.digest).then(|| {
        let kept: Vec<String> = filters.iter().map(ToString::to_string).collect();
        format!(
            "platform filter {} dropped entries from the source index, so the index was rebuilt \
             and its digest differs from the source",
            kept.join(", ")
        )
    });
    Ok(Selection {
        root: filtered,
        rewrite_reason,
    })
}

/// Filters one index level. Returns `None` when nothing is kept.
fn filter_index(
    node: &Node,
    filters: &[PlatformFilter],
    matched: &mut [bool],
    reference: &str,
) -> Result<Option<Node>, Error> {
    let Content::Index { children } = &node.content else {
        return Ok(Some(node.clone()));
    };

    let mut kept: Vec<Option<Child>> = vec![None; children.len()];
    for (position, child) in children.iter().enumerate() {
        match (child.kind(), &child.node) {
            (Some(Kind::Index), Some(nested)) => {
                if let Some(filtered) = filter_index(nested, filters, matched, reference)? {
                    let mut descriptor = child.descriptor.clone();
                    descriptor.digest = filtered.digest.clone();
                    descriptor.size = filtered.bytes.len() as u64;
                    kept[position] = Some(Child {
                        descriptor,
                        node: Some(filtered),
                    });
                }
            }
            (Some(Kind::Index), None) => {
                return Err(Error::InvalidManifest {
                    reference: reference.to_string(),
                    reason: format!("nested index {} was not fetched", child.descriptor.digest),
                });
            }
            _ => {
                let Some(platform) = &child.descriptor.platform else {
                    continue;
                };
                for (index, filter) in filters.iter().enumerate() {
                    if filter.matches(platform) {
                        matched[index] = true;
                        kept[position] = Some(child.clone());
                    }
                }
            }
        }
    }

    // Attestations follow the images they describe.
    let kept_digests: HashSet<String> = kept
        .iter()
        .flatten()
        .map(|child| child.descriptor.digest.clone())
        .collect();
    for (position, child) in children.iter().enumerate() {
        if let Some(target) = attestation_target(&child.descriptor)
            && kept_digests.contains(target)
        {
            kept[position] = Some(child.clone());
        }
    }

    let unchanged = kept.iter().zip(children).all(|(kept, original)| {
        kept.as_ref()
            .is_some_and(|k| k.descriptor.digest == original.descriptor.digest)
    });
    if unchanged {
        return Ok(Some(node.clone()));
    }
    if kept.iter().all(Option::is_none) {
        return Ok(None);
    }
    rebuild_index(node, &kept, reference).map(Some)
}

/// Writes a new index holding the kept entries. Each entry keeps its original JSON (so
/// annotations and fields this crate does not know survive); rewritten nested indexes get
/// their new digest and size.
fn rebuild_index(node: &Node, kept: &[Option<Child>], reference: &str) -> Result<Node, Error> {
    let invalid = |reason: String| Error::InvalidManifest {
        reference: reference.to_string(),
        reason,
    };
    let mut document: serde_json::Value =
        serde_json::from_slice(&node.bytes).map_err(|error| invalid(error.to_string()))?;
    let entries = document
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .ok_or_else(|| invalid("index without a manifests list".to_string()))?;

    let mut new_entries = Vec::new();
    let mut new_children = Vec::new();
    for (entry, child) in entries.into_iter().zip(kept) {
        let Some(child) = child else { continue };
        let mut entry = entry;
        entry["digest"] = child.descriptor.digest.clone().into();
        entry["size"] = child.descriptor.size.into();
        new_entries.push(entry);
        new_children.push(child.clone());
    }
    document["manifests"] = serde_json::Value::Array(new_entries);

    let bytes = Bytes::from(
        serde_json::to_vec_pretty(&document).map_err(|error| invalid(error.to_string()))?,
    );
    Ok(Node {
        digest: sha256_digest(&bytes),
        media_type: node.media_type.clone(),
        bytes,
        content: Content::Index {
            children: new_children,
        },
    })
}

/// Lists `(platform, manifest digest)` for the image entries of an index tree, leaving out
/// attestations and entries without a platform.
pub fn platforms(node: &Node) -> Vec<(String, String)> {
    let mut found = Vec::new();
    collect_platforms(node, &mut found);
    found
}

fn collect_platforms(node: &Node, found: &mut Vec<(String, String)>) {
    let Content::Index { children } = &node.content else {
        return;
    };
    for child in children {
        if let Some(nested) = child
            .node
            .as_ref()
            .filter(|_| child.kind() == Some(Kind::Index))
        {
            collect_platforms(nested, found);
            continue;
        }
        let Some(platform) = &child.descriptor.platform else {
            continue;
        };
        if attestation_target(&child.descriptor).is_some() || platform.os == "unknown" {
            continue;
        }
        found.push((platform.to_string(), child.descriptor.digest.clone()));
    }
}

/// Handling of non-distributable (foreign) layers, whose manifests point at download URLs
/// outside the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForeignLayers {
    /// Leave them out, as Docker does: the target gets the manifest, which still names the
    /// URLs, and clients download the layers from there. The target must accept manifests with
    /// URLs, which distribution (v3.1.2 in the tests) rejects unless its
    /// `validation.manifests.urls` settings allow them.
    #[default]
    Skip,
    /// Copy them into the target, from the source registry if it has them, else from their
    /// URLs (without credentials). This contacts whatever hosts the manifest names, and the
    /// layer's license may not allow redistribution.
    Copy,
}

/// What to push, in order: blobs (any order), then manifest levels deepest first, then the root.
#[derive(Debug, Default)]
pub struct PushPlan {
    /// Each blob once, however many manifests use it.
    pub blobs: Vec<Descriptor>,
    /// Non-distributable layers left out under [`ForeignLayers::Skip`].
    pub foreign_layers: usize,
    /// Child manifests by depth, the deepest level first. A level's manifests may be pushed
    /// concurrently, as they do not refer to each other.
    pub manifest_levels: Vec<Vec<Node>>,
}

/// Lists the pushes for a fully fetched tree. Returns an error naming the first unfetched
/// entry, which would otherwise be missing from the target.
pub fn plan_pushes(root: &Node, foreign: ForeignLayers) -> Result<PushPlan, Error> {
    let mut plan = PushPlan::default();
    let mut seen_blobs = BTreeSet::new();
    let mut levels: Vec<Vec<Node>> = Vec::new();
    let mut walker = Walker {
        plan: &mut plan,
        seen_blobs: &mut seen_blobs,
        levels: &mut levels,
        foreign,
    };
    walker.walk(root, 0)?;

    // A manifest listed at several depths is pushed once, at its deepest level.
    let mut seen_manifests = HashSet::new();
    for level in levels.into_iter().skip(1).rev() {
        let unique: Vec<Node> = level
            .into_iter()
            .filter(|node| seen_manifests.insert(node.digest.clone()))
            .collect();
        if !unique.is_empty() {
            plan.manifest_levels.push(unique);
        }
    }
    Ok(plan)
}

struct Walker<'a> {
    plan: &'a mut PushPlan,
    seen_blobs: &'a mut BTreeSet<String>,
    levels: &'a mut Vec<Vec<Node>>,
    foreign: ForeignLayers,
}

impl Walker<'_> {
    fn walk(&mut self, node: &Node, depth: usize) -> Result<(), Error> {
        if self.levels.len() <= depth {
            self.levels.push(Vec::new());
        }
        self.levels[depth].push(node.clone());
        match &node.content {
            Content::Image { blobs } => {
                for blob in blobs {
                    if is_foreign(&blob.media_type) && self.foreign == ForeignLayers::Skip {
                        self.plan.foreign_layers += 1;
                    } else if self.seen_blobs.insert(blob.digest.clone()) {
                        self.plan.blobs.push(blob.clone());
                    }
                }
            }
            Content::Index { children } => {
                for child in children {
                    let nested = child.node.as_ref().ok_or_else(|| Error::InvalidManifest {
                        reference: node.digest.clone(),
                        reason: format!("entry {} was not fetched", child.descriptor.digest),
                    })?;
                    self.walk(nested, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
