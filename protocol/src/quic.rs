//! QUIC endpoints with mutual TLS, and one-request-per-stream helpers.
//!
//! Servers require a client certificate issued by the cluster CA; clients
//! require the server's certificate to be issued by it and to name the member
//! they asked for. Each request uses its own bidirectional stream: the client
//! writes one frame and finishes its side, the server answers with one frame
//! and finishes. Every wait is bounded by a timeout, and the transport closes
//! connections idle for [`IDLE_TIMEOUT`] while sending keep-alives every
//! [`KEEP_ALIVE_INTERVAL`].
//!
//! Every connection starts with the version handshake on its first stream
//! ([`connect`] on the client, [`accept_hello`] on the server) and a check
//! of the peer certificate's role ([`require_role`]).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls_pki_types::CertificateDer;
use serde::{de::DeserializeOwned, Serialize};

use crate::frame::{self, FrameError};
use crate::handshake::{exchange_hello, Hello};
use crate::tls::{self, MemberIdentity, TlsError};

/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep-alive packets are sent this often on otherwise idle connections.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Application error code sent when a stream is abandoned because its frame
/// was invalid (too large, truncated, undecodable) or timed out.
pub const STREAM_ERROR_BAD_FRAME: VarInt = VarInt::from_u32(1);

/// Application error code used when closing a connection normally.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);

/// Why a QUIC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS configuration is not usable for QUIC (it must allow TLS 1.3).
    #[error("TLS configuration unusable for QUIC: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The connection attempt could not start.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (including TLS refusals).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream was already finished or reset.
    #[error("stream closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A frame could not be written or read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The version handshake failed (another protocol version, or no
    /// hello in time).
    #[error(transparent)]
    Handshake(#[from] crate::handshake::HandshakeError),
    /// The peer's certificate is not of the role this exchange needs.
    #[error("the peer's certificate is {found}, not a {expected} certificate")]
    WrongRole {
        /// The role needed.
        expected: tls::CertRole,
        /// What the certificate says (`no role` when it names none).
        found: String,
    },
}

/// Checks that the peer's certificate names `role`; otherwise closes the
/// connection with the reason and says why.
pub fn require_role(conn: &Connection, role: tls::CertRole) -> Result<(), QuicError> {
    match peer_role(conn) {
        Some(r) if r == role => Ok(()),
        other => {
            let found = other.map_or_else(
                || "a certificate with no role".to_string(),
                |r| format!("a {r} certificate"),
            );
            let reason = format!("a {role} certificate is needed, not {found}");
            conn.close(CLOSE_NORMAL, reason.as_bytes());
            Err(QuicError::WrongRole {
                expected: role,
                found,
            })
        }
    }
}

/// The transport settings shared by clients and servers: idle timeout and
/// keep-alive.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // 30 s is far below the 2^62 ms limit, so the conversion cannot fail;
    // fall back to quinn's default if it somehow did.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    Arc::new(t)
}

/// A server endpoint bound to `bind`, presenting `identity` and accepting
/// only clients whose certificate was issued by `ca_cert`.
pub fn server_endpoint(
    bind: SocketAddr,
    identity: &MemberIdentity,
    ca_cert: &CertificateDer<'static>,
) -> Result<Endpoint, QuicError> {
    server_endpoint_with(bind, tls::IdentitySlot::new(identity)?, ca_cert)
}

/// [`server_endpoint`] presenting what `slot` holds (replaceable while it
/// runs, see [`tls::IdentitySlot`]).
pub fn server_endpoint_with(
    bind: SocketAddr,
    slot: Arc<tls::IdentitySlot>,
    ca_cert: &CertificateDer<'static>,
) -> Result<Endpoint, QuicError> {
    let tls = tls::server_config_with(slot, ca_cert)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    Endpoint::server(cfg, bind).map_err(|source| QuicError::Bind { addr: bind, source })
}

/// A client endpoint on an ephemeral IPv4 port, presenting `identity` and
/// trusting only servers whose certificate was issued by `ca_cert`.
pub fn client_endpoint(
    identity: &MemberIdentity,
    ca_cert: &CertificateDer<'static>,
) -> Result<Endpoint, QuicError> {
    client_endpoint_with(tls::IdentitySlot::new(identity)?, ca_cert)
}

/// [`client_endpoint`] presenting what `slot` holds (replaceable while it
/// runs, see [`tls::IdentitySlot`]).
pub fn client_endpoint_with(
    slot: Arc<tls::IdentitySlot>,
    ca_cert: &CertificateDer<'static>,
) -> Result<Endpoint, QuicError> {
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    client_endpoint_with_tls(bind, tls::client_config_with(slot, ca_cert)?)
}

/// A client endpoint bound to `bind` with a caller-built rustls
/// configuration (which must allow TLS 1.3 and should set [`tls::ALPN_PROTOCOL`]).
pub fn client_endpoint_with_tls(
    bind: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<Endpoint, QuicError> {
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport_config());
    let mut endpoint =
        Endpoint::client(bind).map_err(|source| QuicError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// Connects to `addr`, expecting the server's certificate to name
/// `server_name` and `role`, within `timeout`.
///
/// With TLS 1.3 the server checks the client certificate after the client
/// considers the handshake done, so a refused client may only see the
/// refusal on its first request.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    role: tls::CertRole,
    timeout: Duration,
) -> Result<Connection, QuicError> {
    let connecting = endpoint.connect(addr, server_name)?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| QuicError::Timeout(timeout))??;
    require_role(&conn, role)?;
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        exchange_hello(&mut recv, &mut send, &Hello::ours(), timeout).await?;
        send.finish()?;
        Ok::<(), QuicError>(())
    };
    if let Err(e) = hello.await {
        // A server that refused our certificate closed the connection
        // during the hello: that refusal is the error to report.
        if let Some(reason) = conn.close_reason() {
            return Err(QuicError::Connection(reason));
        }
        conn.close(CLOSE_NORMAL, e.to_string().as_bytes());
        return Err(e);
    }
    Ok(conn)
}

/// The server's half of the version handshake: reads the client's
/// [`Hello`] on the connection's first stream and answers with ours, within
/// `timeout`. A client of another version (or a silent one) gets the
/// connection closed with the reason. Call it once per accepted connection,
/// before serving its streams (in the connection's own task, so that a
/// slow client does not hold up the accept loop).
pub async fn accept_hello(conn: &Connection, timeout: Duration) -> Result<(), QuicError> {
    let hello = async {
        let (mut send, mut recv) = tokio::time::timeout(timeout, conn.accept_bi())
            .await
            .map_err(|_| QuicError::Timeout(timeout))??;
        exchange_hello(&mut recv, &mut send, &Hello::ours(), timeout).await?;
        send.finish()?;
        Ok::<(), QuicError>(())
    };
    let r = hello.await;
    if let Err(e) = &r {
        conn.close(CLOSE_NORMAL, e.to_string().as_bytes());
    }
    r
}

/// The peer's member name: the first DNS subject alternative name of the
/// certificate it presented (already verified against the cluster CA).
pub fn peer_name(conn: &Connection) -> Option<String> {
    tls::cert_dns_names(&peer_cert(conn)?)
        .ok()?
        .into_iter()
        .next()
}

/// The fingerprint of the peer's certificate ([`tls::cert_fingerprint`]).
pub fn peer_fingerprint(conn: &Connection) -> Option<String> {
    Some(tls::cert_fingerprint(&peer_cert(conn)?))
}

/// The role the peer's certificate names ([`tls::CertRole`]), if any.
pub fn peer_role(conn: &Connection) -> Option<tls::CertRole> {
    tls::cert_role(&peer_cert(conn)?).ok()?
}

/// The certificate the peer presented (the leaf of its chain).
fn peer_cert(conn: &Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// Sends one request on a new bidirectional stream and reads one response,
/// all within `timeout`. Frames in both directions are capped at `max_len`.
///
/// If the connection was closed (including by the server refusing our
/// certificate) the error is [`QuicError::Connection`] with the reason.
pub async fn request<Req, Resp>(
    conn: &Connection,
    req: &Req,
    max_len: usize,
    timeout: Duration,
) -> Result<Resp, QuicError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(&mut send, req, max_len, timeout).await?;
        send.finish()?;
        let resp = frame::read_frame(&mut recv, max_len, timeout).await;
        if resp.is_err() {
            // Best effort: the stream may already be gone.
            let _ = recv.stop(STREAM_ERROR_BAD_FRAME);
        }
        Ok::<Resp, QuicError>(resp?)
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| QuicError::Timeout(timeout))?;
    match result {
        // A stream error caused by the connection going away (for example
        // the server refusing our certificate) is reported as that.
        Err(QuicError::Frame(FrameError::Io(_)) | QuicError::ClosedStream(_)) => {
            match conn.close_reason() {
                Some(reason) => Err(QuicError::Connection(reason)),
                None => result,
            }
        }
        other => other,
    }
}

/// Serves one request on an accepted bidirectional stream: reads one frame
/// (capped at `max_len`, within `timeout`), calls `handler`, writes its answer
/// and finishes the stream.
///
/// An invalid request frame (too large, truncated, undecodable, late) aborts
/// this stream in both directions with [`STREAM_ERROR_BAD_FRAME`] and returns
/// the error; the connection and its other streams are unaffected.
pub async fn serve_stream<Req, Resp, F, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    max_len: usize,
    timeout: Duration,
    handler: F,
) -> Result<(), QuicError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let req: Req = match frame::read_frame(&mut recv, max_len, timeout).await {
        Ok(r) => r,
        Err(e) => {
            let _ = recv.stop(STREAM_ERROR_BAD_FRAME);
            let _ = send.reset(STREAM_ERROR_BAD_FRAME);
            return Err(e.into());
        }
    };
    let resp = handler(req).await;
    if let Err(e) = frame::write_frame(&mut send, &resp, max_len, timeout).await {
        let _ = send.reset(STREAM_ERROR_BAD_FRAME);
        return Err(e.into());
    }
    send.finish()?;
    Ok(())
}

/// Accepts the next bidirectional stream of `conn`, within `timeout`.
/// `Ok(None)` means the peer closed the connection normally.
pub async fn accept_stream(
    conn: &Connection,
    timeout: Duration,
) -> Result<Option<(SendStream, RecvStream)>, QuicError> {
    match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Err(_) => Err(QuicError::Timeout(timeout)),
        Ok(Ok(s)) => Ok(Some(s)),
        Ok(Err(quinn::ConnectionError::ApplicationClosed(_)))
        | Ok(Err(quinn::ConnectionError::LocallyClosed)) => Ok(None),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Accepts an incoming connection and completes its handshake within
/// `timeout`. `Ok(None)` means the endpoint was closed.
///
/// Waiting for the next connection attempt is not bounded (a server waits
/// for clients); close the endpoint to stop it. The TLS handshake of an
/// attempt that has arrived is bounded by `timeout`; a refused client
/// certificate gives [`QuicError::Connection`].
pub async fn accept_connection(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<Option<Connection>, QuicError> {
    let Some(incoming) = endpoint.accept().await else {
        return Ok(None);
    };
    let conn = tokio::time::timeout(timeout, incoming)
        .await
        .map_err(|_| QuicError::Timeout(timeout))??;
    Ok(Some(conn))
}
