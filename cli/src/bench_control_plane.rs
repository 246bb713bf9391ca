//! `inferno bench control-plane`: a local 3-coordinator group on loopback,
//! measured the way `shared/anchors/etcd/anchor.py` measures etcd: commit
//! latency of sequential writes, write throughput with 16 clients, and
//! failover time over repeated SIGKILLs of the leader; plus lost
//! acknowledged writes and a linearizability check of the failover phase.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use lincheck::{Input, Operation, Output};
use serde::Serialize;
use serde_json::{json, Value};

use crate::http_client::{self, HttpError};
use crate::local_cluster::{LocalCoordinators, LocalCoordinatorsSpec};

/// Arguments of `inferno bench control-plane`.
#[derive(Args, Debug)]
pub struct ControlPlaneBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leader kills in the failover phase.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Sequential writes for the commit latency.
    #[arg(long, default_value_t = 500)]
    pub writes: usize,
    /// Seconds of the 16-client throughput phase.
    #[arg(long, default_value_t = 5)]
    pub throughput_secs: u64,
}

/// The figures reported.
#[derive(Serialize, Debug)]
struct Report {
    system: String,
    commit_ms_p50: f64,
    commit_ms_p99: f64,
    writes_per_s: f64,
    failover_ms_p50: f64,
    failover_ms_max: f64,
    kills: usize,
    acknowledged_writes: u64,
    lost_writes: u64,
    unknown_outcome_writes: u64,
    history_ops: usize,
    linearizable: bool,
    load1: f64,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Healthy time between a restarted coordinator's catch-up and the next
/// kill, so that the history also covers normal operation.
const SETTLE: Duration = Duration::from_secs(1);
/// Client timeout of the writes that probe for the end of a failover (the
/// etcd anchor uses 0.5 s too).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs the benchmark (blocking; call it off the async runtime).
pub fn run(a: ControlPlaneBenchArgs) -> anyhow::Result<()> {
    let dir = crate::scratch::unique_temp_dir("inferno-bench-control-plane");
    // The directory (logs included) is kept when the benchmark fails.
    let report = bench(&a, &dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let r = &report;
        println!("{}", r.system);
        let rows: [(&str, String); 12] = [
            ("commit latency p50", format!("{} ms", r.commit_ms_p50)),
            ("commit latency p99", format!("{} ms", r.commit_ms_p99)),
            ("writes/s (16 clients)", format!("{}", r.writes_per_s)),
            ("failover p50", format!("{} ms", r.failover_ms_p50)),
            ("failover max", format!("{} ms", r.failover_ms_max)),
            ("leader kills", format!("{}", r.kills)),
            ("acknowledged writes", format!("{}", r.acknowledged_writes)),
            ("lost writes", format!("{}", r.lost_writes)),
            (
                "unknown-outcome writes",
                format!("{}", r.unknown_outcome_writes),
            ),
            ("history operations", format!("{}", r.history_ops)),
            ("linearizable", format!("{}", r.linearizable)),
            ("load (1 min)", format!("{}", r.load1)),
        ];
        for (k, v) in rows {
            println!("  {k:<24} {v}");
        }
    }
    Ok(())
}

/// The body of a model registration; `source` is the register's value.
fn model(name: &str, source: &str) -> Value {
    json!({"name": name, "source": source, "format": "gguf", "size_bytes": 1,
           "desired_replicas": 1})
}

/// A write's outcome as seen by the client.
enum Outcome {
    Ok,
    /// Definitely not applied (4xx, or the request never reached a server).
    Failed,
    /// May or may not have been applied (503, timeout, broken connection).
    Unknown,
}

fn write(addr: SocketAddr, key: &str, name: &str, source: &str, timeout: Duration) -> Outcome {
    match http_client::request(
        addr,
        Some(key),
        "POST",
        "/admin/v1/models",
        Some(&model(name, source)),
        timeout,
    ) {
        Ok((200, _)) => Outcome::Ok,
        Ok((s, _)) if (400..500).contains(&s) => Outcome::Failed,
        Ok(_) => Outcome::Unknown,
        Err(e) if !e.maybe_delivered() => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

/// Reads the models of one coordinator as a map name -> source.
fn read_models(addr: SocketAddr, key: &str) -> Result<Option<BTreeMap<String, String>>, HttpError> {
    let (status, v) = http_client::request(
        addr,
        Some(key),
        "GET",
        "/admin/v1/models",
        None,
        REQUEST_TIMEOUT,
    )?;
    if status != 200 {
        return Ok(None);
    }
    Ok(v["models"].as_array().map(|models| {
        models
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?.into(), m["source"].as_str()?.into())))
            .collect()
    }))
}

fn wait_for_models(
    addr: SocketAddr,
    key: &str,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(m)) = read_models(addr, key) {
            return Ok(m);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} did not answer GET /admin/v1/models within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return 0.0;
    }
    let i = ((xs.len() - 1) as f64 * p / 100.0).round() as usize;
    xs[i.min(xs.len() - 1)]
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Shared state of the failover phase's client threads.
struct Recorder {
    key: String,
    start: Instant,
    history: Mutex<Vec<Operation>>,
    acknowledged: Mutex<Vec<String>>,
    unknown: AtomicU64,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Writes `name` = `source` through `addr` and records it in the history.
    fn write(
        &self,
        client: u64,
        addr: SocketAddr,
        (name, source): (&str, &str),
        unique: bool,
        timeout: Duration,
    ) -> bool {
        let call = self.now();
        let outcome = write(addr, &self.key, name, source, timeout);
        let ret = self.now();
        let ret = match outcome {
            Outcome::Ok => Some(ret),
            Outcome::Failed => return false,
            Outcome::Unknown => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if ret.is_some() && unique {
            lock(&self.acknowledged).push(name.to_string());
        }
        lock(&self.history).push(Operation {
            client,
            call,
            ret,
            input: Input::Write {
                key: name.into(),
                value: source.into(),
            },
            output: Output::WriteOk,
        });
        ret.is_some()
    }

    /// Reads through `addr`, keeping only the failover phase's keys.
    fn read(&self, client: u64, addr: SocketAddr) {
        let call = self.now();
        let Ok(Some(map)) = read_models(addr, &self.key) else {
            return;
        };
        let ret = self.now();
        let map = map
            .into_iter()
            .filter(|(k, _)| k.starts_with("fo-"))
            .collect();
        lock(&self.history).push(Operation {
            client,
            call,
            ret: Some(ret),
            input: Input::Read,
            output: Output::Read(map),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny xorshift for picking coordinators and keys.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn bench(a: &ControlPlaneBenchArgs, dir: &std::path::Path) -> anyhow::Result<Report> {
    let spec = LocalCoordinatorsSpec::default();
    let mut cluster = LocalCoordinators::create(dir, &spec)?;
    cluster.start_all()?;
    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.http_addr(i)).collect();
    let leader = cluster.wait_for_leader(Duration::from_secs(30))?;
    let leader_addr = cluster.http_addr(
        cluster
            .index_of(leader)
            .context("leader id not in the group")?,
    );
    let mut acknowledged: Vec<String> = Vec::new();
    let key = cluster.admin_key().to_string();

    // Warm-up, then sequential commit latency through the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        write(leader_addr, &key, "warm", "up", REQUEST_TIMEOUT),
        Outcome::Ok
    ) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no write succeeded within 30 s; {}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut lat = Vec::with_capacity(a.writes);
    for i in 0..a.writes {
        let name = format!("c-{i}");
        let t = Instant::now();
        match write(leader_addr, &key, &name, &"v".repeat(64), REQUEST_TIMEOUT) {
            Outcome::Ok => acknowledged.push(name),
            _ => anyhow::bail!(
                "sequential write {i} to the leader failed; {}",
                cluster.describe()
            ),
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Throughput: 16 clients over the three coordinators.
    let stop_at = Instant::now() + Duration::from_secs(a.throughput_secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|j| {
            let addr = addrs[j % 3];
            let key = key.clone();
            std::thread::spawn(move || {
                let mut names = Vec::new();
                let mut n = 0;
                while Instant::now() < stop_at {
                    let name = format!("t-{j}-{n}");
                    n += 1;
                    if let Outcome::Ok = write(addr, &key, &name, "v", REQUEST_TIMEOUT) {
                        names.push(name);
                    }
                }
                names
            })
        })
        .collect();
    let mut count = 0usize;
    for h in handles {
        let names = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        count += names.len();
        acknowledged.extend(names);
    }
    let writes_per_s = count as f64 / started.elapsed().as_secs_f64();

    // Failover under load, recording a history.
    let rec = Arc::new(Recorder {
        key: key.clone(),
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        acknowledged: Mutex::new(Vec::new()),
        unknown: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4u64)
        .map(|c| {
            let rec = rec.clone();
            let stop = stop.clone();
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ ((c + 1) * 7919));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let addr = addrs[rng.below(3) as usize];
                    n += 1;
                    if c >= 2 {
                        rec.read(c, addr);
                    } else if rng.below(2) == 0 {
                        rec.write(
                            c,
                            addr,
                            (&format!("fo-u-{c}-{n}"), "u"),
                            true,
                            REQUEST_TIMEOUT,
                        );
                    } else {
                        let key = format!("fo-hot-{}", rng.below(4));
                        let value = format!("s-{c}-{n}");
                        rec.write(c, addr, (&key, &value), false, REQUEST_TIMEOUT);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let mut failover = Vec::with_capacity(a.kills);
    let mut rng = XorShift(12345);
    for k in 0..a.kills {
        let leader = cluster.wait_for_leader(Duration::from_secs(30))?;
        let li = cluster
            .index_of(leader)
            .context("leader id not in the group")?;
        cluster.kill(li);
        let t0 = Instant::now();
        let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
        let mut n = 0;
        loop {
            let target = others[rng.below(2) as usize];
            let name = format!("fo-probe-{k}-{n}");
            n += 1;
            // Like the etcd anchor: short client timeouts, retry at once.
            if rec.write(100, addrs[target], (&name, "p"), true, PROBE_TIMEOUT) {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "no write succeeded within 60 s after killing the leader; {}",
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        failover.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Restart it and wait until it serves a linearizable read that
        // includes the write that ended the failover.
        cluster.start(li)?;
        let probe = format!("fo-probe-{k}-{}", n - 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(m)) = read_models(addrs[li], &key) {
                if m.contains_key(&probe) {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "restarted coordinator {} did not catch up within 60 s; {}",
                cluster.id(li),
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the load run on a healthy group before the next kill.
        std::thread::sleep(SETTLE);
    }
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
    }

    // Every acknowledged unique write must be on every member.
    acknowledged.extend(lock(&rec.acknowledged).iter().cloned());
    let mut lost: HashSet<&str> = HashSet::new();
    for addr in &addrs {
        let models = wait_for_models(*addr, &key, Duration::from_secs(30))?;
        lost.extend(
            acknowledged
                .iter()
                .filter(|n| !models.contains_key(n.as_str()))
                .map(String::as_str),
        );
    }
    let history = std::mem::take(&mut *lock(&rec.history));
    let verdict = lincheck::check(&history);
    if !verdict.linearizable {
        eprintln!(
            "history is NOT linearizable: {} (key {:?})",
            verdict.reason, verdict.failing_key
        );
    }
    if !lost.is_empty() {
        let mut lost: Vec<_> = lost.iter().collect();
        lost.sort();
        eprintln!("lost acknowledged writes: {lost:?}");
    }
    cluster.stop_all();
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ok(Report {
        system: "inferno coordinator, 3 members, loopback".into(),
        commit_ms_p50: round(pct(&lat, 50.0), 3),
        commit_ms_p99: round(pct(&lat, 99.0), 3),
        writes_per_s: round(writes_per_s, 1),
        failover_ms_p50: round(pct(&failover, 50.0), 1),
        failover_ms_max: round(failover.iter().copied().fold(0.0, f64::max), 1),
        kills: a.kills,
        acknowledged_writes: acknowledged.len() as u64,
        lost_writes: lost.len() as u64,
        unknown_outcome_writes: rec.unknown.load(Ordering::Relaxed),
        history_ops: history.len(),
        linearizable: verdict.linearizable,
        load1,
    })
}
