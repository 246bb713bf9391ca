//! Fault tests on real `inferno coordinator` processes: repeated SIGKILLs of
//! the leader under concurrent load (no acknowledged write lost, history
//! linearizable), a whole-group crash and restart, and a real network
//! partition through UDP proxies on every raft link. Every wait is bounded
//! and every process is SIGKILLed on drop.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferno_cluster_tests::coordinators::{
    self, free_udp, json_call, CoordinatorConfig, CoordinatorProc, NoAnswer, REQUEST_TIMEOUT_MS,
};
use inferno_cluster_tests::local_up::free_tcp;
use inferno_cluster_tests::{poll_until, udp_proxy::UdpProxy};
use lincheck::{Input, Operation, Output};
use protocol::tls::{CertRole, ClusterCa};
use serde_json::{json, Value};

const N: usize = 3;
/// The admin key every coordinator bootstraps from (a throwaway cluster).
const ADMIN_KEY: &str = "inf-coordinator-faults-test-admin-key";

type Proc = CoordinatorProc;

/// Three coordinators in a temp dir. `peer_addr(i, j, real)` is the raft
/// address coordinator `i` uses for peer `j` (`real` without a proxy).
struct Cluster {
    procs: Vec<Proc>,
    raft: Vec<SocketAddr>,
    // Dropped last: the processes write into it.
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new(peer_addr: impl Fn(usize, usize, SocketAddr) -> SocketAddr) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let ca = ClusterCa::generate("test-cluster").expect("CA");
        for i in 1..=N {
            ca.issue(&format!("coordinator-{i}"), CertRole::Coordinator)
                .expect("issue")
                .save(&certs, false)
                .expect("save member");
        }
        let raft: Vec<SocketAddr> = (0..N).map(|_| free_udp()).collect();
        let http: Vec<SocketAddr> = (0..N).map(|_| free_tcp()).collect();
        let procs = (0..N)
            .map(|i| {
                Proc::new(
                    write_config(dir.path(), i, &raft, &http, &peer_addr),
                    dir.path().join(format!("coordinator-{}.log", i + 1)),
                    http[i],
                    i as u64 + 1,
                )
            })
            .collect();
        Cluster { procs, raft, dir }
    }

    fn start_all(&mut self) {
        for p in &mut self.procs {
            p.start();
        }
    }

    fn index(&self, id: u64) -> usize {
        self.procs
            .iter()
            .position(|p| p.id == id)
            .expect("known id")
    }

    /// The leader id as seen by the live coordinators in `among`.
    fn leader_among(&self, among: &[usize]) -> Option<u64> {
        among
            .iter()
            .filter(|&&i| self.procs[i].alive())
            .find_map(|&i| {
                let (status, v) =
                    http(self.procs[i].http, "GET", "/admin/v1/cluster", None).ok()?;
                let id = v["leader_id"].as_u64()?;
                (status == 200 && id != 0).then_some(id)
            })
            // The leader itself answers with the admin key too: it has
            // applied the bootstrap entry (a new leader applies it only once
            // it commits in its own term).
            .filter(|&id| {
                let p = self.procs.iter().find(|p| p.id == id);
                p.is_some_and(|p| {
                    http(p.http, "GET", "/admin/v1/cluster", None).is_ok_and(|(s, _)| s == 200)
                })
            })
    }

    fn wait_leader_among(&self, among: &[usize], timeout: Duration) -> u64 {
        poll_until(&format!("a leader among {among:?}"), timeout, || {
            self.leader_among(among)
        })
        .unwrap_or_else(|e| {
            let answers: Vec<String> = among
                .iter()
                .map(|&i| {
                    let a = http(self.procs[i].http, "GET", "/admin/v1/cluster", None);
                    format!("coordinator {}: {a:?}", self.procs[i].id)
                })
                .collect();
            panic!("{e}\n{}\n{}", answers.join("\n"), self.logs())
        })
    }

    /// The tail of every log, for failure messages.
    fn logs(&self) -> String {
        let mut out = format!("logs in {}:\n", self.dir.path().display());
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- coordinator {} ---\n", p.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn write_config(
    dir: &Path,
    i: usize,
    raft: &[SocketAddr],
    http: &[SocketAddr],
    peer_addr: &impl Fn(usize, usize, SocketAddr) -> SocketAddr,
) -> PathBuf {
    let peers: Vec<(usize, SocketAddr)> = (0..N)
        .filter(|&j| j != i)
        .map(|j| (j, peer_addr(i, j, raft[j])))
        .collect();
    coordinators::write_config(
        &CoordinatorConfig {
            dir,
            index: i,
            raft: raft[i],
            http: http[i],
            admin_key: ADMIN_KEY,
            extra: "",
        },
        &peers,
    )
}

/// One admin call, bounded by timeouts.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), NoAnswer> {
    json_call(addr, ADMIN_KEY, method, path, body)
}

fn model(name: &str, source: &str) -> Value {
    json!({"name": name, "source": source, "format": "gguf", "size_bytes": 1000,
           "desired_replicas": 1})
}

/// All models of one coordinator (linearizable read), by name.
fn models(addr: SocketAddr) -> Option<BTreeMap<String, Value>> {
    let (status, v) = http(addr, "GET", "/admin/v1/models", None).ok()?;
    if status != 200 {
        return None;
    }
    Some(
        v["models"]
            .as_array()?
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?.to_string(), m.clone())))
            .collect(),
    )
}

/// A write's outcome: `Some(true)` acknowledged, `Some(false)` certainly
/// not applied, `None` unknown (503, timeout, broken connection).
fn write(addr: SocketAddr, name: &str, source: &str) -> Option<bool> {
    match http(addr, "POST", "/admin/v1/models", Some(&model(name, source))) {
        Ok((200, _)) => Some(true),
        Ok((s, _)) if (400..500).contains(&s) => Some(false),
        Ok(_) => None,
        Err(e) if e.refused => Some(false),
        Err(_) => None,
    }
}

/// A tiny xorshift.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Counts {
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
    writes_unknown: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
}

#[test]
fn acknowledged_writes_survive_ten_leader_kills_and_history_is_linearizable() {
    let test_start = Instant::now();
    let mut cluster = Cluster::new(|_, _, real| real);
    cluster.start_all();
    let all: Vec<usize> = (0..N).collect();
    cluster.wait_leader_among(&all, Duration::from_secs(20));

    let addrs: Vec<SocketAddr> = cluster.procs.iter().map(|p| p.http).collect();
    let clock = Instant::now();
    let history: Arc<Mutex<Vec<Operation>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let counts: Arc<Counts> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (history, acknowledged, counts, stop, addrs) = (
                history.clone(),
                acknowledged.clone(),
                counts.clone(),
                stop.clone(),
                addrs.clone(),
            );
            std::thread::spawn(move || {
                let now = || clock.elapsed().as_nanos() as u64;
                let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ ((c + 1) * 0x9e37_79b9));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let addr = addrs[rng.below(N as u64) as usize];
                    let call = now();
                    match rng.below(4) {
                        0 | 1 => {
                            let Some(map) = models(addr) else {
                                counts.reads_failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            counts.reads_ok.fetch_add(1, Ordering::Relaxed);
                            let map = map
                                .into_iter()
                                .map(|(k, v)| (k, v["source"].as_str().unwrap_or("").to_string()))
                                .collect();
                            let op = Operation {
                                client: c,
                                call,
                                ret: Some(now()),
                                input: Input::Read,
                                output: Output::Read(map),
                            };
                            history.lock().expect("history").push(op);
                        }
                        kind => {
                            let unique = kind == 2;
                            let (key, value) = if unique {
                                (format!("u-{c}-{n}"), format!("src-{c}-{n}"))
                            } else {
                                (format!("hot-{}", rng.below(4)), format!("src-{c}-{n}"))
                            };
                            let outcome = write(addr, &key, &value);
                            let ret = match outcome {
                                Some(true) => {
                                    counts.writes_ok.fetch_add(1, Ordering::Relaxed);
                                    if unique {
                                        acknowledged.lock().expect("acked").push(key.clone());
                                    }
                                    Some(now())
                                }
                                Some(false) => {
                                    counts.writes_failed.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                None => {
                                    counts.writes_unknown.fetch_add(1, Ordering::Relaxed);
                                    None
                                }
                            };
                            let op = Operation {
                                client: c,
                                call,
                                ret,
                                input: Input::Write { key, value },
                                output: Output::WriteOk,
                            };
                            history.lock().expect("history").push(op);
                        }
                    }
                }
            })
        })
        .collect();

    // Ten leader kills, each restarted once the next leader is elected.
    for k in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let leader = cluster.wait_leader_among(&all, Duration::from_secs(20));
        let li = cluster.index(leader);
        cluster.procs[li].kill();
        let others: Vec<usize> = (0..N).filter(|&i| i != li).collect();
        let next = cluster.wait_leader_among(&others, Duration::from_secs(20));
        assert_ne!(
            next, leader,
            "kill {k}: the killed leader is still reported"
        );
        cluster.procs[li].start();
        let addr = cluster.procs[li].http;
        poll_until(
            "the restarted coordinator to serve",
            Duration::from_secs(20),
            || {
                http(addr, "GET", "/admin/v1/cluster", None)
                    .ok()
                    .filter(|(s, _)| *s == 200)
            },
        )
        .unwrap_or_else(|e| panic!("kill {k}: {e}\n{}", cluster.logs()));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }

    // Every acknowledged unique write is on every member.
    let acknowledged = acknowledged.lock().expect("acked").clone();
    for p in &cluster.procs {
        let missing = poll_until("every acknowledged write", Duration::from_secs(20), || {
            let m = models(p.http)?;
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|n| !m.contains_key(*n))
                .collect();
            missing.is_empty().then_some(())
        });
        if missing.is_err() {
            let m = models(p.http).unwrap_or_default();
            let lost: Vec<&String> = acknowledged
                .iter()
                .filter(|n| !m.contains_key(*n))
                .collect();
            panic!(
                "coordinator {} lacks acknowledged writes {lost:?}\n{}",
                p.id,
                cluster.logs()
            );
        }
    }

    let history = history.lock().expect("history").clone();
    let started = Instant::now();
    let verdict = lincheck::check(&history);
    eprintln!(
        "writes: {} ok, {} failed, {} unknown; reads: {} ok, {} failed; {} acknowledged \
         unique writes; history of {} ops checked in {:?} ({} keys); test took {:?}",
        counts.writes_ok.load(Ordering::Relaxed),
        counts.writes_failed.load(Ordering::Relaxed),
        counts.writes_unknown.load(Ordering::Relaxed),
        counts.reads_ok.load(Ordering::Relaxed),
        counts.reads_failed.load(Ordering::Relaxed),
        acknowledged.len(),
        history.len(),
        started.elapsed(),
        verdict.keys_checked,
        test_start.elapsed(),
    );
    assert!(
        counts.writes_ok.load(Ordering::Relaxed) > 50,
        "too few acknowledged writes to mean anything"
    );
    if !verdict.linearizable {
        let key = verdict.failing_key.clone().unwrap_or_default();
        let ops: Vec<&Operation> = history
            .iter()
            .filter(|o| match &o.input {
                Input::Write { key: k, .. } => *k == key,
                Input::Read => true,
            })
            .collect();
        let mut dump = String::new();
        for o in ops {
            let what = match (&o.input, &o.output) {
                (Input::Write { value, .. }, _) => format!("write {value}"),
                (Input::Read, Output::Read(m)) => format!("read {:?}", m.get(&key)),
                (Input::Read, Output::WriteOk) => "read ?".into(),
            };
            dump.push_str(&format!("c{} {}..{:?} {what}\n", o.client, o.call, o.ret));
        }
        panic!("history is not linearizable: {verdict:?}\n{dump}");
    }
}

#[test]
fn stop_all_and_restart_keeps_state() {
    let mut cluster = Cluster::new(|_, _, real| real);
    cluster.start_all();
    let all: Vec<usize> = (0..N).collect();
    cluster.wait_leader_among(&all, Duration::from_secs(20));
    for i in 0..12u64 {
        let body = json!({"name": format!("m-{i}"), "source": format!("pypi:pkg-{i}"),
            "format": if i % 2 == 0 { "gguf" } else { "safetensors" },
            "size_bytes": 1000 + i * 7, "desired_replicas": 1 + i % 3});
        let addr = cluster.procs[i as usize % N].http;
        poll_until("a write", Duration::from_secs(15), || {
            http(addr, "POST", "/admin/v1/models", Some(&body))
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
    // Update one: the latest version must survive.
    let body = json!({"name": "m-0", "source": "pypi:updated", "format": "gguf",
        "size_bytes": 5, "desired_replicas": 2});
    let (status, v) = http(
        cluster.procs[0].http,
        "POST",
        "/admin/v1/models",
        Some(&body),
    )
    .expect("update answered");
    assert_eq!(status, 200, "{v}");
    let before = poll_until("models on every member", Duration::from_secs(15), || {
        let first = models(cluster.procs[0].http)?;
        let same = cluster.procs[1..]
            .iter()
            .all(|p| models(p.http).as_ref() == Some(&first));
        (same && first.len() == 12).then_some(first)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(before["m-0"]["source"], "pypi:updated");
    assert_eq!(before["m-0"]["desired_replicas"], 2);
    assert_eq!(before["m-7"]["size_bytes"], 1049);
    assert_eq!(before["m-7"]["format"], "safetensors");

    for p in &mut cluster.procs {
        p.kill();
    }
    cluster.start_all();
    cluster.wait_leader_among(&all, Duration::from_secs(20));
    for p in &cluster.procs {
        let after = poll_until("models after restart", Duration::from_secs(20), || {
            models(p.http)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        assert_eq!(after, before, "coordinator {} after restart", p.id);
    }
}

/// Coordinator `from`'s proxies to its peers, and the peers' proxies to it.
fn links_of(i: usize) -> Vec<(usize, usize)> {
    (0..N)
        .filter(|&j| j != i)
        .flat_map(|j| [(i, j), (j, i)])
        .collect()
}

#[test]
fn partitioned_minority_refuses_writes() {
    // Reserve the real raft addresses first so the proxies know them.
    let mut cluster = Cluster::new(|_, _, real| real);
    let mut proxies: BTreeMap<(usize, usize), UdpProxy> = BTreeMap::new();
    for i in 0..N {
        for j in (0..N).filter(|&j| j != i) {
            proxies.insert((i, j), UdpProxy::start(cluster.raft[j]).expect("proxy"));
        }
    }
    // Rewrite the configs so that every link goes through its proxy.
    let http_addrs: Vec<SocketAddr> = cluster.procs.iter().map(|p| p.http).collect();
    for i in 0..N {
        let path = write_config(
            cluster.dir.path(),
            i,
            &cluster.raft,
            &http_addrs,
            &|i, j, _| proxies[&(i, j)].addr(),
        );
        assert_eq!(path, cluster.procs[i].config);
    }
    cluster.start_all();
    let all: Vec<usize> = (0..N).collect();
    let mut written: HashSet<String> = HashSet::new();
    let leader = cluster.wait_leader_among(&all, Duration::from_secs(20));
    let l = cluster.index(leader);
    let (status, v) = http(
        cluster.procs[l].http,
        "POST",
        "/admin/v1/models",
        Some(&model("before", "s")),
    )
    .expect("write answered");
    assert_eq!(status, 200, "{v}");
    written.insert("before".into());

    // First a follower, then the leader, cut off from both peers.
    for round in ["follower", "leader"] {
        let leader = cluster.wait_leader_among(&all, Duration::from_secs(20));
        let l = cluster.index(leader);
        let isolated = if round == "leader" { l } else { (l + 1) % N };
        for link in links_of(isolated) {
            proxies[&link].set_blocked(true);
        }
        let majority: Vec<usize> = (0..N).filter(|&i| i != isolated).collect();

        // The isolated coordinator answers 503 JSON within the request
        // timeout, for writes and linearizable reads. (Give a deposed
        // leader's lease a moment to run out first.)
        std::thread::sleep(Duration::from_millis(1500));
        let addr = cluster.procs[isolated].http;
        for attempt in 0..2 {
            let t = Instant::now();
            let name = format!("minority-{round}-{attempt}");
            let answer = http(addr, "POST", "/admin/v1/models", Some(&model(&name, "m")));
            let took = t.elapsed();
            let (status, v) = answer.unwrap_or_else(|e| {
                panic!("{round}: isolated write got no answer after {took:?}: {e:?}")
            });
            assert_eq!(status, 503, "{round}: isolated write answered {v}");
            assert_eq!(v["error"]["type"], "unavailable", "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
            assert!(
                took < Duration::from_millis(REQUEST_TIMEOUT_MS + 2000),
                "{round}: isolated write took {took:?}"
            );
        }
        let t = Instant::now();
        let (status, v) =
            http(addr, "GET", "/admin/v1/models", None).expect("isolated read answered");
        assert_eq!(status, 503, "{round}: isolated read answered {v}");
        assert!(t.elapsed() < Duration::from_millis(REQUEST_TIMEOUT_MS + 2000));

        // The majority elects (or keeps) a leader and accepts writes
        // through both of its members.
        let new_leader = cluster.wait_leader_among(&majority, Duration::from_secs(20));
        assert_ne!(cluster.index(new_leader), isolated, "{round}");
        for (k, &i) in majority.iter().enumerate() {
            let name = format!("majority-{round}-{k}");
            let addr = cluster.procs[i].http;
            poll_until("a majority write", Duration::from_secs(15), || {
                http(addr, "POST", "/admin/v1/models", Some(&model(&name, "s")))
                    .ok()
                    .filter(|(s, _)| *s == 200)
            })
            .unwrap_or_else(|e| panic!("{round}: {e}\n{}", cluster.logs()));
            written.insert(name);
        }

        // Heal: the isolated coordinator catches up.
        for link in links_of(isolated) {
            proxies[&link].set_blocked(false);
        }
        poll_until("catch-up after healing", Duration::from_secs(30), || {
            let m = models(cluster.procs[isolated].http)?;
            written.iter().all(|n| m.contains_key(n)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{round}: {e}\n{}", cluster.logs()));
        // And accepts writes again.
        let name = format!("healed-{round}");
        poll_until("a write after healing", Duration::from_secs(15), || {
            http(addr, "POST", "/admin/v1/models", Some(&model(&name, "s")))
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|e| panic!("{round}: {e}\n{}", cluster.logs()));
        written.insert(name);
    }
    for p in &cluster.procs {
        poll_until("every write everywhere", Duration::from_secs(15), || {
            let m = models(p.http)?;
            written.iter().all(|n| m.contains_key(n)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
}
