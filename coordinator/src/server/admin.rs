//! A minimal HTTP/1.1 server for the admin API (one request per
//! connection, JSON bodies, bounded sizes and timeouts).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::peers::{submit_write, Peers};
use super::raft_loop::{LoopRequest, ReadView};
use super::wire::{PeerRequest, PeerResponse, WriteReply};
use crate::state::Op;

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time allowed to read a request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP handlers need.
#[derive(Debug)]
pub struct App {
    /// The local raft loop.
    pub requests: mpsc::Sender<LoopRequest>,
    /// The transport to other coordinators (for forwarding writes).
    pub peers: Arc<Peers>,
    /// Client request timeout.
    pub timeout: Duration,
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(stream, app).await {
                        tracing::debug!("http connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, (u16, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err((431, "request head too large".into()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "connection closed mid-request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| (400, "non-UTF-8 head".into()))?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut content_length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v
                    .trim()
                    .parse()
                    .map_err(|_| (400, "bad Content-Length".to_string()))?;
            }
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err((413, "request body too large".into()));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < content_length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "connection closed mid-body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Request { method, path, body })
}

async fn serve_conn(mut stream: TcpStream, app: Arc<App>) -> std::io::Result<()> {
    let (status, body) = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => error(408, "invalid_request", "timed out reading the request"),
        Ok(Err((status, msg))) => error(status, "invalid_request", &msg),
        Ok(Ok(req)) => route(&app, req).await,
    };
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn error(status: u16, kind: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"message": message, "type": kind}}))
}

/// Body of `POST /admin/v1/models`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterModelBody {
    name: String,
    source: String,
    format: String,
    size_bytes: u64,
    desired_replicas: u32,
}

async fn route(app: &App, req: Request) -> (u16, Value) {
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/health") => (200, json!({"status": "ok"})),
        ("GET", "/admin/v1/cluster") => match read(app).await {
            Ok(v) => (200, cluster_json(&v)),
            Err(e) => error(503, "unavailable", &e),
        },
        ("GET", "/admin/v1/models") => match read(app).await {
            Ok(v) => (200, json!({"models": models_json(&v)})),
            Err(e) => error(503, "unavailable", &e),
        },
        ("POST", "/admin/v1/models") => {
            let body: RegisterModelBody = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => return error(400, "invalid_request", &format!("bad JSON body: {e}")),
            };
            write(
                app,
                Op::RegisterModel {
                    name: body.name,
                    source: body.source,
                    format: body.format,
                    size_bytes: body.size_bytes,
                    desired_replicas: body.desired_replicas,
                },
            )
            .await
        }
        ("DELETE", p) if p.starts_with("/admin/v1/models/") => {
            let Some(name) = percent_decode(&p["/admin/v1/models/".len()..]) else {
                return error(
                    400,
                    "invalid_request",
                    "bad percent-encoding in the model name",
                );
            };
            write(app, Op::UnregisterModel { name }).await
        }
        (_, "/health" | "/admin/v1/cluster" | "/admin/v1/models") => {
            error(405, "invalid_request", "method not allowed")
        }
        _ => error(404, "not_found", "no such endpoint"),
    }
}

async fn read(app: &App) -> Result<ReadView, String> {
    let (tx, rx) = oneshot::channel();
    let fut = async {
        app.requests
            .send(LoopRequest::Read { reply: tx })
            .await
            .map_err(|_| "the raft loop has stopped".to_string())?;
        rx.await
            .map_err(|_| "linearizable read timed out (no quorum?)".to_string())?
    };
    tokio::time::timeout(app.timeout, fut)
        .await
        .map_err(|_| "linearizable read timed out (no quorum?)".to_string())?
}

async fn write(app: &App, op: Op) -> (u16, Value) {
    let mut reply = submit_write(&app.requests, op.clone(), app.timeout).await;
    if let WriteReply::NotLeader { leader } = reply {
        reply = if leader == 0 {
            WriteReply::Unavailable {
                message: "no leader known".into(),
            }
        } else {
            let req = PeerRequest::Forward { op };
            let forward = app
                .peers
                .request(leader, &req, app.timeout + Duration::from_secs(1));
            match tokio::time::timeout(app.timeout + Duration::from_secs(2), forward)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
            {
                Ok(PeerResponse::Write(r)) => r,
                Ok(other) => WriteReply::Unavailable {
                    message: format!("unexpected answer from leader {leader}: {other:?}"),
                },
                Err(e) => WriteReply::Unavailable {
                    message: format!("cannot forward to leader {leader}: {e}"),
                },
            }
        };
    }
    match reply {
        WriteReply::Applied(outcome) => (200, json!({"result": outcome})),
        WriteReply::Rejected { status, message } => {
            let kind = match status {
                404 => "not_found",
                409 => "conflict",
                _ => "invalid_request",
            };
            error(status, kind, &message)
        }
        WriteReply::NotLeader { leader } => error(
            503,
            "unavailable",
            &format!("leader changed (now {leader}); retry"),
        ),
        WriteReply::Unavailable { message } => error(503, "unavailable", &message),
    }
}

fn models_json(v: &ReadView) -> Value {
    Value::Array(
        v.state
            .models()
            .iter()
            .map(|(name, m)| {
                json!({
                    "name": name,
                    "source": m.source,
                    "format": m.format,
                    "size_bytes": m.size_bytes,
                    "desired_replicas": m.desired_replicas,
                    "version": m.version,
                })
            })
            .collect(),
    )
}

fn cluster_json(v: &ReadView) -> Value {
    json!({
        "leader_id": v.leader_id,
        "term": v.term,
        "commit_index": v.commit_index,
        "applied_index": v.applied_index,
        "members": v.voters,
        "coordinators": v.state.coordinators(),
        "nodes": v.state.nodes(),
        "models": models_json(v),
        "placements": v.state.placements(),
    })
}

/// Decodes `%XX` escapes of a path segment; `None` if malformed or not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn apply_errors_map_to_statuses() {
        use crate::server::wire::apply_error_status;
        use crate::state::ApplyError;
        assert_eq!(
            apply_error_status(&ApplyError::UnknownModel("m".into())),
            404
        );
        assert_eq!(
            apply_error_status(&ApplyError::TenantExists("t".into())),
            409
        );
        let invalid = ApplyError::InvalidField {
            field: "name",
            reason: "empty".into(),
        };
        assert_eq!(apply_error_status(&invalid), 400);
    }
}
