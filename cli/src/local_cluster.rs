//! A group of `inferno coordinator` processes on loopback, for benchmarks,
//! tests and local clusters: creates the cluster CA and member certificates
//! in-process, writes one TOML config per coordinator with free ports, and
//! starts, kills (SIGKILL) and restarts the processes. Dropping it kills them.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::tls::{CertRole, ClusterCa};

use crate::http_client;

/// Settings of a local coordinator group.
#[derive(Clone, Debug)]
pub struct LocalCoordinatorsSpec {
    /// Number of coordinators (ids 1..=n, names `coordinator-<id>`).
    pub n: usize,
    /// The `inferno` binary to run (`None`: this executable).
    pub binary: Option<PathBuf>,
    /// Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// Request timeout of the admin API in milliseconds.
    pub request_timeout_ms: u64,
    /// Extra TOML lines appended to each coordinator's config (index i is
    /// coordinator i; missing entries add nothing). They go before the
    /// `[[peers]]` tables, so top-level keys are fine.
    pub extra_toml: Vec<String>,
    /// `INFERNO_LOG` for the processes.
    pub log_filter: String,
    /// HTTP addresses for the first coordinators (the rest get free ports).
    pub http_addrs: Vec<SocketAddr>,
}

impl Default for LocalCoordinatorsSpec {
    fn default() -> Self {
        LocalCoordinatorsSpec {
            n: 3,
            binary: None,
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout_ms: 3000,
            extra_toml: Vec::new(),
            log_filter: "warn".into(),
            http_addrs: Vec::new(),
        }
    }
}

/// One coordinator of the group.
struct Member {
    id: u64,
    raft: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    http: SocketAddr,
    child: Option<Child>,
}

/// A running (or stopped) group of local coordinators. Every process is
/// SIGKILLed when this is dropped.
pub struct LocalCoordinators {
    dir: PathBuf,
    ca_dir: PathBuf,
    certs_dir: PathBuf,
    binary: PathBuf,
    log_filter: String,
    members: Vec<Member>,
    admin_key: String,
}

/// A free loopback UDP port (released before use: a small race that is
/// acceptable for local tooling).
fn free_udp() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP port")?;
    Ok(s.local_addr()?)
}

/// A free loopback TCP port (same caveat as [`free_udp`]).
fn free_tcp() -> anyhow::Result<SocketAddr> {
    let s = TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port")?;
    Ok(s.local_addr()?)
}

impl LocalCoordinators {
    /// Creates the CA (`<dir>/ca`), member certificates (`<dir>/certs`) and
    /// configs (`<dir>/coordinator-<id>.toml`, data under
    /// `<dir>/data-<id>`, logs in `<dir>/coordinator-<id>.log`) in `dir`,
    /// without starting anything.
    pub fn create(dir: &Path, spec: &LocalCoordinatorsSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(spec.n > 0, "a coordinator group needs at least one member");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_dir = dir.join("ca");
        let certs_dir = dir.join("certs");
        let ca = ClusterCa::generate("inferno-local").context("cannot create the cluster CA")?;
        ca.save(&ca_dir, true)
            .context("cannot save the cluster CA")?;
        for id in 1..=spec.n {
            ca.issue(&format!("coordinator-{id}"), CertRole::Coordinator)
                .context("cannot issue a member certificate")?
                .save(&certs_dir, true)
                .context("cannot save a member certificate")?;
        }
        let raft = (0..spec.n)
            .map(|_| free_udp())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let http = (0..spec.n)
            .map(|i| spec.http_addrs.get(i).copied().map_or_else(free_tcp, Ok))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // The cluster's first admin key, registered by the coordinators.
        let admin_key_file = dir.join("admin.key");
        let admin_key = coordinator::server::bootstrap::load_or_create(&admin_key_file)
            .context("cannot make the admin key")?;
        let mut members = Vec::with_capacity(spec.n);
        for i in 0..spec.n {
            let id = i + 1;
            let mut text = format!(
                "id = {id}\ndata_dir = {data:?}\nraft_addr = \"{raft}\"\nhttp_addr = \"{http}\"\n\
                 certs_dir = {certs:?}\nname = \"coordinator-{id}\"\ntick_ms = {tick}\n\
                 election_ticks = {et}\nheartbeat_ticks = {ht}\nrequest_timeout_ms = {rt}\n",
                data = dir.join(format!("data-{id}")),
                raft = raft[i],
                http = http[i],
                certs = certs_dir,
                tick = spec.tick_ms,
                et = spec.election_ticks,
                ht = spec.heartbeat_ticks,
                rt = spec.request_timeout_ms,
            );
            // Every member may bootstrap (the first proposal wins), so
            // the key gets in even when one of them is slow or down.
            let _ = writeln!(
                text,
                "bootstrap = true\nadmin_key_file = {admin_key_file:?}"
            );
            if let Some(extra) = spec.extra_toml.get(i) {
                text.push_str(extra);
                text.push('\n');
            }
            for j in (0..spec.n).filter(|&j| j != i) {
                let _ = write!(
                    text,
                    "\n[[peers]]\nid = {}\nraft_addr = \"{}\"\nname = \"coordinator-{}\"\n",
                    j + 1,
                    raft[j],
                    j + 1
                );
            }
            let config = dir.join(format!("coordinator-{id}.toml"));
            std::fs::write(&config, text)
                .with_context(|| format!("cannot write {}", config.display()))?;
            members.push(Member {
                id: id as u64,
                raft: raft[i],
                config,
                log: dir.join(format!("coordinator-{id}.log")),
                http: http[i],
                child: None,
            });
        }
        let binary = match &spec.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("cannot find this executable")?,
        };
        Ok(LocalCoordinators {
            dir: dir.to_path_buf(),
            ca_dir,
            certs_dir,
            binary,
            log_filter: spec.log_filter.clone(),
            members,
            admin_key,
        })
    }

    /// A human-readable summary: where the CA, certificates, configs and
    /// logs are (the CA in `ca/` can issue node certificates that the
    /// coordinators accept).
    pub fn describe(&self) -> String {
        format!(
            "coordinators in {} (CA {}, certificates {}, logs {})",
            self.dir.display(),
            self.ca_dir().display(),
            self.certs_dir().display(),
            self.members
                .iter()
                .map(|m| m.log.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The directory holding the cluster CA (`ca.pem`, `ca-key.pem`).
    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// The directory holding every member's certificate and key (`NAME.pem`,
    /// `NAME-key.pem`, `ca.pem`), the coordinators' `certs_dir`.
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// The raft id of coordinator `i` (0-based index).
    pub fn id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// The index of the coordinator with raft id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// How many coordinators the group has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The QUIC (raft) address of coordinator `i`, which nodes dial too.
    pub fn raft_addr(&self, i: usize) -> SocketAddr {
        self.members[i].raft
    }

    /// The process id of coordinator `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Stops every coordinator cleanly (SIGTERM, SIGKILL after a grace
    /// period).
    pub fn terminate_all(&mut self) {
        crate::up::terminate(self.members.iter_mut().filter_map(|m| m.child.as_mut()));
        for m in &mut self.members {
            m.child = None;
        }
    }

    /// The cluster's admin key (in `DIR/admin.key`).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The admin API address of coordinator `i`.
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.members[i].http
    }

    /// Starts coordinator `i` (no-op when it runs); its stdout and stderr
    /// are appended to its log file.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("cannot open {}", m.log.display()))?;
        let child = Command::new(&self.binary)
            .arg("coordinator")
            .arg("--config")
            .arg(&m.config)
            .env("INFERNO_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// Starts every coordinator that is not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        (0..self.members.len()).try_for_each(|i| self.start(i))
    }

    /// SIGKILLs coordinator `i` and reaps it (no-op when it is not running).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs every coordinator.
    pub fn stop_all(&mut self) {
        (0..self.members.len()).for_each(|i| self.kill(i));
    }

    /// The leader's raft id as seen by the first running coordinator that
    /// answers `GET /admin/v1/cluster` with a leader (a linearizable read).
    pub fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .find_map(|m| {
                let (status, v) = http_client::request(
                    m.http,
                    Some(&self.admin_key),
                    "GET",
                    "/admin/v1/cluster",
                    None,
                    Duration::from_secs(2),
                )
                .ok()?;
                let id = v["leader_id"].as_u64()?;
                (status == 200 && id != 0).then_some(id)
            })
    }

    /// Waits until a running coordinator reports a leader; returns its id.
    pub fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("no leader within {timeout:?}; {}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalCoordinators {
    fn drop(&mut self) {
        self.stop_all();
    }
}
