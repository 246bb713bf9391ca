//! Content-addressed blobs (global checkpoints) on a coordinator's disk:
//! named by the SHA-256 of their bytes, written atomically and fsync'd.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Largest blob accepted from a peer.
pub const MAX_BLOB_BYTES: usize = 16 * 1024 * 1024;

/// Lower-case hex SHA-256 of `bytes`.
pub fn hash(bytes: &[u8]) -> String {
    protocol::hex::lower_hex(&Sha256::digest(bytes))
}

/// Blobs under one directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BlobStore { dir: dir.into() }
    }

    fn path(&self, hash: &str) -> Option<PathBuf> {
        let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(format!("{hash}.bin")))
    }

    /// Stores `bytes` and returns their hash.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let h = hash(bytes);
        self.put_checked(&h, bytes)?;
        Ok(h)
    }

    /// Stores `bytes` under `expected` after checking that it is their hash.
    pub fn put_checked(&self, expected: &str, bytes: &[u8]) -> std::io::Result<()> {
        let Some(path) = self.path(expected) else {
            return Err(std::io::Error::other("not a SHA-256 hex digest"));
        };
        if hash(bytes) != expected {
            return Err(std::io::Error::other(
                "blob content does not match its hash",
            ));
        }
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{expected}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The blob named `hash`, if stored here and intact.
    pub fn get(&self, hash: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(hash)?).ok()?;
        (self::hash(&bytes) == hash).then_some(bytes)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path().join("blobs"));
        let h = store.put(b"weights").unwrap();
        assert_eq!(store.get(&h).as_deref(), Some(&b"weights"[..]));
        assert!(
            store.put_checked(&h, b"other").is_err(),
            "wrong content refused"
        );
        assert!(store.get("../../etc/passwd").is_none(), "not a hash");
        // A corrupted file is not returned.
        std::fs::write(dir.path().join("blobs").join(format!("{h}.bin")), b"rot").unwrap();
        assert!(store.get(&h).is_none());
    }
}
