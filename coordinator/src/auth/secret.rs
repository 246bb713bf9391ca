//! API key secrets: `inf-` and 64 hex digits (256 random bits from the
//! operating system), a public id that says nothing about the secret, and
//! the SHA-256 under which the cluster stores a key.

use axum::http::{header, HeaderMap};
use protocol::hex::lower_hex;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every secret.
pub const KEY_PREFIX: &str = "inf-";

/// A freshly made key: the secret (shown once), its hash and its id.
#[derive(Clone)]
pub struct NewKey {
    /// The secret the client sends.
    pub secret: String,
    /// Lower-case hex SHA-256 of the secret.
    pub hash: String,
    /// Public id (`key-` and 12 hex digits).
    pub id: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Lower-case hex SHA-256 of `secret`.
pub fn hash_key(secret: &str) -> String {
    lower_hex(&Sha256::digest(secret.as_bytes()))
}

/// A new random key.
pub fn new_key() -> NewKey {
    let mut secret = [0u8; 32];
    let mut id = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    rand::rngs::OsRng.fill_bytes(&mut id);
    let secret = format!("{KEY_PREFIX}{}", lower_hex(&secret));
    NewKey {
        hash: hash_key(&secret),
        secret,
        id: format!("key-{}", lower_hex(&id)),
    }
}

/// The key a request carries: `Authorization: Bearer KEY` (what the
/// OpenAI clients send) or `x-api-key: KEY`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_stored_by_hash() {
        let a = new_key();
        let b = new_key();
        assert!(a.secret.starts_with(KEY_PREFIX) && a.secret.len() == 4 + 64);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_eq!(a.hash, hash_key(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.secret));
        // The known SHA-256 of "abc".
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_and_x_api_key_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k2"));
    }
}
