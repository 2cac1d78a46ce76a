//! Pieces of the registry token protocol: `WWW-Authenticate` challenges, access scopes and
//! token responses.
//!
//! In registry token authentication, a 401 carries `Bearer realm="…",service="…",scope="…"`.
//! The client then sends a GET to the realm with `service` and one `scope` parameter per
//! repository, with its Basic credentials if it has any. The response is JSON with `token`
//! (or `access_token`) and `expires_in`.

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Token lifetime assumed when the token server gives none, as the token protocol specifies.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme in lowercase, such as `bearer` or `basic`.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Returns a parameter's value; names are case-insensitive.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Parses the challenges of one `WWW-Authenticate` value, such as
/// `Bearer realm="https://auth.example/token",service="registry.example"`.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut parser = Parser {
        text: value.as_bytes(),
        at: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        parser.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let Some(word) = parser.token() else { break };
        parser.skip(|b| b == b' ' || b == b'\t');
        let is_param = parser.peek() == Some(b'=') && parser.peek_at(1) != Some(b'=');
        match (is_param, challenges.last_mut()) {
            (true, Some(challenge)) => {
                parser.at += 1;
                parser.skip(|b| b == b' ' || b == b'\t');
                let value = parser.value().unwrap_or_default();
                challenge.params.push((word.to_ascii_lowercase(), value));
            }
            (true, None) => break,
            (false, _) => {
                challenges.push(Challenge {
                    scheme: word.to_ascii_lowercase(),
                    params: Vec::new(),
                });
            }
        }
    }
    challenges
}

fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&byte)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.at + offset).copied()
    }

    fn skip(&mut self, skip: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&skip) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_token_char) {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
    }

    /// Reads a token or a quoted string with backslash escapes.
    fn value(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return self.token();
        }
        self.at += 1;
        let mut value = Vec::new();
        while let Some(byte) = self.peek() {
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.at += 1;
                    }
                }
                other => value.push(other),
            }
        }
        Some(String::from_utf8_lossy(&value).into_owned())
    }
}

/// Access to one repository, as the token protocol writes it: `repository:NAME:ACTIONS`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub repository: String,
    /// `pull` or `pull,push`.
    pub actions: &'static str,
}

impl Scope {
    pub fn pull(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            actions: "pull",
        }
    }

    pub fn push(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            actions: "pull,push",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository:{}:{}", self.repository, self.actions)
    }
}

/// A token server's response.
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// Returns the token and its lifetime, or `None` when the response has no token.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some((token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_parsed() {
        let challenges = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(challenges.len(), 1);
        let bearer = &challenges[0];
        assert_eq!(bearer.scheme, "bearer");
        assert_eq!(bearer.param("realm"), Some("https://auth.example/token"));
        assert_eq!(bearer.param("service"), Some("registry.example"));
        assert_eq!(bearer.param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn several_challenges_and_escapes() {
        let challenges =
            parse_challenges(r#"Basic realm="a \"quoted\" realm", Bearer realm=https://t.example"#);
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].param("realm"), Some(r#"a "quoted" realm"#));
        assert_eq!(challenges[1].scheme, "bearer");
        assert_eq!(challenges[1].param("REALM"), Some("https://t.example"));
    }

    #[test]
    fn bare_scheme_parsed() {
        let challenges = parse_challenges("Basic");
        assert_eq!(challenges.len(), 1);
        assert!(challenges[0].params.is_empty());
    }

    #[test]
    fn token_response_fields() {
        let parsed: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":30}"#).unwrap();
        assert_eq!(
            parsed.into_token(),
            Some(("abc".to_string(), Duration::from_secs(30)))
        );
        let parsed: TokenResponse = serde_json::from_str(r#"{"token":"t"}"#).unwrap();
        assert_eq!(parsed.into_token().unwrap().1, DEFAULT_TOKEN_LIFETIME);
        let parsed: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert!(parsed.into_token().is_none());
    }
}
