//! Operator-level settings: which registries may be reached and how. They come from the
//! controller's command line, never from an ImageCopy, so a user who can create ImageCopy
//! objects cannot point the controller at an insecure or forbidden endpoint.

use crate::copy::reference::registry_key;
use crate::copy::{ConnectOptions, DEFAULT_CHUNK_SIZE, ForeignLayers, UploadMode};

#[derive(Clone, Debug)]
pub struct Settings {
    /// Plain-HTTP hosts, unverified-TLS hosts and extra CA certificates.
    pub connect: ConnectOptions,
    /// Registry hosts that may be used; empty allows every host not denied. An entry
    /// `*.example.com` matches every subdomain of example.com.
    pub allowed_registries: Vec<String>,
    /// Registry hosts that may never be used, checked before the allow list.
    pub denied_registries: Vec<String>,
    /// Blob transfers in flight per copy.
    pub jobs: usize,
    /// ImageCopy objects reconciled at once.
    pub concurrency: u16,
    /// Streaming uploads with a chunked fallback, or chunked uploads only.
    pub upload_mode: UploadMode,
    /// Bytes per PATCH of a chunked upload.
    pub chunk_size: usize,
    /// Whether non-distributable layers are left out or copied.
    pub foreign_layers: ForeignLayers,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect: ConnectOptions::default(),
            allowed_registries: Vec::new(),
            denied_registries: Vec::new(),
            jobs: crate::copy::DEFAULT_JOBS,
            concurrency: 4,
            upload_mode: UploadMode::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            foreign_layers: ForeignLayers::default(),
        }
    }
}

impl Settings {
    /// True when the registry policy lets the controller use `host`.
    pub fn registry_allowed(&self, host: &str) -> bool {
        let host = registry_key(host).to_ascii_lowercase();
        if self
            .denied_registries
            .iter()
            .any(|pattern| host_matches(pattern, &host))
        {
            return false;
        }
        self.allowed_registries.is_empty()
            || self
                .allowed_registries
                .iter()
                .any(|pattern| host_matches(pattern, &host))
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let pattern = registry_key(&pattern);
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_limits_hosts() {
        let settings = Settings {
            allowed_registries: vec!["*.corp.example".into(), "docker.io".into()],
            ..Settings::default()
        };
        assert!(settings.registry_allowed("reg.corp.example"));
        assert!(settings.registry_allowed("index.docker.io"));
        assert!(!settings.registry_allowed("corp.example"));
        assert!(!settings.registry_allowed("other.example"));
    }

    #[test]
    fn deny_list_wins() {
        let settings = Settings {
            allowed_registries: vec!["*.example".into()],
            denied_registries: vec!["bad.example".into()],
            ..Settings::default()
        };
        assert!(!settings.registry_allowed("BAD.example"));
        assert!(settings.registry_allowed("good.example"));
    }

    #[test]
    fn empty_lists_allow_all() {
        assert!(Settings::default().registry_allowed("127.0.0.1:5000"));
    }
}
