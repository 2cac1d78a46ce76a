//! Registry credentials from a Docker `config.json`.
//!
//! The CLI reads the file given by `--authfile`, and the controller reads the same JSON from
//! `kubernetes.io/dockerconfigjson` Secrets, so both go through [`DockerConfig`]. Keys are
//! matched the way the kubelet matches them: scheme and `/v1/` style paths are ignored, the
//! Docker Hub aliases are one registry, and the most specific path prefix wins.

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

use super::error::Error;
use super::reference::{ImageRef, registry_key};

/// The `auths` map of a Docker config file, with keys normalised. `Debug` shows hosts and
/// usernames only, because [`Credential`] hides secrets.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Registry host, folded for Docker Hub.
    host: String,
    /// Repository path prefix after the host, empty for the whole registry.
    path: String,
    credential: Credential,
}

/// One credential. Its `Debug` output hides the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::Bearer { .. } => write!(f, "Bearer {{ token: <redacted> }}"),
        }
    }
}

impl Credential {
    pub fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credential::Bearer { token } => RegistryAuth::Bearer(token.clone()),
        }
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, FileEntry>,
}

#[derive(Deserialize)]
struct FileEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl DockerConfig {
    /// Parses the JSON of a Docker config file or a `.dockerconfigjson` Secret key.
    ///
    /// `origin` names the file or Secret in errors. Errors never contain credential values.
    pub fn parse(json: &[u8], origin: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidCredentials {
            origin: origin.to_string(),
            reason,
        };
        // serde's messages quote the offending input, which could be a password, so only the
        // position of a syntax error is kept.
        let file: File = serde_json::from_slice(json).map_err(|error| {
            invalid(format!(
                "not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ))
        })?;

        let mut entries = Vec::new();
        for (key, entry) in file.auths {
            let (host, path) = split_key(&key);
            if host.is_empty() {
                return Err(invalid(format!("registry key {key:?} has no host")));
            }
            let credential = credential_of(&entry)
                .map_err(|reason| invalid(format!("entry for {key:?}: {reason}")))?;
            if let Some(credential) = credential {
                entries.push(Entry {
                    host,
                    path,
                    credential,
                });
            }
        }
        Ok(DockerConfig { entries })
    }

    /// Returns the credential for an image, or `None` for anonymous access.
    pub fn credential_for(&self, image: &ImageRef) -> Option<&Credential> {
        let host = registry_key(image.registry()).to_ascii_lowercase();
        let repository = image.repository();
        self.entries
            .iter()
            .filter(|entry| entry.host == host)
            .filter(|entry| {
                entry.path.is_empty()
                    || repository == entry.path
                    || repository.starts_with(&format!("{}/", entry.path))
            })
            .max_by_key(|entry| entry.path.len())
            .map(|entry| &entry.credential)
    }

    /// Merges another config into this one; on equal keys the entries of `other` come later and
    /// lose to earlier ones of equal specificity.
    pub fn extend(&mut self, other: DockerConfig) {
        self.entries.extend(other.entries);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits a config key such as `https://index.docker.io/v1/` or `registry.example/team` into a
/// normalised host and a repository path prefix.
fn split_key(key: &str) -> (String, String) {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = without_scheme
        .split_once('/')
        .unwrap_or((without_scheme, ""));
    let host = registry_key(host).to_ascii_lowercase();
    // API version paths are not repository prefixes.
    let path = path.trim_end_matches('/');
    let path = match path {
        "v1" | "v2" => "",
        other => other,
    };
    (host, path.to_string())
}

fn credential_of(entry: &FileEntry) -> Result<Option<Credential>, String> {
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::Bearer {
            token: token.to_string(),
        }));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the auth field is not valid base64".to_string())?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "the auth field is not UTF-8".to_string())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "the auth field is not base64 of USERNAME:PASSWORD".to_string())?;
        return Ok(Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credential::Basic {
            username: username.clone(),
            password: password.clone(),
        })),
        _ if entry.identitytoken.is_some() => Err(
            "identitytoken entries need an OAuth2 token exchange, which is not supported; \
             use a username and password or a registry token"
                .to_string(),
        ),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig::parse(json.as_bytes(), "test").unwrap()
    }

    fn image(text: &str) -> ImageRef {
        text.parse().unwrap()
    }

    fn basic(username: &str, password: &str) -> Credential {
        Credential::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn auth_field_decoded() {
        // base64 of "alice:s3cret:with:colons"
        let parsed =
            config(r#"{"auths":{"reg.example":{"auth":"YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"}}}"#);
        let credential = parsed.credential_for(&image("reg.example/app:1")).unwrap();
        assert_eq!(credential, &basic("alice", "s3cret:with:colons"));
    }

    #[test]
    fn docker_hub_legacy_key_matches() {
        let parsed =
            config(r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}"#);
        assert_eq!(
            parsed.credential_for(&image("nginx")),
            Some(&basic("u", "p"))
        );
        assert_eq!(
            parsed.credential_for(&image("registry-1.docker.io/team/app")),
            Some(&basic("u", "p"))
        );
    }

    #[test]
    fn scheme_and_port_respected() {
        let parsed =
            config(r#"{"auths":{"http://127.0.0.1:5000":{"username":"u","password":"p"}}}"#);
        assert!(
            parsed
                .credential_for(&image("127.0.0.1:5000/app"))
                .is_some()
        );
        assert!(
            parsed
                .credential_for(&image("127.0.0.1:5001/app"))
                .is_none()
        );
    }

    #[test]
    fn most_specific_path_wins() {
        let parsed = config(
            r#"{"auths":{
                "reg.example":{"username":"all","password":"p"},
                "reg.example/team":{"username":"team","password":"p"}}}"#,
        );
        let team = parsed
            .credential_for(&image("reg.example/team/app"))
            .unwrap();
        assert_eq!(team, &basic("team", "p"));
        let other = parsed
            .credential_for(&image("reg.example/teamx/app"))
            .unwrap();
        assert_eq!(other, &basic("all", "p"));
    }

    #[test]
    fn no_match_is_anonymous() {
        let parsed = config(r#"{"auths":{"a.example":{"username":"u","password":"p"}}}"#);
        assert!(parsed.credential_for(&image("b.example/app")).is_none());
    }

    #[test]
    fn errors_hide_secrets() {
        let bad_json = DockerConfig::parse(br#"{"auths":{"a":{"password":"hunter2"#, "s");
        let message = bad_json.err().unwrap().to_string();
        assert!(!message.contains("hunter2"), "{message}");

        let bad_base64 =
            DockerConfig::parse(br#"{"auths":{"a.example":{"auth":"hunter2!!"}}}"#, "s");
        let message = bad_base64.err().unwrap().to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("base64"), "{message}");
    }

    #[test]
    fn debug_redacts_password() {
        let text = format!("{:?}", basic("u", "hunter2"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn identity_token_explained() {
        let result = DockerConfig::parse(br#"{"auths":{"a.example":{"identitytoken":"x"}}}"#, "s");
        let message = result.err().unwrap().to_string();
        assert!(message.contains("identitytoken"), "{message}");
    }
}
