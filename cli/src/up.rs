//! `inferno up`: a whole local cluster in one command: coordinators and
//! worker nodes as separate processes on loopback, the model deployed,
//! the OpenAI API ready, everything stopped cleanly on Ctrl-C.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use protocol::tls::ClusterCa;
use serde_json::{json, Value};

use crate::http_client;
use crate::local_cluster::{LocalCoordinators, LocalCoordinatorsSpec};

/// Arguments of `inferno up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Address of the first coordinator's HTTP API (the others pick free
    /// ports; every coordinator serves the same API).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Where configs, certificates, raft data, logs and cluster.json go.
    #[arg(long, default_value = "inferno-cluster")]
    pub data_dir: PathBuf,
    /// Worker nodes to start.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Coordinators to start (3 or 5 survive the loss of 1 or 2).
    #[arg(long, default_value_t = 3)]
    pub coordinators: usize,
    /// GGUF or ONNX file, or a known model name fetched if missing; give
    /// it more than once to deploy several models.
    #[arg(long, default_value = crate::models::DEFAULT_MODEL)]
    pub model: Vec<String>,
    /// Replicas of each model (default: one per node, at most 2).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Compute threads of each node.
    #[arg(long, default_value_t = 1)]
    pub threads_per_node: usize,
    /// KV-cache budget per replica, in MiB.
    #[arg(long, default_value_t = 512)]
    pub kv_budget_mib: u64,
    /// Longest sequence served, prompt plus generated tokens (default: the
    /// KV pool's share per running sequence, at least 2048, at most the
    /// model's context length).
    #[arg(long, value_parser = clap::value_parser!(u64).range(16..))]
    pub ctx_size: Option<u64>,
    /// Route requests by power of two choices only, ignoring which node
    /// already holds a prompt's prefix in its KV cache (for comparison).
    #[arg(long)]
    pub no_cache_aware_routing: bool,
    /// How long to wait for the cluster to serve, in seconds.
    #[arg(long, default_value_t = 180)]
    pub ready_timeout_s: u64,
    /// Where known model names are pulled to.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Take part in federated learning: node i trains as client i-1 on
    /// the datasets in this directory (`inferno fl data`), and the
    /// coordinators evaluate on its test sets.
    #[arg(long)]
    pub fl_data_dir: Option<PathBuf>,
    /// Fault injection for robustness tests and demos: the last N nodes
    /// send garbage federated updates.
    #[arg(long, default_value_t = 0, hide = true)]
    pub fl_byzantine_nodes: usize,
}

/// A worker node process.
struct NodeProc {
    name: String,
    quic: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Everything `inferno up` started; stopped (SIGTERM, then SIGKILL) on drop.
struct LocalCluster {
    coordinators: LocalCoordinators,
    nodes: Vec<NodeProc>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let children = self.nodes.iter_mut().filter_map(|n| n.child.as_mut());
        terminate(children);
        self.coordinators.terminate_all();
    }
}

/// SIGTERMs the children, waits a few seconds for them, SIGKILLs the rest.
pub fn terminate<'a>(children: impl Iterator<Item = &'a mut Child>) {
    let mut children: Vec<&mut Child> = children.collect();
    for c in &children {
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if children
            .iter_mut()
            .all(|c| c.try_wait().ok().flatten().is_some())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_udp() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP port")?;
    Ok(s.local_addr()?)
}

/// Extra settings of every coordinator `inferno up` starts.
fn coordinator_toml(args: &UpArgs) -> String {
    let mut t = format!(
        "kv_budget_mib = {}\ncache_aware_routing = {}\n",
        args.kv_budget_mib, !args.no_cache_aware_routing
    );
    if let Some(dir) = &args.fl_data_dir {
        let _ = writeln!(t, "fl_data_dir = {dir:?}");
    }
    t
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.coordinators >= 1, "--coordinators must be at least 1");
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let models_dir = args
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    let mut models = Vec::with_capacity(args.model.len());
    for arg in &args.model {
        let path = crate::models::resolve(arg, &models_dir).await?;
        let name = crate::models::model_name(arg);
        anyhow::ensure!(
            models.iter().all(|m: &Deployed| m.name != name),
            "--model {arg} is given twice"
        );
        models.push(Deployed {
            onnx: node::onnx_worker::is_onnx_file(&path),
            name,
            path,
        });
    }
    let runtime = if models.iter().any(|m| m.onnx) {
        let dir = models_dir.clone();
        Some(
            tokio::task::spawn_blocking(move || {
                crate::pull::ensure_model(
                    &crate::models::ONNX_RUNTIME,
                    &dir,
                    crate::pull::DEFAULT_INDEX,
                    true,
                )
            })
            .await
            .context("pull task failed")??,
        )
    } else {
        None
    };
    let cluster = tokio::task::spawn_blocking(move || start(&args, &models, runtime.as_deref()))
        .await
        .context("start task failed")??;
    crate::signals::shutdown_signal().await;
    eprintln!("stopping the cluster...");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .context("stop task failed")?;
    eprintln!("stopped");
    Ok(())
}

/// A model `inferno up` deploys.
struct Deployed {
    name: String,
    path: PathBuf,
    /// Served by the ONNX backend (v2 API) rather than as a language model.
    onnx: bool,
}

fn start(
    args: &UpArgs,
    models: &[Deployed],
    onnx_runtime: Option<&Path>,
) -> anyhow::Result<LocalCluster> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;

    let spec = LocalCoordinatorsSpec {
        n: args.coordinators,
        tick_ms: 100,
        request_timeout_ms: 5000,
        http_addrs: vec![args.http],
        extra_toml: vec![coordinator_toml(args); args.coordinators],
        log_filter: std::env::var("INFERNO_LOG").unwrap_or_else(|_| "info".into()),
        ..LocalCoordinatorsSpec::default()
    };
    let mut coordinators = LocalCoordinators::create(&dir, &spec)?;
    let ca = ClusterCa::load(coordinators.ca_dir()).context("cannot load the cluster CA")?;
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 1..=args.nodes {
        let node_name = format!("node-{i}");
        ca.issue(&node_name, protocol::tls::CertRole::Node)
            .context("cannot issue a node certificate")?
            .save(coordinators.certs_dir(), true)
            .context("cannot save a node certificate")?;
        let quic = free_udp()?;
        let mut text = format!(
            "[engine]\nthreads = {threads}\nkv_budget_mib = {kv}\n{ctx}\n[node]\nname = \"{node_name}\"\n\
             certs_dir = {certs:?}\nlisten = \"{quic}\"\n",
            threads = args.threads_per_node.max(1),
            kv = args.kv_budget_mib,
            ctx = args
                .ctx_size
                .map(|c| format!("ctx_size = {c}\n"))
                .unwrap_or_default(),
            certs = coordinators.certs_dir(),
        );
        if let Some(rt) = onnx_runtime {
            // Before [node]: a table header ends the one above it.
            text = format!(
                "[onnx]\nruntime = {rt:?}\nthreads = {}\n\n{text}",
                args.threads_per_node.max(1)
            );
        }
        if let Some(dir) = &args.fl_data_dir {
            let _ = write!(text, "fl_client = {}\nfl_data_dir = {:?}\n", i - 1, dir);
            if i + args.fl_byzantine_nodes > args.nodes {
                text.push_str("fl_byzantine = true\n");
            }
        }
        for c in 0..args.coordinators {
            let _ = write!(
                text,
                "\n[[node.coordinators]]\nname = \"coordinator-{}\"\naddr = \"{}\"\n",
                coordinators.id(c),
                coordinators.raft_addr(c)
            );
        }
        for m in models {
            let _ = write!(
                text,
                "\n[[node.models]]\nname = \"{}\"\npath = {:?}\n",
                m.name, m.path
            );
        }
        let config = dir.join(format!("{node_name}.toml"));
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        nodes.push(NodeProc {
            name: node_name.clone(),
            quic,
            config,
            log: dir.join(format!("{node_name}.log")),
            child: None,
        });
    }

    eprintln!(
        "starting {} coordinators and {} nodes in {}",
        args.coordinators,
        args.nodes,
        dir.display()
    );
    coordinators.start_all()?;
    let mut cluster = LocalCluster {
        coordinators,
        nodes,
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    for n in &mut cluster.nodes {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("cannot open {}", n.log.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(&n.config)
            .env(
                "INFERNO_LOG",
                std::env::var("INFERNO_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        n.child = Some(child);
    }
    write_cluster_json(&dir, &cluster)?;

    let timeout = Duration::from_secs(args.ready_timeout_s);
    cluster.coordinators.wait_for_leader(timeout)?;
    let replicas = args
        .replicas
        .unwrap_or_else(|| u32::try_from(args.nodes.min(2)).unwrap_or(2));
    let api = cluster.coordinators.http_addr(0);
    let admin_key = cluster.coordinators.admin_key().to_string();
    let admin = Some(admin_key.as_str());
    for m in models {
        let size_bytes = std::fs::metadata(&m.path)
            .with_context(|| format!("cannot read {}", m.path.display()))?
            .len();
        let body = json!({
            "name": m.name,
            "source": m.path.display().to_string(),
            "format": if m.onnx { "onnx" } else { "gguf" },
            "size_bytes": size_bytes,
            "desired_replicas": replicas,
        });
        retry_until(&format!("deploying {}", m.name), timeout, || {
            let (status, v) =
                http_client::request(api, admin, "POST", "/admin/v1/models", Some(&body), TIMEOUT)
                    .ok()?;
            (status == 200).then_some(v)
        })?;
    }
    let api_key = inference_key(&dir, api, &admin_key, timeout)?;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    eprintln!(
        "deployed {} with {replicas} replica(s) each; waiting for replicas to load...",
        names.join(", ")
    );
    if models.iter().any(|m| !m.onnx) {
        retry_until("the first ready replica", timeout, || {
            let (status, _) =
                http_client::request(api, Some(&api_key), "GET", "/ready", None, TIMEOUT).ok()?;
            (status == 200).then_some(())
        })?;
    }
    for m in models.iter().filter(|m| m.onnx) {
        let path = format!("/v2/models/{}/ready", m.name);
        retry_until(&format!("a ready replica of {}", m.name), timeout, || {
            let (status, _) =
                http_client::request(api, Some(&api_key), "GET", &path, None, TIMEOUT).ok()?;
            (status == 200).then_some(())
        })?;
    }
    let urls: Vec<String> = (0..args.coordinators)
        .map(|i| format!("http://{}", cluster.coordinators.http_addr(i)))
        .collect();
    let llm = models.iter().find(|m| !m.onnx).map(|m| m.name.as_str());
    match llm {
        Some(name) => {
            println!("Inferno cluster ready: OpenAI API at http://{api}/v1 (model \"{name}\")")
        }
        None => println!("Inferno cluster ready at http://{api}"),
    }
    for m in models.iter().filter(|m| m.onnx) {
        println!(
            "  ONNX model \"{}\": KServe v2 API at http://{api}/v2/models/{}/infer",
            m.name, m.name
        );
    }
    println!("  every coordinator serves it: {}", urls.join(" "));
    let key_file = dir.join(API_KEY_FILE);
    println!(
        "  API key (tenant default, inference scope): {}; admin key: {}",
        key_file.display(),
        dir.join("admin.key").display()
    );
    if let Some(name) = llm {
        println!(
            "  try: curl http://{api}/v1/chat/completions -H \"Authorization: Bearer $(cat {kf})\" \
             -H 'Content-Type: application/json' \
             -d '{{\"model\":\"{name}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'",
            kf = key_file.display()
        );
        println!(
            "  or:  inferno chat --url http://{api} --api-key-file {}",
            key_file.display()
        );
        println!(
            "  or, with the OpenAI client: OpenAI(base_url=\"http://{api}/v1\", api_key=open(\"{}\").read().strip())",
            key_file.display()
        );
    }
    if let Some(m) = models.iter().find(|m| m.onnx) {
        println!(
            "  try: curl http://{api}/v2/models/{} -H \"Authorization: Bearer $(cat {kf})\" (its inputs and outputs)",
            m.name,
            kf = key_file.display()
        );
    }
    println!(
        "  processes: {}; Ctrl-C stops everything",
        dir.join("cluster.json").display()
    );
    Ok(cluster)
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where `inferno up` writes the inference key it makes.
pub const API_KEY_FILE: &str = "api.key";

/// The inference key of tenant `default` in `DIR/api.key`: read back when
/// the file is there and the cluster still knows the key, else made through
/// the admin API and written (mode 0600).
fn inference_key(
    dir: &Path,
    api: std::net::SocketAddr,
    admin_key: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let path = dir.join(API_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = text.trim().to_string();
        let known = http_client::request(api, Some(&key), "GET", "/v1/models", None, TIMEOUT)
            .is_ok_and(|(status, _)| status == 200);
        if known {
            return Ok(key);
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot replace the stale {}", path.display()))?;
    }
    let body = json!({"tenant": "default", "scope": "inference"});
    let v = retry_until("an inference API key", timeout, || {
        let (status, v) = http_client::request(
            api,
            Some(admin_key),
            "POST",
            "/admin/v1/keys",
            Some(&body),
            TIMEOUT,
        )
        .ok()?;
        (status == 200).then_some(v)
    })?;
    let key = v["key"]
        .as_str()
        .context("the key answer holds no key")?
        .to_string();
    let mut f = coordinator::server::bootstrap::open_private(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

fn retry_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; see the logs in the data directory"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Writes `DATA_DIR/cluster.json`: every process started, with its role,
/// id, pid and addresses.
fn write_cluster_json(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<()> {
    let c = &cluster.coordinators;
    let mut procs: Vec<Value> = (0..c.len())
        .map(|i| {
            json!({
                "role": "coordinator",
                "id": format!("coordinator-{}", c.id(i)),
                "raft_id": c.id(i),
                "pid": c.pid(i),
                "http": c.http_addr(i).to_string(),
                "quic": c.raft_addr(i).to_string(),
            })
        })
        .collect();
    for n in &cluster.nodes {
        procs.push(json!({
            "role": "node",
            "id": n.name,
            "pid": n.child.as_ref().map(Child::id),
            "quic": n.quic.to_string(),
            "config": n.config.display().to_string(),
            "log": n.log.display().to_string(),
        }));
    }
    let path = dir.join("cluster.json");
    let text = serde_json::to_string_pretty(&json!({ "processes": procs }))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}
