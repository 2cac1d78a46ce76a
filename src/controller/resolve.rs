//! Reads what a copy needs from the cluster: the parsed spec and the pull Secrets.
//!
//! Secrets are read only by name, only in the ImageCopy's own namespace, and only those the
//! ImageCopy names.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::error::Error;
use super::settings::Settings;
use crate::api::ImageCopy;
use crate::copy::{CopyRequest, DockerConfig, ImageRef, PlatformFilter};

const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";

/// Parses the spec into a copy request without credentials.
pub fn parse_spec(object: &ImageCopy, settings: &Settings) -> Result<CopyRequest, Error> {
    let invalid = |message: String| Error::InvalidSpec { message };
    let source: ImageRef = object
        .spec
        .source
        .parse()
        .map_err(|e: crate::copy::Error| invalid(e.to_string()))?;
    let target: ImageRef = object
        .spec
        .target
        .parse()
        .map_err(|e: crate::copy::Error| invalid(e.to_string()))?;
    if !target.has_explicit_tag() {
        return Err(invalid(format!(
            "spec.target {:?} must name a tag",
            object.spec.target
        )));
    }
    let platforms = object
        .spec
        .platforms
        .iter()
        .map(|p| p.parse::<PlatformFilter>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;

    for image in [&source, &target] {
        if !settings.registry_allowed(image.registry()) {
            return Err(Error::RegistryNotAllowed {
                host: image.registry().to_string(),
            });
        }
    }

    let mut request = CopyRequest::new(source, target);
    request.platforms = platforms;
    request.connect = settings.connect.clone();
    request.jobs = settings.jobs;
    request.upload_mode = settings.upload_mode;
    request.chunk_size = settings.chunk_size;
    request.foreign_layers = settings.foreign_layers;
    Ok(request)
}

/// Reads the named pull Secrets and merges them; earlier Secrets win on equal keys.
pub async fn pull_secrets(
    secrets: &Api<Secret>,
    namespace: &str,
    object: &ImageCopy,
) -> Result<DockerConfig, Error> {
    let mut merged = DockerConfig::default();
    for reference in &object.spec.image_pull_secrets {
        let name = &reference.name;
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|source| Error::Kube {
                action: "read a pull Secret",
                source,
            })?
            .ok_or_else(|| Error::SecretNotFound {
                namespace: namespace.to_string(),
                name: name.clone(),
            })?;
        merged.extend(parse_secret(&secret, name)?);
    }
    Ok(merged)
}

fn parse_secret(secret: &Secret, name: &str) -> Result<DockerConfig, Error> {
    let invalid = |reason: String| Error::InvalidSecret {
        name: name.to_string(),
        reason,
    };
    if secret.type_.as_deref() != Some(DOCKER_CONFIG_JSON_TYPE) {
        return Err(invalid(format!(
            "type is {:?}, expected {DOCKER_CONFIG_JSON_TYPE}",
            secret.type_.as_deref().unwrap_or("")
        )));
    }
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(DOCKER_CONFIG_JSON_KEY))
        .ok_or_else(|| invalid(format!("key {DOCKER_CONFIG_JSON_KEY} is missing")))?;
    DockerConfig::parse(&data.0, &format!("Secret {name}")).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageCopySpec;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn object(source: &str, target: &str) -> ImageCopy {
        ImageCopy::new(
            "app",
            ImageCopySpec {
                source: source.into(),
                target: target.into(),
                platforms: vec![],
                image_pull_secrets: vec![],
                interval: None,
                suspend: false,
            },
        )
    }

    #[test]
    fn spec_target_needs_tag() {
        let settings = Settings::default();
        let error = parse_spec(&object("a.example/x:1", "b.example/y"), &settings).unwrap_err();
        assert!(matches!(error, Error::InvalidSpec { .. }), "{error}");
        assert!(parse_spec(&object("a.example/x:1", "b.example/y:1"), &settings).is_ok());
    }

    #[test]
    fn spec_denied_registry() {
        let settings = Settings {
            denied_registries: vec!["evil.example".into()],
            ..Settings::default()
        };
        let error = parse_spec(&object("evil.example/x:1", "b.example/y:1"), &settings);
        assert!(matches!(error, Err(Error::RegistryNotAllowed { .. })));
    }

    #[test]
    fn secret_wrong_type_rejected() {
        let secret = Secret {
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let error = parse_secret(&secret, "creds").unwrap_err();
        assert!(
            error.to_string().contains("kubernetes.io/dockerconfigjson"),
            "{error}"
        );
    }

    #[test]
    fn secret_parsed() {
        let json = br#"{"auths":{"reg.example":{"username":"u","password":"canary-77"}}}"#;
        let secret = Secret {
            type_: Some(DOCKER_CONFIG_JSON_TYPE.into()),
            data: Some(BTreeMap::from([(
                DOCKER_CONFIG_JSON_KEY.to_string(),
                ByteString(json.to_vec()),
            )])),
            ..Secret::default()
        };
        let config = parse_secret(&secret, "creds").unwrap();
        let image: ImageRef = "reg.example/app:1".parse().unwrap();
        assert!(config.credential_for(&image).is_some());
    }
}
