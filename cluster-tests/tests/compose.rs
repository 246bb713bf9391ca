//! The docker-compose cluster (docker-compose.yml at the repository root):
//! 3 coordinators and 3 nodes, each in its own container with its own IP.
//! Builds the image from the `inferno` binary under test, brings the
//! cluster up under a unique project name (free ports, a free subnet),
//! deploys the model, chats through every coordinator, stops a node that
//! holds a replica and checks that requests still succeed and the replica
//! is placed elsewhere. `docker-compose down -v` runs at the end, on panic
//! too. Skipped only when docker is missing or its daemon unreachable.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferno_cluster_tests::{http, wait_until};
use serde_json::{json, Value};

/// The model's cluster name: the `[[node.models]] name` of configs/compose.
const MODEL: &str = "smollm2";
const T: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `None` when docker can be used, else why not.
fn docker_unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("the `docker` command is not installed".into())
        }
        Err(e) => Some(format!("cannot run `docker info`: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "the docker daemon is unreachable: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The result of a bounded command: exit success, stdout and stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Run {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drain both pipes on threads so a chatty command cannot block.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_t.join().unwrap_or_default();
    let mut stderr = err_t.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    Run {
        ok: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}

/// Three free TCP ports on 127.0.0.1 (held together so they differ).
fn free_ports() -> [u16; 3] {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let port = |i: usize| ls[i].local_addr().expect("local addr").port();
    [port(0), port(1), port(2)]
}

/// IPv4 subnets of every docker network, as (network, prefix length).
fn docker_subnets() -> Vec<(Ipv4Addr, u32)> {
    let mut ls = Command::new("docker");
    ls.args(["network", "ls", "-q"]);
    let ids = run(ls, T);
    assert!(ids.ok, "docker network ls: {}", ids.stderr);
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut inspect = Command::new("docker");
    inspect.args(["network", "inspect"]).args(&ids);
    let out = run(inspect, T);
    assert!(out.ok, "docker network inspect: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["IPAM"]["Config"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| {
            let (ip, len) = c["Subnet"].as_str()?.split_once('/')?;
            Some((ip.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

/// A /24 prefix `10.213.X` that overlaps no docker network.
fn free_subnet() -> String {
    let taken = docker_subnets();
    let overlaps = |net: Ipv4Addr| {
        taken.iter().any(|&(ip, len)| {
            let len = len.min(24);
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        })
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    (0..254)
        .map(|i| 1 + seed.wrapping_add(i) % 254)
        .map(|x| Ipv4Addr::new(10, 213, u8::try_from(x).expect("octet"), 0))
        .find(|&net| !overlaps(net))
        .map(|net| {
            let [a, b, c, _] = net.octets();
            format!("{a}.{b}.{c}")
        })
        .expect("a free 10.213.X.0/24 subnet")
}

/// The compose project; `docker-compose down -v` on drop (panics included).
struct Compose {
    project: String,
    env: Vec<(String, String)>,
    down: bool,
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo_root())
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn compose(&self, args: &[&str], timeout: Duration) -> Run {
        run(self.command(args), timeout)
    }

    /// Removes containers, network and volumes; returns whether that worked.
    fn down(&mut self) -> Run {
        self.down = true;
        self.compose(
            &["down", "-v", "--remove-orphans", "--timeout", "10"],
            Duration::from_secs(90),
        )
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "40"], T);
            eprintln!("--- docker-compose logs ---\n{}", logs.stdout);
        }
        let r = self.down();
        if !r.ok {
            eprintln!("docker-compose down -v failed: {}", r.stderr);
        }
    }
}

/// `GET /admin/v1/cluster` from the first coordinator that answers 200.
fn cluster(apis: &[SocketAddr], key: Option<&str>) -> Option<Value> {
    apis.iter().find_map(|&a| {
        let r = http::request(
            a,
            key,
            "GET",
            "/admin/v1/cluster",
            None,
            Duration::from_secs(5),
        )
        .ok()?;
        (r.status == 200).then(|| r.json())
    })
}

/// The nodes holding a Ready replica of the model, and the node statuses.
fn ready_holders(apis: &[SocketAddr], key: Option<&str>) -> Option<(Vec<String>, Value)> {
    let v = cluster(apis, key)?;
    let holders = v["placements"][MODEL]
        .as_object()?
        .iter()
        .filter(|(_, p)| p["state"] == "Ready")
        .map(|(n, _)| n.clone())
        .collect();
    Some((holders, v["nodes"].clone()))
}

/// One chat request; `Err` describes a failure precisely.
fn chat(api: SocketAddr, key: Option<&str>, content: &str) -> Result<String, String> {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
        "max_tokens": 8, "temperature": 0});
    let started = Instant::now();
    let r = http::request(
        api,
        key,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        T,
    )
    .map_err(|e| format!("{api}: {e} after {:?}", started.elapsed()))?;
    if r.status != 200 {
        return Err(format!(
            "{api}: HTTP {} after {:?}: {}",
            r.status,
            started.elapsed(),
            r.body
        ));
    }
    match r.json()["choices"][0]["message"]["content"].as_str() {
        Some(c) if !c.is_empty() => Ok(c.to_string()),
        _ => Err(format!("{api}: 200 without content: {}", r.body)),
    }
}

#[test]
fn compose_cluster_serves_through_every_coordinator_and_survives_a_node_stop() {
    if let Some(why) = docker_unavailable() {
        eprintln!("SKIPPED compose cluster test: {why}");
        return;
    }
    let started = Instant::now();
    let bin = inferno_cluster_tests::inferno_binary();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p inferno-cli` first",
        bin.display()
    );
    let model = inferno_cluster_tests::test_model();
    let state = tempfile::tempdir().expect("temp dir");
    let ports = free_ports();
    let net = free_subnet();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let project = format!("inferno-test-{}-{nanos}", std::process::id());
    let mut env = vec![
        ("INFERNO_BIN".to_string(), bin.display().to_string()),
        ("INFERNO_COMPOSE_PROJECT".into(), project.clone()),
        (
            "INFERNO_COMPOSE_DIR".into(),
            state.path().display().to_string(),
        ),
        ("INFERNO_COMPOSE_NET".into(), net.clone()),
        (
            "INFERNO_SECRETS_DIR".into(),
            state.path().join("secrets").display().to_string(),
        ),
        ("INFERNO_MODEL".into(), model.display().to_string()),
        ("INFERNO_COMPOSE_DEPLOY".into(), "0".into()),
    ];
    for (i, p) in ports.iter().enumerate() {
        env.push((format!("INFERNO_HTTP_PORT_{}", i + 1), p.to_string()));
    }
    let mut compose = Compose {
        project: project.clone(),
        env: env.clone(),
        down: false,
    };
    eprintln!("project {project}, subnet {net}.0/24, API ports {ports:?}");

    // Image, certificates, configs and `docker-compose up -d`.
    let mut up = Command::new("bash");
    up.arg(repo_root().join("scripts/compose-up.sh"))
        .current_dir(repo_root())
        .envs(env.iter().map(|(k, v)| (k, v)));
    let r = run(up, Duration::from_secs(180));
    assert!(r.ok, "compose-up.sh failed:\n{}\n{}", r.stdout, r.stderr);
    // Config files rendered into the state dir use the test's subnet.
    let c1 = std::fs::read_to_string(state.path().join("configs/coordinator-1.toml"))
        .expect("rendered config");
    assert!(c1.contains(&format!("\"{net}.11:7100\"")), "{c1}");
    // compose-up.sh made the admin key every coordinator bootstraps from.
    let admin_key = std::fs::read_to_string(state.path().join("secrets/admin.key"))
        .expect("the admin key compose-up.sh made");
    let key = Some(admin_key.trim());
    eprintln!("[{:?}] cluster up", started.elapsed());

    let apis: Vec<SocketAddr> = ports
        .iter()
        .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();

    // Deploy the model with 2 replicas (any coordinator; retried while the
    // group elects its leader).
    let size = std::fs::metadata(&model).expect("model size").len();
    let deploy = json!({"name": MODEL, "source": "/models/model.gguf", "format": "gguf",
        "size_bytes": size, "desired_replicas": 2})
    .to_string();
    let mut i = 0;
    wait_until(
        "POST /admin/v1/models = 200",
        Duration::from_secs(60),
        || {
            i += 1;
            let r = http::request(
                apis[i % 3],
                key,
                "POST",
                "/admin/v1/models",
                Some(&deploy),
                T,
            )
            .ok()?;
            (r.status == 200).then_some(())
        },
    );
    for &api in &apis {
        wait_until(
            &format!("GET /ready = 200 on {api}"),
            Duration::from_secs(60),
            || {
                let r = http::request(api, key, "GET", "/ready", None, T).ok()?;
                (r.status == 200).then_some(())
            },
        );
    }
    let (holders, nodes) = wait_until("two ready replicas", Duration::from_secs(60), || {
        ready_holders(&apis, key).filter(|(h, _)| h.len() == 2)
    });
    // Every node registered with its own container address.
    for n in 1..=3 {
        assert_eq!(
            nodes[format!("node-{n}")]["addr"],
            format!("{net}.2{n}:7200"),
            "{nodes}"
        );
    }
    eprintln!(
        "[{:?}] model deployed, ready on {holders:?}",
        started.elapsed()
    );

    // Every coordinator serves the API.
    for &api in &apis {
        let c = chat(api, key, "Say hello.").unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{api}: {c:?}");
    }

    // Stop (SIGTERM) a node holding a replica.
    let victim = holders[0].clone();
    let stop_started = Instant::now();
    let r = compose.compose(&["stop", "-t", "10", &victim], Duration::from_secs(60));
    assert!(r.ok, "docker-compose stop {victim}: {}", r.stderr);
    eprintln!(
        "[{:?}] stopped {victim} (took {:?})",
        started.elapsed(),
        stop_started.elapsed()
    );

    // Requests right after the stop, while the coordinators may still
    // route to the stopped node (it is marked down after 3 s of silence):
    // each is retried once on the other replica, so none may fail.
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for &api in &apis {
            let t = Instant::now();
            if let Err(e) = chat(api, key, &format!("Name a color ({round}).")) {
                failures.push(format!(
                    "{e} (at {:?} after the stop)",
                    stop_started.elapsed()
                ));
            }
            slowest = slowest.max(t.elapsed());
        }
    }
    eprintln!(
        "[{:?}] 9 requests during the down window: {} failed, slowest {slowest:?}",
        started.elapsed(),
        failures.len()
    );

    // The stopped node is marked down and its replica placed elsewhere.
    let (replaced, nodes) = wait_until(
        "the replica re-placed off the stopped node",
        Duration::from_secs(60),
        || {
            ready_holders(&apis, key).filter(|(h, nodes)| {
                h.len() == 2 && !h.contains(&victim) && nodes[&victim]["status"] == "Down"
            })
        },
    );
    eprintln!(
        "[{:?}] {victim} is {}; replicas now on {replaced:?}",
        started.elapsed(),
        nodes[&victim]["status"]
    );
    for round in 0..2 {
        for &api in &apis {
            if let Err(e) = chat(api, key, &format!("Name a fruit ({round}).")) {
                failures.push(format!("{e} (after the re-placement)"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed after stopping {victim}:\n{}",
        failures.join("\n")
    );

    // Down: nothing of the project is left behind.
    let r = compose.down();
    assert!(r.ok, "docker-compose down -v: {}", r.stderr);
    let label = format!("label=com.docker.compose.project={project}");
    for what in [
        vec!["ps", "-aq", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
    ] {
        let mut cmd = Command::new("docker");
        cmd.args(&what);
        let r = run(cmd, T);
        assert!(
            r.ok && r.stdout.trim().is_empty(),
            "left behind: docker {what:?}: {}{}",
            r.stdout,
            r.stderr
        );
    }
    eprintln!("[{:?}] cluster removed", started.elapsed());
}
