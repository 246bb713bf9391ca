//! Groups of real `inferno coordinator` processes started from config
//! files (no nodes): the process handle, the config writer and the admin
//! HTTP call that the consensus and fault tests share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::inferno;

/// How long a coordinator of these groups waits for a forwarded write or
/// a linearizable read (`request_timeout_ms`).
pub const REQUEST_TIMEOUT_MS: u64 = 3000;

/// A coordinator process, SIGKILLed when dropped; its output is appended
/// to `log`.
pub struct CoordinatorProc {
    child: Option<Child>,
    /// Its config file.
    pub config: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its HTTP listener.
    pub http: SocketAddr,
    /// Its raft id.
    pub id: u64,
}

impl CoordinatorProc {
    /// A coordinator not started yet.
    pub fn new(config: PathBuf, log: PathBuf, http: SocketAddr, id: u64) -> Self {
        Self {
            child: None,
            config,
            log,
            http,
            id,
        }
    }

    /// Starts the process (`INFERNO_LOG` passes through, `warn` by default).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "coordinator {} already runs", self.id);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = inferno()
            .arg("coordinator")
            .arg("--config")
            .arg(&self.config)
            .env(
                "INFERNO_LOG",
                std::env::var("INFERNO_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn inferno coordinator");
        self.child = Some(child);
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it was started and not killed since.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and waits at most `timeout` for the process to exit;
    /// its exit status, or `None` (it is then SIGKILLed) if it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        crate::local_up::signal(child.id(), "-TERM");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback UDP port (raft runs over QUIC).
pub fn free_udp() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.local_addr().expect("udp addr")
}

/// What one coordinator's config says besides its peers.
pub struct CoordinatorConfig<'a> {
    /// The group's directory: data, certificates and the admin key file.
    pub dir: &'a Path,
    /// Index of the coordinator (its id is `index + 1`).
    pub index: usize,
    /// Its raft address.
    pub raft: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// The admin key it bootstraps from (written to `dir/admin.key`).
    pub admin_key: &'a str,
    /// More TOML lines (top-level keys) to append.
    pub extra: &'a str,
}

/// Writes `coordinator-ID.toml` in `dir` for a coordinator whose peers are
/// `peers` (index, raft address as this coordinator reaches it), with
/// fast raft ticks; returns its path.
pub fn write_config(c: &CoordinatorConfig<'_>, peers: &[(usize, SocketAddr)]) -> PathBuf {
    let id = c.index + 1;
    let mut text = format!(
        "id = {id}\ndata_dir = {data:?}\nraft_addr = \"{raft}\"\nhttp_addr = \"{http}\"\n\
         certs_dir = {certs:?}\nname = \"coordinator-{id}\"\ntick_ms = 50\nelection_ticks = 10\n\
         heartbeat_ticks = 2\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\nbootstrap = true\n\
         admin_key_file = {key:?}\n{extra}",
        data = c.dir.join(format!("data-{id}")),
        raft = c.raft,
        http = c.http,
        certs = c.dir.join("certs"),
        key = c.dir.join("admin.key"),
        extra = c.extra,
    );
    std::fs::write(c.dir.join("admin.key"), c.admin_key).expect("write the admin key");
    for &(j, addr) in peers {
        text.push_str(&format!(
            "\n[[peers]]\nid = {}\nraft_addr = \"{addr}\"\nname = \"coordinator-{}\"\n",
            j + 1,
            j + 1
        ));
    }
    let path = c.dir.join(format!("coordinator-{id}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Why a request got no HTTP answer: `refused` means it never reached a
/// server (so it certainly had no effect).
pub struct NoAnswer {
    /// The connection was refused.
    pub refused: bool,
    /// What went wrong.
    pub detail: String,
}

impl std::fmt::Debug for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (refused: {})", self.detail, self.refused)
    }
}

/// One HTTP/1.1 request with bearer `key` and a JSON body, bounded by
/// timeouts; the status and the JSON answer.
pub fn json_call(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), NoAnswer> {
    let fail = |refused: bool, detail: String| NoAnswer { refused, detail };
    let io = |e: std::io::Error| fail(false, e.to_string());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
        fail(refused, e.to_string())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(8)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8(resp).map_err(|e| fail(false, e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(false, format!("no headers end: {text:?}")))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(false, format!("bad status: {head:?}")))?;
    let value = serde_json::from_str(body).map_err(|e| fail(false, format!("{e}: {body:?}")))?;
    Ok((status, value))
}
