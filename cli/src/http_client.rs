//! A small blocking HTTP/1.1 client for the coordinators' admin API, written
//! by hand over `std::net::TcpStream` (one request per connection, bounded
//! by timeouts), for benchmarks and tests that must not depend on an async
//! runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or receiving failed (includes timeouts).
    #[error("transport error talking to {addr}: {source}")]
    Transport {
        /// The server.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer was not an HTTP response with a JSON body.
    #[error("malformed answer from {addr}: {detail}")]
    Malformed {
        /// The server.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

impl HttpError {
    /// Whether the request may have reached the server and been acted upon
    /// (anything but a failure to connect).
    pub fn maybe_delivered(&self) -> bool {
        match self {
            HttpError::Transport { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ),
            HttpError::Malformed { .. } => true,
        }
    }
}

/// Sends one request (`Connection: close`), with `key` as a bearer token
/// when given, and returns the status code and the JSON body
/// (`Value::Null` when the body is empty). `timeout` bounds connecting and
/// each read or write.
pub fn request(
    addr: SocketAddr,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), HttpError> {
    let transport = |source| HttpError::Transport { addr, source };
    let malformed = |detail: String| HttpError::Malformed { addr, detail };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(transport)?;
    s.set_read_timeout(Some(timeout)).map_err(transport)?;
    s.set_write_timeout(Some(timeout)).map_err(transport)?;
    let _ = s.set_nodelay(true);
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(transport)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(transport)?;
    let text = String::from_utf8(resp).map_err(|e| malformed(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| malformed("bad chunked body".into()))?
    } else {
        body.to_string()
    };
    if body.trim().is_empty() {
        return Ok((status, Value::Null));
    }
    let value = serde_json::from_str(&body).map_err(|e| malformed(format!("{e}: {body:?}")))?;
    Ok((status, value))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}
