//! Runs `inferno up` (the README's main command) as a child process for
//! tests, and reads the `cluster.json` it writes to find and kill the
//! processes it started.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;

/// One process listed in `cluster.json`.
#[derive(Debug, Clone)]
pub struct Member {
    /// `coordinator` or `node`.
    pub role: String,
    /// `coordinator-N` or `node-N`.
    pub id: String,
    /// Process id.
    pub pid: u32,
    /// HTTP API address (coordinators).
    pub http: Option<SocketAddr>,
}

/// A running `inferno up`; stopped with SIGTERM (then every process it
/// started is SIGKILLed, in case) when dropped.
pub struct LocalUp {
    child: Option<Child>,
    /// Its data directory (deleted on drop).
    pub dir: tempfile::TempDir,
    /// The first coordinator's HTTP address.
    pub api: SocketAddr,
    /// The processes it started.
    pub members: Vec<Member>,
    /// The admin key it bootstrapped (`DATA_DIR/admin.key`).
    pub admin_key: String,
    /// The inference key it made (`DATA_DIR/api.key`).
    pub api_key: String,
}

fn read_key(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A free loopback TCP port.
pub fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Sends `signal` (e.g. `-KILL`, `-TERM`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

impl LocalUp {
    /// Starts `inferno up` with the test model and `extra` arguments, and
    /// waits (at most `timeout`) until it prints that the cluster is ready.
    pub fn start(nodes: usize, replicas: u32, extra: &[&str], timeout: Duration) -> LocalUp {
        Self::start_with_model(&crate::test_model(), nodes, replicas, extra, timeout)
    }

    /// [`start`](Self::start) with the model file `model`.
    pub fn start_with_model(
        model: &std::path::Path,
        nodes: usize,
        replicas: u32,
        extra: &[&str],
        timeout: Duration,
    ) -> LocalUp {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = free_tcp();
        let mut child = crate::inferno()
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--http")
            .arg(api.to_string())
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--replicas")
            .arg(replicas.to_string())
            .arg("--model")
            .arg(model)
            .args(extra)
            .env(
                "INFERNO_LOG",
                std::env::var("INFERNO_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn inferno up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[inferno up] {line}");
                let _ = tx.send(line);
            }
        });
        let mut up = LocalUp {
            child: Some(child),
            dir,
            api,
            members: Vec::new(),
            admin_key: String::new(),
            api_key: String::new(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("cluster ready") => break,
                Ok(_) => {}
                Err(_) => panic!("inferno up did not become ready within {timeout:?}"),
            }
        }
        up.members = up.read_members();
        up.admin_key = read_key(&up.dir.path().join("admin.key"));
        up.api_key = read_key(&up.dir.path().join("api.key"));
        up
    }

    /// The inference key, for `http::request`.
    pub fn key(&self) -> Option<&str> {
        Some(&self.api_key)
    }

    /// The admin key, for `http::request`.
    pub fn admin(&self) -> Option<&str> {
        Some(&self.admin_key)
    }

    fn read_members(&self) -> Vec<Member> {
        let path: PathBuf = self.dir.path().join("cluster.json");
        let text = std::fs::read_to_string(&path).expect("cluster.json");
        let v: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
        v["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .map(|p| Member {
                role: p["role"].as_str().unwrap_or_default().to_string(),
                id: p["id"].as_str().unwrap_or_default().to_string(),
                pid: p["pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
                http: p["http"].as_str().and_then(|a| a.parse().ok()),
            })
            .collect()
    }

    /// The coordinators' HTTP addresses.
    pub fn coordinator_apis(&self) -> Vec<SocketAddr> {
        self.members.iter().filter_map(|m| m.http).collect()
    }

    /// The member named `id`.
    pub fn member(&self, id: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no member {id}"))
    }

    /// `GET /admin/v1/cluster` from the first coordinator that answers.
    pub fn cluster(&self) -> Option<Value> {
        self.coordinator_apis().into_iter().find_map(|a| {
            let r = http::request(
                a,
                self.admin(),
                "GET",
                "/admin/v1/cluster",
                None,
                Duration::from_secs(5),
            )
            .ok()?;
            (r.status == 200).then(|| r.json())
        })
    }
}

impl LocalUp {
    /// `GET /admin/v1/fl/jobs/{id}` from the first coordinator that answers.
    pub fn fl_job(&self, id: &str) -> Option<Value> {
        let path = format!("/admin/v1/fl/jobs/{id}");
        self.coordinator_apis().into_iter().find_map(|a| {
            let r =
                http::request(a, self.admin(), "GET", &path, None, Duration::from_secs(10)).ok()?;
            (r.status == 200).then(|| r.json())
        })
    }

    /// Waits (at most `timeout`) until federated job `id` satisfies `ok`;
    /// panics if the job fails meanwhile.
    pub fn wait_fl_job(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.fl_job(id) {
                if ok(&v) {
                    return v;
                }
                assert_ne!(v["status"], "Failed", "the job failed: {v}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.fl_job(id)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for LocalUp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for m in &self.members {
            if m.pid != 0 {
                signal(m.pid, "-KILL");
            }
        }
    }
}
