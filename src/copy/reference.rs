//! Image references and platform filters, parsed the way users write them.
//!
//! `nginx` means `docker.io/library/nginx:latest`, and `docker.io`, `index.docker.io` and
//! `registry-1.docker.io` name one registry. Parsing itself is oci-client's (the grammar of
//! the distribution reference); this module adds the Docker Hub aliases and the checks the
//! engine needs.

use oci_client::Reference;
use std::fmt;
use std::str::FromStr;

use super::digest;
use super::error::Error;
use super::manifest::Platform as DescriptorPlatform;

/// Host names that all mean Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A parsed image reference: registry, repository, and a tag, a digest or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
    /// True when the text named a tag; `latest` is filled in otherwise.
    explicit_tag: bool,
}

impl ImageRef {
    /// Returns the registry host as written, with Docker Hub aliases folded into `docker.io`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// True when the reference was written with a tag, rather than given `latest` by default.
    pub fn has_explicit_tag(&self) -> bool {
        self.explicit_tag
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// Returns the oci-client reference for this image.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }

    /// Returns a reference to `digest` in the same repository.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry().to_string(),
            self.repository().to_string(),
            digest.to_string(),
        )
    }

    /// Returns a reference to the tag alone, without any digest.
    pub fn tag_only(&self) -> Option<Reference> {
        let tag = self.tag()?;
        Some(Reference::with_tag(
            self.registry().to_string(),
            self.repository().to_string(),
            tag.to_string(),
        ))
    }

    /// True when both references are in the same registry, so blobs can be mounted.
    pub fn same_registry(&self, other: &ImageRef) -> bool {
        registry_key(self.registry()) == registry_key(other.registry())
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: text.to_string(),
            reason,
        };
        if text.trim() != text || text.is_empty() {
            return Err(invalid("it is empty or has surrounding spaces".to_string()));
        }
        let parsed = Reference::from_str(text).map_err(|error| invalid(error.to_string()))?;
        // oci-client accepts uppercase hex; the OCI image spec allows lowercase only, and
        // registries reject the rest.
        if let Some(digest) = parsed.digest() {
            digest::parse(digest).map_err(invalid)?;
        }
        // The distribution grammar allows only lowercase repository names, but oci-client
        // 0.18.0 parses uppercase ones and registries then answer with an unclear error.
        if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase".to_string()));
        }

        // oci-client folds only `index.docker.io`, so fold the other alias here.
        let registry = registry_key(parsed.registry());
        let mut repository = parsed.repository().to_string();
        if registry == "docker.io" && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let inner = match (parsed.tag(), parsed.digest()) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                registry.to_string(),
                repository,
                tag.to_string(),
                digest.to_string(),
            ),
            (None, Some(digest)) => {
                Reference::with_digest(registry.to_string(), repository, digest.to_string())
            }
            (tag, None) => Reference::with_tag(
                registry.to_string(),
                repository,
                tag.unwrap_or("latest").to_string(),
            ),
        };
        let name = text.split('@').next().unwrap_or(text);
        let explicit_tag = name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        Ok(ImageRef {
            inner,
            explicit_tag,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

/// Returns the canonical name of a registry host: Docker Hub aliases become `docker.io`.
pub fn registry_key(host: &str) -> &str {
    let lower = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&lower.as_str()) {
        "docker.io"
    } else {
        host
    }
}

/// A platform requested by the user, such as `linux/arm64`, `linux/arm/v7`, or
/// `windows(10.0.20348.2227)/amd64` for one Windows OS version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformFilter {
    pub os: String,
    /// The `os.version` an entry must have; `None` matches every version.
    pub os_version: Option<String>,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformFilter {
    /// True when an index entry's platform is this one. A filter without a variant matches the
    /// architecture's default variant (`arm64` is `v8`, `arm` is `v7`, `amd64` is `v1`) and an
    /// entry with no variant.
    pub fn matches(&self, platform: &DescriptorPlatform) -> bool {
        if platform.os != self.os || platform.architecture != self.architecture {
            return false;
        }
        if let Some(version) = &self.os_version
            && platform.os_version.as_deref() != Some(version.as_str())
        {
            return false;
        }
        let entry = normalized_variant(&platform.architecture, platform.variant.as_deref());
        let requested = normalized_variant(&self.architecture, self.variant.as_deref());
        entry == requested
    }
}

fn normalized_variant<'a>(architecture: &str, variant: Option<&'a str>) -> Option<&'a str> {
    let default = match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        "amd64" => Some("v1"),
        _ => None,
    };
    match variant.filter(|v| !v.is_empty()) {
        Some(v) if Some(v) == default => None,
        other => other,
    }
}

impl FromStr for PlatformFilter {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::InvalidPlatform {
            platform: text.to_string(),
            reason: "expected OS/ARCHITECTURE or OS/ARCHITECTURE/VARIANT, such as linux/arm64, \
                     with an optional OS version in brackets, such as windows(10.0.20348.2227)/amd64"
                .to_string(),
        }
        };
        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        let parts: Vec<&str> = text.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(invalid());
        }
        let (os, os_version) = match parts[0].split_once('(') {
            Some((os, rest)) => {
                let version = rest.strip_suffix(')').ok_or_else(invalid)?;
                let valid_version = version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
                if version.is_empty() || !valid_version {
                    return Err(invalid());
                }
                (os, Some(version.to_string()))
            }
            None => (parts[0], None),
        };
        if !valid_part(os) || !parts[1..].iter().all(|part| valid_part(part)) {
            return Err(invalid());
        }
        Ok(PlatformFilter {
            os: os.to_string(),
            os_version,
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for PlatformFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.os)?;
        if let Some(version) = &self.os_version {
            write!(f, "({version})")?;
        }
        write!(f, "/{}", self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> ImageRef {
        text.parse().unwrap()
    }

    #[test]
    fn short_name_expands_to_docker_hub() {
        let reference = image("nginx");
        assert_eq!(reference.registry(), "docker.io");
        assert_eq!(reference.repository(), "library/nginx");
        assert_eq!(reference.tag(), Some("latest"));
        assert_eq!(reference.to_string(), "docker.io/library/nginx:latest");
    }

    #[test]
    fn explicit_tag_detected() {
        assert!(image("127.0.0.1:5000/app:1.4").has_explicit_tag());
        assert!(image("app:latest").has_explicit_tag());
        assert!(!image("127.0.0.1:5000/app").has_explicit_tag());
        assert!(!image("nginx").has_explicit_tag());
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(!image(&format!("127.0.0.1:5000/app@{digest}")).has_explicit_tag());
        assert!(image(&format!("127.0.0.1:5000/app:v1@{digest}")).has_explicit_tag());
    }

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for text in [
            "index.docker.io/library/nginx:1",
            "registry-1.docker.io/nginx:1",
        ] {
            let reference = image(text);
            assert_eq!(reference.registry(), "docker.io", "{text}");
            assert_eq!(reference.repository(), "library/nginx", "{text}");
        }
        assert!(image("registry-1.docker.io/a/b").same_registry(&image("a/b")));
    }

    #[test]
    fn tag_and_digest_both_kept() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = image(&format!("127.0.0.1:5000/team/app:1.4@{digest}"));
        assert_eq!(reference.registry(), "127.0.0.1:5000");
        assert_eq!(reference.repository(), "team/app");
        assert_eq!(reference.tag(), Some("1.4"));
        assert_eq!(reference.digest(), Some(digest.as_str()));
    }

    #[test]
    fn malformed_references_rejected() {
        for text in [
            "",
            " nginx",
            "UPPER/case",
            "repo:tag:tag",
            "repo@sha256:short",
            "a//b",
            "repo@sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "repo@md5:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let error = text.parse::<ImageRef>().unwrap_err();
            assert!(
                matches!(error, Error::InvalidReference { .. }),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn platform_parse_and_display() {
        let filter: PlatformFilter = "linux/arm/v7".parse().unwrap();
        assert_eq!(filter.variant.as_deref(), Some("v7"));
        assert_eq!(filter.to_string(), "linux/arm/v7");
        let windows: PlatformFilter = "windows(10.0.20348.2227)/amd64".parse().unwrap();
        assert_eq!(windows.os, "windows");
        assert_eq!(windows.os_version.as_deref(), Some("10.0.20348.2227"));
        assert_eq!(windows.to_string(), "windows(10.0.20348.2227)/amd64");
        for bad in [
            "linux",
            "linux/",
            "/arm64",
            "linux/arm/v7/x",
            "linux arm64",
            "windows()/amd64",
            "windows(10/amd64",
        ] {
            assert!(bad.parse::<PlatformFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn platform_default_variants_match() {
        let entry = |architecture: &str, variant: Option<&str>| DescriptorPlatform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
            os_version: None,
        };
        let windows = |version: &str| DescriptorPlatform {
            os: "windows".into(),
            architecture: "amd64".into(),
            variant: None,
            os_version: Some(version.into()),
        };
        let any_windows: PlatformFilter = "windows/amd64".parse().unwrap();
        assert!(any_windows.matches(&windows("10.0.17763.1")));
        assert!(any_windows.matches(&windows("10.0.20348.1")));
        let one_windows: PlatformFilter = "windows(10.0.20348.1)/amd64".parse().unwrap();
        assert!(one_windows.matches(&windows("10.0.20348.1")));
        assert!(!one_windows.matches(&windows("10.0.17763.1")));
        let arm64: PlatformFilter = "linux/arm64".parse().unwrap();
        assert!(arm64.matches(&entry("arm64", Some("v8"))));
        assert!(arm64.matches(&entry("arm64", None)));
        let arm_v6: PlatformFilter = "linux/arm/v6".parse().unwrap();
        assert!(!arm_v6.matches(&entry("arm", Some("v7"))));
        let arm: PlatformFilter = "linux/arm".parse().unwrap();
        assert!(arm.matches(&entry("arm", Some("v7"))));
        assert!(!arm.matches(&entry("arm64", None)));
    }
}
