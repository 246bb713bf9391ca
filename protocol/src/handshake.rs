//! The version handshake: the first stream of every connection carries one
//! [`Hello`] each way (the client writes first), and either side refuses a
//! peer that speaks another [`PROTOCOL_VERSION`], naming both versions,
//! before any request is read. Who the peer is comes from its certificate
//! (see [`crate::tls`]), so the hello carries only versions.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{self, FrameError};

/// The wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 10;

/// The largest [`Hello`] frame accepted.
pub const MAX_HELLO_BYTES: usize = 4096;

/// The first message of a connection, sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The sender's software and version, e.g. `inferno 0.1.0` (for the
    /// error message when versions differ).
    pub software: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            software: concat!("inferno ", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks a protocol version we do not.
    #[error(
        "protocol version mismatch: this build speaks version {ours}, the peer ({software}) \
         speaks {theirs}; run the same Inferno release on every member"
    )]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
        /// The peer's software, as it says.
        software: String,
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
            software: theirs.software.chars().take(64).collect(),
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

    fn future() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            software: "inferno 9.0.0".into(),
        }
    }

    #[test]
    fn check_accepts_same_version_and_refuses_other() {
        check_hello(&Hello::ours(), &Hello::ours()).unwrap();
        let e = check_hello(&Hello::ours(), &future()).unwrap_err();
        assert!(matches!(
            &e,
            HandshakeError::VersionMismatch { ours, theirs, .. }
                if *ours == PROTOCOL_VERSION && *theirs == PROTOCOL_VERSION + 1
        ));
        assert!(e.to_string().contains("inferno 9.0.0"), "{e}");
    }

    #[tokio::test]
    async fn exchange_ok() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let peer =
            tokio::spawn(async move { exchange_hello(&mut br, &mut bw, &Hello::ours(), T).await });
        let got = exchange_hello(&mut ar, &mut aw, &Hello::ours(), T)
            .await
            .unwrap();
        assert_eq!(got, Hello::ours());
        assert_eq!(peer.await.unwrap().unwrap(), Hello::ours());
    }

    #[tokio::test]
    async fn exchange_version_mismatch() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let peer =
            tokio::spawn(async move { exchange_hello(&mut br, &mut bw, &future(), T).await });
        assert!(matches!(
            exchange_hello(&mut ar, &mut aw, &Hello::ours(), T).await,
            Err(HandshakeError::VersionMismatch { theirs, .. }) if theirs == PROTOCOL_VERSION + 1
        ));
        assert!(matches!(
            peer.await.unwrap(),
            Err(HandshakeError::VersionMismatch { ours, .. }) if ours == PROTOCOL_VERSION + 1
        ));
    }

    #[tokio::test]
    async fn exchange_times_out_on_silent_peer() {
        let (a, _b) = tokio::io::duplex(1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        assert!(matches!(
            exchange_hello(&mut ar, &mut aw, &Hello::ours(), Duration::from_millis(50)).await,
            Err(HandshakeError::Frame(FrameError::Timeout(_)))
        ));
    }
}
