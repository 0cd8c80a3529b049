//! API keys: clients present a key, stores hold only its SHA-256. Keys are long random
//! strings, so a fast hash is enough (no password-style stretching is needed).

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The stored form of an API key.
pub fn hash_api_key(key: &str) -> String {
    sha256_hex(key.as_bytes())
}

/// A new random API key: `fry_` and 32 bytes of randomness in hex.
pub fn generate_api_key() -> String {
    let a = ulid::Ulid::new().random();
    let b = ulid::Ulid::new().random();
    format!("fry_{a:032x}{b:032x}")
}

/// Extracts the key from an `Authorization: Bearer <key>` value.
pub fn bearer_key(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = rest.trim();
    let ok = !key.is_empty() && key.len() <= 256 && key.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_key("Bearer abc"), Some("abc"));
        assert_eq!(bearer_key("bearer  abc "), Some("abc"));
        assert_eq!(bearer_key("Basic abc"), None);
        assert_eq!(bearer_key("Bearer "), None);
        assert_eq!(bearer_key("Bearer a b"), None);
    }

    #[test]
    fn keys_are_random_and_hash_stably() {
        let k1 = generate_api_key();
        assert_ne!(k1, generate_api_key());
        assert_eq!(hash_api_key(&k1), hash_api_key(&k1));
        assert_eq!(hash_api_key(&k1).len(), 64);
    }
}
