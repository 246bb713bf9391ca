//! The version handshake: the first frame each side sends on a stream is a
//! [`Hello`]; each side reads the peer's and refuses an incompatible version.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{self, FrameError};

/// The wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest [`Hello`] frame accepted.
pub const MAX_HELLO_BYTES: usize = 4096;

/// What a peer is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A coordinator: schedules requests and manages membership.
    Coordinator,
    /// A node: runs models.
    Node,
    /// A client: submits requests.
    Client,
}

/// The first message on a stream, sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// What the sender is.
    pub role: Role,
    /// The sender's member name or client id.
    pub id: String,
}

impl Hello {
    /// A hello for this build's protocol version.
    pub fn new(role: Role, id: impl Into<String>) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            role,
            id: id.into(),
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks a protocol version we do not.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The hello could not be sent or received.
    #[error("handshake failed: {0}")]
    Frame(#[from] FrameError),
}

/// Checks the peer's hello against ours. Versions must be equal.
pub fn check_hello(ours: &Hello, theirs: &Hello) -> Result<(), HandshakeError> {
    if ours.protocol_version != theirs.protocol_version {
        return Err(HandshakeError::VersionMismatch {
            ours: ours.protocol_version,
            theirs: theirs.protocol_version,
        });
    }
    Ok(())
}

/// Sends `ours`, reads the peer's hello and checks it, each step within
/// `timeout`. Returns the peer's hello.
pub async fn exchange_hello<R, W>(
    reader: &mut R,
    writer: &mut W,
    ours: &Hello,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    frame::write_frame(writer, ours, MAX_HELLO_BYTES, timeout).await?;
    let theirs: Hello = frame::read_frame(reader, MAX_HELLO_BYTES, timeout).await?;
    check_hello(ours, &theirs)?;
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn check_accepts_same_version_and_refuses_other() {
        let a = Hello::new(Role::Node, "n1");
        let b = Hello::new(Role::Coordinator, "c1");
        check_hello(&a, &b).unwrap();
        let old = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            ..b
        };
        assert!(matches!(
            check_hello(&a, &old),
            Err(HandshakeError::VersionMismatch { ours, theirs })
                if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1
        ));
    }

    #[tokio::test]
    async fn exchange_ok() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let node = Hello::new(Role::Node, "node-1");
        let coord = Hello::new(Role::Coordinator, "coord-1");
        let (n2, c2) = (node.clone(), coord.clone());
        let peer = tokio::spawn(async move { exchange_hello(&mut br, &mut bw, &c2, T).await });
        let got = exchange_hello(&mut ar, &mut aw, &n2, T).await.unwrap();
        assert_eq!(got, coord);
        assert_eq!(peer.await.unwrap().unwrap(), node);
    }

    #[tokio::test]
    async fn exchange_version_mismatch() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let future = Hello {
            protocol_version: 99,
            ..Hello::new(Role::Client, "cli")
        };
        let peer = tokio::spawn(async move { exchange_hello(&mut br, &mut bw, &future, T).await });
        let ours = Hello::new(Role::Coordinator, "c");
        assert!(matches!(
            exchange_hello(&mut ar, &mut aw, &ours, T).await,
            Err(HandshakeError::VersionMismatch { theirs: 99, .. })
        ));
        assert!(matches!(
            peer.await.unwrap(),
            Err(HandshakeError::VersionMismatch { ours: 99, .. })
        ));
    }

    #[tokio::test]
    async fn exchange_times_out_on_silent_peer() {
        let (a, _b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let ours = Hello::new(Role::Node, "n");
        assert!(matches!(
            exchange_hello(&mut ar, &mut aw, &ours, Duration::from_millis(50)).await,
            Err(HandshakeError::Frame(FrameError::Timeout(_)))
        ));
    }
}
