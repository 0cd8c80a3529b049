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

/// Compares two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
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
    fn hmac_matches_rfc_4231() {
        // Test cases 1, 2 and 6 (a key longer than the block).
        let cases: [(&[u8], &[u8], &str); 3] = [
            (&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, message, want) in cases {
            assert_eq!(hex::encode(hmac_sha256(key, message)), want);
        }
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }

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
