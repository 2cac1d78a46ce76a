//! Content digests: validation of `algorithm:hex` strings and hashing in the algorithm a
//! digest names.
//!
//! The OCI image spec registers sha256 and sha512 (and reserves sha384 as a valid
//! identifier), all with lowercase hex. A digest is checked before it is used in a URL, so a
//! manifest cannot smuggle path segments into a request.

use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// A supported digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Checks a digest string and returns its algorithm. The error names the problem, without
/// repeating the digest.
pub fn parse(digest: &str) -> Result<Algorithm, String> {
    let (name, hex) = digest
        .split_once(':')
        .ok_or_else(|| "a digest is ALGORITHM:HEX, such as sha256:<64 hex digits>".to_string())?;
    let algorithm = match name {
        "sha256" => Algorithm::Sha256,
        "sha384" => Algorithm::Sha384,
        "sha512" => Algorithm::Sha512,
        other => {
            return Err(format!(
                "digest algorithm {other:?} is not supported; use sha256, sha384 or sha512"
            ));
        }
    };
    if hex.len() != algorithm.hex_len() {
        return Err(format!(
            "a {} digest has {} hex digits, not {}",
            algorithm.name(),
            algorithm.hex_len(),
            hex.len()
        ));
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("a digest's hex digits must be 0-9 and lowercase a-f".to_string());
    }
    Ok(algorithm)
}

/// An incremental hash in one of the supported algorithms.
pub enum Hasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Sha384(hasher) => hasher.update(bytes),
            Hasher::Sha512(hasher) => hasher.update(bytes),
        }
    }

    /// Returns the digest as `algorithm:hex`.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(hasher) => format!("sha256:{}", hex::encode(hasher.finalize())),
            Hasher::Sha384(hasher) => format!("sha384:{}", hex::encode(hasher.finalize())),
            Hasher::Sha512(hasher) => format!("sha512:{}", hex::encode(hasher.finalize())),
        }
    }
}

/// Returns the digest of `bytes` in `algorithm`.
pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> String {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

/// True when `digest` is valid and is the digest of `bytes` in its own algorithm.
pub fn matches(bytes: &[u8], digest: &str) -> bool {
    parse(digest).is_ok_and(|algorithm| compute(algorithm, bytes) == digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_algorithm_length_and_case() {
        assert_eq!(
            parse(&format!("sha256:{}", "a".repeat(64))),
            Ok(Algorithm::Sha256)
        );
        assert_eq!(
            parse(&format!("sha512:{}", "0".repeat(128))),
            Ok(Algorithm::Sha512)
        );
        assert!(parse(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(parse(&format!("md5:{}", "a".repeat(32))).is_err());
        assert!(parse("sha256:../../etc").is_err());
        assert!(parse("sha256").is_err());
    }

    #[test]
    fn compute_sha512_known_value() {
        // sha512 of the empty string, from FIPS 180-4 test vectors.
        let empty = compute(Algorithm::Sha512, b"");
        assert!(empty.starts_with("sha512:cf83e1357eefb8bdf1542850d66d8007d620e405"));
        assert!(matches(b"", &empty));
        assert!(!matches(b"x", &empty));
    }
}
