//! QUIC with mutual TLS on loopback: who gets served and who is refused.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::frame::{FrameError, MAX_FRAME_BYTES};
use protocol::quic::{self, QuicError};
use protocol::tls::{CertRole, ClusterCa, ALPN_PROTOCOL};
use protocol::{handshake, Hello, PROTOCOL_VERSION};
use quinn::Endpoint;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);
const SERVER_CAP: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    text: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Pong {
    text: String,
    peer: Option<String>,
}

/// A server named "server" that answers every Ping with a Pong naming the
/// client, reporting each stream's outcome on the returned channel.
fn spawn_server(ca: &ClusterCa) -> (SocketAddr, Endpoint, mpsc::UnboundedReceiver<String>) {
    let id = ca.issue("server", CertRole::Coordinator).unwrap();
    let endpoint =
        quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &id, ca.cert_der()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        loop {
            let conn = match quic::accept_connection(&ep, T).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(format!("handshake: {e}"));
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = quic::accept_hello(&conn, T).await {
                    let _ = tx.send(format!("hello: {e}"));
                    return;
                }
                let peer = quic::peer_name(&conn);
                while let Ok(Some((send, recv))) = quic::accept_stream(&conn, T).await {
                    let peer = peer.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let r = quic::serve_stream(send, recv, SERVER_CAP, T, |p: Ping| async {
                            Pong { text: p.text, peer }
                        })
                        .await;
                        let _ = tx.send(match r {
                            Ok(()) => "ok".to_string(),
                            Err(e) => format!("stream: {e:?}"),
                        });
                    });
                }
            });
        }
    });
    (addr, endpoint, rx)
}

async fn shutdown(endpoint: &Endpoint) {
    endpoint.close(quic::CLOSE_NORMAL, b"done");
    let _ = tokio::time::timeout(T, endpoint.wait_idle()).await;
}

#[tokio::test]
async fn member_of_cluster_is_served() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (addr, server, mut outcomes) = spawn_server(&ca);
    let client_id = ca.issue("client-1", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&client_id, ca.cert_der()).unwrap();
    let conn = quic::connect(&client, addr, "server", CertRole::Coordinator, T)
        .await
        .unwrap();
    assert_eq!(quic::peer_name(&conn).as_deref(), Some("server"));
    assert_eq!(
        conn.handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol),
        Some(ALPN_PROTOCOL.to_vec())
    );

    for i in 0..3 {
        let pong: Pong = quic::request(
            &conn,
            &Ping {
                text: format!("hi {i}"),
            },
            MAX_FRAME_BYTES,
            T,
        )
        .await
        .unwrap();
        assert_eq!(
            pong,
            Pong {
                text: format!("hi {i}"),
                peer: Some("client-1".into())
            }
        );
        assert_eq!(outcomes.recv().await.unwrap(), "ok");
    }
    conn.close(quic::CLOSE_NORMAL, b"bye");
    shutdown(&client).await;
    shutdown(&server).await;
}

/// A server of another protocol version is refused by `connect` with both
/// versions named, and the server learns ours.
#[tokio::test]
async fn a_peer_of_another_protocol_version_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server_id = ca.issue("server", CertRole::Coordinator).unwrap();
    let server =
        quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &server_id, ca.cert_der()).unwrap();
    let addr = server.local_addr().unwrap();
    let ep = server.clone();
    let srv = tokio::spawn(async move {
        let conn = quic::accept_connection(&ep, T).await.unwrap().unwrap();
        let (mut send, mut recv) = quic::accept_stream(&conn, T).await.unwrap().unwrap();
        let newer = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            software: "inferno 9.9.9".into(),
        };
        let r = handshake::exchange_hello(&mut recv, &mut send, &newer, T).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(T, conn.closed()).await;
        r
    });
    let client_id = ca.issue("node-7", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&client_id, ca.cert_der()).unwrap();
    let err = quic::connect(&client, addr, "server", CertRole::Coordinator, T)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, QuicError::Handshake(_)), "{err:?}");
    assert!(text.contains("inferno 9.9.9"), "{text}");
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    let theirs = srv.await.unwrap();
    assert!(
        matches!(theirs, Err(handshake::HandshakeError::VersionMismatch { ours, .. }) if ours == PROTOCOL_VERSION + 1),
        "{theirs:?}"
    );
    shutdown(&client).await;
    shutdown(&server).await;
}

/// Connects and sends one request; any refusal along the way is an error.
async fn try_request(client: &Endpoint, addr: SocketAddr, name: &str) -> Result<Pong, QuicError> {
    let conn = quic::connect(client, addr, name, CertRole::Coordinator, T).await?;
    let r = quic::request(
        &conn,
        &Ping {
            text: "let me in".into(),
        },
        MAX_FRAME_BYTES,
        T,
    )
    .await;
    conn.close(quic::CLOSE_NORMAL, b"bye");
    r
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (addr, server, mut outcomes) = spawn_server(&ca);
    let rogue_ca = ClusterCa::generate("rogue").unwrap();
    let rogue = rogue_ca.issue("client-1", CertRole::Node).unwrap();
    // The rogue trusts the real CA, so only the server's check can stop it.
    let client = quic::client_endpoint(&rogue, ca.cert_der()).unwrap();
    let r = try_request(&client, addr, "server").await;
    assert!(
        matches!(r, Err(QuicError::Connection(_))),
        "rogue client got {r:?}"
    );
    let outcome = outcomes.recv().await.unwrap();
    assert!(outcome.starts_with("handshake:"), "{outcome}");
    shutdown(&client).await;
    shutdown(&server).await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (addr, server, mut outcomes) = spawn_server(&ca);
    let mut tls = rustls::ClientConfig::builder_with_provider(protocol::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(ca.root_store().unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let client = quic::client_endpoint_with_tls("127.0.0.1:0".parse().unwrap(), tls).unwrap();
    let r = try_request(&client, addr, "server").await;
    assert!(
        matches!(r, Err(QuicError::Connection(_))),
        "anonymous client got {r:?}"
    );
    let outcome = outcomes.recv().await.unwrap();
    assert!(outcome.starts_with("handshake:"), "{outcome}");
    shutdown(&client).await;
    shutdown(&server).await;
}

#[tokio::test]
async fn server_with_wrong_name_is_refused_by_client() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (addr, server, _outcomes) = spawn_server(&ca);
    let id = ca.issue("client-1", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&id, ca.cert_der()).unwrap();
    let r = quic::connect(&client, addr, "not-the-server", CertRole::Coordinator, T).await;
    assert!(matches!(r, Err(QuicError::Connection(_))), "got {r:?}");
    shutdown(&client).await;
    shutdown(&server).await;
}

#[tokio::test]
async fn oversized_frame_kills_only_its_stream() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (addr, server, mut outcomes) = spawn_server(&ca);
    let id = ca.issue("client-1", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&id, ca.cert_der()).unwrap();
    let conn = quic::connect(&client, addr, "server", CertRole::Coordinator, T)
        .await
        .unwrap();

    // A header announcing 1 GiB, far above the server's cap, and some bytes.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    let _ = send.finish();
    let r = protocol::frame::read_frame::<_, Pong>(&mut recv, MAX_FRAME_BYTES, T).await;
    assert!(
        matches!(r, Err(FrameError::Io(_)) | Err(FrameError::Closed)),
        "expected the stream to be reset, got {r:?}"
    );
    let outcome = outcomes.recv().await.unwrap();
    assert!(outcome.contains("TooLarge"), "{outcome}");

    // The same connection still serves new streams.
    let pong: Pong = quic::request(
        &conn,
        &Ping {
            text: "still there?".into(),
        },
        MAX_FRAME_BYTES,
        T,
    )
    .await
    .unwrap();
    assert_eq!(pong.text, "still there?");
    assert_eq!(outcomes.recv().await.unwrap(), "ok");

    // A request larger than the cap is refused before anything is sent.
    let big = "x".repeat(4096);
    let r: Result<Pong, _> = quic::request(&conn, &Ping { text: big }, 1024, T).await;
    assert!(
        matches!(r, Err(QuicError::Frame(FrameError::TooLarge { .. }))),
        "got {r:?}"
    );
    conn.close(quic::CLOSE_NORMAL, b"bye");
    shutdown(&client).await;
    shutdown(&server).await;
}

/// A client that expects a coordinator refuses a server holding a node
/// certificate of the right name, and a server requiring a coordinator
/// refuses a node's connection.
#[tokio::test]
async fn certificates_of_the_wrong_role_are_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let impostor = ca.issue("coordinator-2", CertRole::Node).unwrap();
    let server =
        quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &impostor, ca.cert_der()).unwrap();
    let addr = server.local_addr().unwrap();
    let ep = server.clone();
    let srv = tokio::spawn(async move {
        let conn = quic::accept_connection(&ep, T).await.unwrap().unwrap();
        quic::require_role(&conn, CertRole::Coordinator)
    });
    let node = ca.issue("node-1", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&node, ca.cert_der()).unwrap();
    let r = quic::connect(&client, addr, "coordinator-2", CertRole::Coordinator, T).await;
    match r {
        Err(QuicError::WrongRole { expected, found }) => {
            assert_eq!(expected, CertRole::Coordinator);
            assert!(found.contains("node"), "{found}");
        }
        other => panic!("a node certificate passed for a coordinator: {other:?}"),
    }
    let served = srv.await.unwrap();
    assert!(
        matches!(served, Err(QuicError::WrongRole { .. })),
        "{served:?}"
    );
    shutdown(&client).await;
    shutdown(&server).await;
}

/// A certificate replaced in the slot (rotation) is presented from the
/// next connection on; one of another member name is refused.
#[tokio::test]
async fn a_rotated_certificate_is_presented_from_the_next_connection() {
    use protocol::rotation;
    use protocol::tls::{cert_fingerprint, IdentitySlot};
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("cluster").unwrap();
    let first = ca.issue("server", CertRole::Coordinator).unwrap();
    let slot = IdentitySlot::new(&first).unwrap();
    let server =
        quic::server_endpoint_with("127.0.0.1:0".parse().unwrap(), slot.clone(), ca.cert_der())
            .unwrap();
    let addr = server.local_addr().unwrap();
    let ep = server.clone();
    tokio::spawn(async move {
        while let Ok(Some(conn)) = quic::accept_connection(&ep, T).await {
            tokio::spawn(async move {
                let _ = quic::accept_hello(&conn, T).await;
                let _ = conn.closed().await;
            });
        }
    });
    let client_id = ca.issue("node-1", CertRole::Node).unwrap();
    let client = quic::client_endpoint(&client_id, ca.cert_der()).unwrap();
    let before = quic::connect(&client, addr, "server", CertRole::Coordinator, T)
        .await
        .unwrap();
    assert_eq!(
        quic::peer_fingerprint(&before),
        Some(cert_fingerprint(first.cert_der()))
    );

    let second = ca.issue("server", CertRole::Coordinator).unwrap();
    second.save(dir.path(), false).unwrap();
    let fp = rotation::reload(&slot, dir.path(), "server").unwrap();
    assert_eq!(fp, cert_fingerprint(second.cert_der()));
    let after = quic::connect(&client, addr, "server", CertRole::Coordinator, T)
        .await
        .unwrap();
    assert_eq!(quic::peer_fingerprint(&after), Some(fp));
    // The connection made before keeps the certificate it was made with.
    assert_eq!(
        quic::peer_fingerprint(&before),
        Some(cert_fingerprint(first.cert_der()))
    );

    let stranger = ca.issue("someone-else", CertRole::Coordinator).unwrap();
    assert!(slot.replace(&stranger).is_err());
    before.close(quic::CLOSE_NORMAL, b"bye");
    after.close(quic::CLOSE_NORMAL, b"bye");
    shutdown(&client).await;
    shutdown(&server).await;
}
