//! Read-only views of manifests and indexes.
//!
//! The engine parses manifests only to find what they refer to. It never serialises a parsed
//! manifest to push it: the bytes pushed are the bytes pulled, so digests stay equal. The one
//! exception is an index rewritten for a platform filter, built in `plan`.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::digest;
use super::error::Error;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The Accept list sent with every manifest request. Without the index and list types, some
/// registries down-convert a list to one platform's manifest or answer 404 for an OCI index.
pub const ACCEPTED_MANIFEST_TYPES: [&str; 4] =
    [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest manifest the engine reads. Registries commonly reject manifests above 4 MiB.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A content descriptor as it appears in manifests and indexes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Download locations of non-distributable (foreign) layers.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default, rename = "os.version")]
    pub os_version: Option<String>,
}

/// Writes `os/architecture[/variant]`, with the OS version in brackets after the OS when the
/// entry has one (`windows(10.0.20348.2227)/amd64`), the way containerd formats platforms, so
/// Windows entries that differ only by `os.version` stay apart.
impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.os)?;
        if let Some(version) = self.os_version.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "({version})")?;
        }
        write!(f, "/{}", self.architecture)?;
        if let Some(variant) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The kind of a manifest document, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Index,
    Image,
}

/// A parsed manifest or index: just the fields the copy needs.
#[derive(Debug)]
pub enum Parsed {
    Index {
        manifests: Vec<Descriptor>,
    },
    Image {
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
        subject: Option<Box<Descriptor>>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    // Schema 1 manifests carry these instead of `config` and `layers`.
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

/// Returns the kind of a supported manifest media type.
pub fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        _ => None,
    }
}

/// Parses a manifest body and works out its media type.
///
/// `hint` is the media type known from elsewhere: the parent's descriptor or the response's
/// `Content-Type`. The body's own `mediaType` field wins when present. A body without either is
/// classified by shape, as the OCI image spec allows `mediaType` to be left out.
pub fn parse(bytes: &[u8], hint: Option<&str>, reference: &str) -> Result<(String, Parsed), Error> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestTooLarge {
            reference: reference.to_string(),
            size: bytes.len() as u64,
        });
    }
    let document: Document =
        serde_json::from_slice(bytes).map_err(|source| Error::InvalidManifest {
            reference: reference.to_string(),
            reason: source.to_string(),
        })?;

    let declared = document
        .media_type
        .clone()
        .or_else(|| hint.map(str::to_string));
    let is_schema1 = document.schema_version == Some(1)
        || document.fs_layers.is_some()
        || matches!(
            declared.as_deref(),
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
        );
    if is_schema1 {
        return Err(Error::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: "Docker schema 1".to_string(),
        });
    }

    let media_type = match declared {
        Some(media_type) => media_type,
        None if document.manifests.is_some() => OCI_INDEX.to_string(),
        None if document.config.is_some() => OCI_MANIFEST.to_string(),
        None => {
            return Err(Error::InvalidManifest {
                reference: reference.to_string(),
                reason: "no mediaType and neither manifests nor config".to_string(),
            });
        }
    };

    check_digests(&document, reference)?;
    let parsed = match kind_of(&media_type) {
        Some(Kind::Index) => Parsed::Index {
            manifests: document.manifests.unwrap_or_default(),
        },
        Some(Kind::Image) => {
            let config = document.config.ok_or_else(|| Error::InvalidManifest {
                reference: reference.to_string(),
                reason: "image manifest without config".to_string(),
            })?;
            Parsed::Image {
                config: Box::new(config),
                layers: document.layers.unwrap_or_default(),
                subject: document.subject.map(Box::new),
            }
        }
        None => {
            return Err(Error::UnsupportedManifest {
                reference: reference.to_string(),
                media_type,
            });
        }
    };
    Ok((media_type, parsed))
}

/// Checks every digest a manifest refers to. They become URL path segments, so an invalid one
/// is rejected before any request.
fn check_digests(document: &Document, reference: &str) -> Result<(), Error> {
    let descriptors = document
        .manifests
        .iter()
        .flatten()
        .chain(document.config.iter())
        .chain(document.layers.iter().flatten())
        .chain(document.subject.iter());
    for descriptor in descriptors {
        digest::parse(&descriptor.digest).map_err(|reason| Error::InvalidManifest {
            reference: reference.to_string(),
            reason: format!(
                "descriptor digest {:?} is invalid: {reason}",
                descriptor.digest
            ),
        })?;
    }
    Ok(())
}

/// True for the media types of non-distributable layers: Docker's foreign layers and the
/// OCI non-distributable layer types (deprecated in OCI image spec 1.1).
pub fn is_foreign(media_type: &str) -> bool {
    media_type.contains(".foreign.") || media_type.contains(".nondistributable.")
}

/// Returns true for an index entry that describes an attestation of another entry, as BuildKit
/// writes them: platform `unknown/unknown` plus a reference annotation.
pub fn attestation_target(descriptor: &Descriptor) -> Option<&str> {
    let is_attestation = descriptor
        .annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|kind| kind == "attestation-manifest");
    if !is_attestation {
        return None;
    }
    descriptor
        .annotations
        .get("vnd.docker.reference.digest")
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST_A: &str =
        "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn parse_rejects_invalid_digests() {
        for digest in [
            "sha256:aa",
            "sha256:../../v2/x",
            "md5:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":
                {{"digest":"{DIGEST_A}","size":1}},"layers":[{{"digest":"{digest}","size":1}}]}}"#
            );
            let error = parse(body.as_bytes(), None, "r").unwrap_err();
            assert!(
                matches!(error, Error::InvalidManifest { .. }),
                "{digest}: {error}"
            );
        }
    }

    #[test]
    fn platform_display_keeps_os_version() {
        let platform = Platform {
            os: "windows".into(),
            architecture: "amd64".into(),
            variant: None,
            os_version: Some("10.0.20348.2227".into()),
        };
        assert_eq!(platform.to_string(), "windows(10.0.20348.2227)/amd64");
    }

    #[test]
    fn parse_index_without_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{DIGEST_A}","size":3,
            "platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#
        );
        let (media_type, parsed) = parse(body.as_bytes(), None, "r").unwrap();
        assert_eq!(media_type, OCI_INDEX);
        let Parsed::Index { manifests } = parsed else {
            panic!("expected an index")
        };
        assert_eq!(
            manifests[0].platform.as_ref().unwrap().to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn parse_rejects_schema1() {
        let body = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let error = parse(body, None, "r").unwrap_err();
        assert!(
            matches!(error, Error::UnsupportedManifest { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("schema 1"));
    }

    #[test]
    fn parse_rejects_oversized() {
        let body = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            parse(&body, None, "r"),
            Err(Error::ManifestTooLarge { .. })
        ));
    }

    #[test]
    fn parse_rejects_unknown_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/x-unknown","config":
            {{"digest":"{DIGEST_A}","size":1}}}}"#
        );
        assert!(matches!(
            parse(body.as_bytes(), None, "r"),
            Err(Error::UnsupportedManifest { .. })
        ));
    }

    #[test]
    fn attestation_target_reads_annotations() {
        let descriptor: Descriptor = serde_json::from_str(
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb",
            "size":1,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{
            "vnd.docker.reference.type":"attestation-manifest",
            "vnd.docker.reference.digest":"sha256:aa"}}"#,
        )
        .unwrap();
        assert_eq!(attestation_target(&descriptor), Some("sha256:aa"));
    }
}
