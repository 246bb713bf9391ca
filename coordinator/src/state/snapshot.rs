//! Snapshots of the cluster state, for raft log compaction and for
//! bringing a new or lagging coordinator up to date.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content                                   |
//! |-------|-------------------------------------------|
//! | 8     | magic `b"INFSNAP\0"`                      |
//! | 4     | format version, [`SNAPSHOT_VERSION`]      |
//! | 8     | payload length                            |
//! | 32    | SHA-256 of the payload                    |
//! | n     | payload: the [`ClusterState`] in bincode 2 |
//!
//! A snapshot with a wrong magic, version, length or checksum is refused,
//! so a corrupt snapshot is never installed.

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::machine::ClusterState;

/// Magic bytes at the start of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"INFSNAP\0";

/// The snapshot format version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 4;

/// Largest snapshot payload accepted (1 GiB).
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Why a snapshot could not be written or restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The input is shorter than the header.
    #[error("snapshot is truncated ({0} bytes)")]
    Truncated(usize),
    /// The input does not start with [`SNAPSHOT_MAGIC`].
    #[error("not an Inferno snapshot (bad magic)")]
    BadMagic,
    /// The snapshot was written by a format version this code does not know.
    #[error("unsupported snapshot version {version} (this coordinator reads {supported})")]
    UnsupportedVersion {
        /// Version found in the header.
        version: u32,
        /// The version this code reads, [`SNAPSHOT_VERSION`].
        supported: u32,
    },
    /// The payload length in the header does not match the input.
    #[error("snapshot payload length {declared} does not match the {actual} bytes present")]
    LengthMismatch {
        /// Length declared in the header.
        declared: u64,
        /// Bytes actually present after the header.
        actual: usize,
    },
    /// The payload exceeds [`MAX_SNAPSHOT_BYTES`].
    #[error("snapshot payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload's SHA-256 does not match the header: the snapshot is
    /// corrupt.
    #[error("snapshot checksum mismatch: the snapshot is corrupt")]
    ChecksumMismatch,
    /// The payload could not be encoded or decoded.
    #[error("snapshot payload: {0}")]
    Payload(String),
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_SNAPSHOT_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>()
}

/// Serializes the state into a self-checking snapshot.
///
/// Deterministic: equal states give byte-identical snapshots. Fails only if
/// the payload exceeds [`MAX_SNAPSHOT_BYTES`].
pub fn snapshot(state: &ClusterState) -> Result<Vec<u8>, SnapshotError> {
    let payload = bincode::serde::encode_to_vec(state, config())
        .map_err(|e| SnapshotError::Payload(e.to_string()))?;
    if payload.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Restores a state from a snapshot written by [`snapshot`], verifying the
/// header and checksum first.
pub fn restore(bytes: &[u8]) -> Result<ClusterState, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated(bytes.len()));
    }
    let (magic, rest) = bytes.split_at(8);
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let (version, rest) = rest.split_at(4);
    let mut v = [0u8; 4];
    v.copy_from_slice(version);
    let version = u32::from_le_bytes(v);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let (len, rest) = rest.split_at(8);
    let mut l = [0u8; 8];
    l.copy_from_slice(len);
    let declared = u64::from_le_bytes(l);
    let (checksum, payload) = rest.split_at(32);
    if declared != payload.len() as u64 {
        return Err(SnapshotError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    if payload.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge(payload.len()));
    }
    if Sha256::digest(payload).as_slice() != checksum {
        return Err(SnapshotError::ChecksumMismatch);
    }
    let (state, used): (ClusterState, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| SnapshotError::Payload(e.to_string()))?;
    if used != payload.len() {
        return Err(SnapshotError::Payload(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(state)
}
