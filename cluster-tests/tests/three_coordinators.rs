//! Starts three real `inferno coordinator` processes and checks leader
//! election, write forwarding, replication, failover after SIGKILL of the
//! leader, and catch-up of a restarted coordinator. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use inferno_cluster_tests::coordinators::{
    self, free_udp, json_call, CoordinatorConfig, CoordinatorProc as Proc,
};
use inferno_cluster_tests::local_up::free_tcp;
use inferno_cluster_tests::{inferno, wait_until};
use protocol::tls::{CertRole, ClusterCa};
use serde_json::{json, Value};

const N: usize = 3;

/// The admin key every coordinator bootstraps from (a throwaway group).
const ADMIN_KEY: &str = "inf-three-coordinators-test-admin-key";

/// One admin call; `None` on any transport error.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    http_with_key(addr, ADMIN_KEY, method, path, body)
}

/// [`http`] with another bearer token.
fn http_with_key(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    json_call(addr, key, method, path, body).ok()
}

/// A coordinator of the group in `dir`, not started.
fn proc(dir: &Path, config: PathBuf, http: SocketAddr, id: u64) -> Proc {
    Proc::new(config, dir.join(format!("coordinator-{id}.log")), http, id)
}

/// The leader id as seen by any live coordinator (linearizable read).
fn leader(procs: &[Proc]) -> Option<u64> {
    procs.iter().filter(|p| p.alive()).find_map(|p| {
        let (status, v) = http(p.http, "GET", "/admin/v1/cluster", None)?;
        let id = v["leader_id"].as_u64()?;
        (status == 200 && id != 0).then_some(id)
    })
}

fn model_names(p: &Proc) -> Option<Vec<String>> {
    let (status, v) = http(p.http, "GET", "/admin/v1/models", None)?;
    if status != 200 {
        return None;
    }
    Some(
        v["models"]
            .as_array()?
            .iter()
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect(),
    )
}

fn register(p: &Proc, name: &str) -> Option<Value> {
    let body = json!({
        "name": name, "source": format!("hf://test/{name}"), "format": "gguf",
        "size_bytes": 1000, "desired_replicas": 1,
    });
    let (status, v) = http(p.http, "POST", "/admin/v1/models", Some(&body))?;
    (status == 200).then_some(v)
}

fn write_config(dir: &Path, i: usize, raft: &[SocketAddr], http: &[SocketAddr]) -> PathBuf {
    write_member_config(dir, i, raft, http, N, false)
}

/// The config of member `i` of a group whose first `members` entries of
/// `raft`/`http` are its peers; `join` starts it as a new member.
fn write_member_config(
    dir: &Path,
    i: usize,
    raft: &[SocketAddr],
    http: &[SocketAddr],
    members: usize,
    join: bool,
) -> PathBuf {
    let join = if join { "join = true\n" } else { "" };
    let peers: Vec<(usize, SocketAddr)> = (0..members)
        .filter(|&j| j != i)
        .map(|j| (j, raft[j]))
        .collect();
    let extra = format!("audit = {{ window_secs = 1 }}\n{join}");
    coordinators::write_config(
        &CoordinatorConfig {
            dir,
            index: i,
            raft: raft[i],
            http: http[i],
            admin_key: ADMIN_KEY,
            extra: &extra,
        },
        &peers,
    )
}

/// A new group of `N` coordinators in a temporary directory, started.
fn start_group() -> (tempfile::TempDir, Vec<Proc>) {
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
    let http_addrs: Vec<SocketAddr> = (0..N).map(|_| free_tcp()).collect();
    let mut procs: Vec<Proc> = (0..N)
        .map(|i| {
            proc(
                dir.path(),
                write_config(dir.path(), i, &raft, &http_addrs),
                http_addrs[i],
                i as u64 + 1,
            )
        })
        .collect();
    for p in &mut procs {
        p.start();
    }
    (dir, procs)
}

fn members(p: &Proc) -> Option<Vec<u64>> {
    let (status, v) = http(p.http, "GET", "/admin/v1/members", None)?;
    if status != 200 {
        return None;
    }
    let mut ids: Vec<u64> = v["voters"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    ids.sort_unstable();
    Some(ids)
}

#[test]
fn coordinators_are_added_and_removed_at_runtime_including_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ca = ClusterCa::generate("test-cluster").expect("CA");
    for i in 1..=N + 1 {
        ca.issue(&format!("coordinator-{i}"), CertRole::Coordinator)
            .expect("issue")
            .save(&certs, false)
            .expect("save member");
    }
    let raft: Vec<SocketAddr> = (0..=N).map(|_| free_udp()).collect();
    let http_addrs: Vec<SocketAddr> = (0..=N).map(|_| free_tcp()).collect();
    let mut procs: Vec<Proc> = (0..=N)
        .map(|i| {
            proc(
                dir.path(),
                write_member_config(dir.path(), i, &raft, &http_addrs, N, false),
                http_addrs[i],
                i as u64 + 1,
            )
        })
        .collect();
    // The fourth knows the others and joins; they learn its address
    // from the replicated record the admin call writes.
    procs[N].config = write_member_config(dir.path(), N, &raft, &http_addrs, N + 1, true);
    for p in procs.iter_mut().take(N) {
        p.start();
    }
    let first = wait_until("a leader", Duration::from_secs(15), || leader(&procs));
    wait_until("a write", Duration::from_secs(10), || {
        register(&procs[0], "alpha")
    });

    // Three members that never answer, added at once: each stays a
    // learner (202), quorum is untouched and writes go on; they can be
    // removed again.
    let bogus: Vec<u64> = vec![70, 71, 72];
    let adds: Vec<_> = bogus
        .iter()
        .map(|&id| {
            let addr = procs[1].http;
            let body = json!({"id": id, "name": format!("ghost-{id}"),
                "raft_addr": free_udp().to_string()});
            std::thread::spawn(move || {
                wait_until("a ghost add call", Duration::from_secs(20), || {
                    http(addr, "POST", "/admin/v1/members", Some(&body)).filter(|(s, _)| *s != 503)
                })
            })
        })
        .collect();
    for a in adds {
        let (status, v) = a.join().expect("add thread");
        assert_eq!(status, 202, "{v}");
        assert_eq!(v["role"], "learner", "{v}");
    }
    assert_eq!(members(&procs[0]), Some(vec![1, 2, 3]));
    wait_until("a write with three ghosts", Duration::from_secs(10), || {
        register(&procs[2], "ghosts")
    });
    for id in &bogus {
        let (status, v) = wait_until("a ghost remove call", Duration::from_secs(20), || {
            http(
                procs[0].http,
                "DELETE",
                &format!("/admin/v1/members/{id}"),
                None,
            )
            .filter(|(s, _)| *s != 503)
        });
        assert_eq!(status, 200, "{v}");
    }
    let (_, v) = http(procs[0].http, "GET", "/admin/v1/members", None).expect("members");
    assert_eq!(v["learners"], json!([]), "{v}");

    procs[N].start();
    let body = json!({"id": N + 1, "name": format!("coordinator-{}", N + 1),
        "raft_addr": raft[N].to_string()});
    let (status, v) = wait_until("the add call", Duration::from_secs(15), || {
        http(procs[1].http, "POST", "/admin/v1/members", Some(&body)).filter(|(s, _)| *s != 503)
    });
    assert_eq!(status, 200, "{v}");
    wait_until("four voters", Duration::from_secs(10), || {
        members(&procs[0]).filter(|m| m == &[1, 2, 3, 4])
    });
    // The new member caught up (by snapshot or log) and serves reads.
    wait_until("the new member's view", Duration::from_secs(20), || {
        model_names(&procs[N]).filter(|m| m == &["alpha".to_string(), "ghosts".to_string()])
    });

    // Remove the leader: leadership moves, the group goes on with three.
    let leader_idx = procs
        .iter()
        .position(|p| p.id == first)
        .expect("leader process");
    let other = (0..N).find(|&i| i != leader_idx).expect("another member");
    let (status, v) = wait_until("the remove call", Duration::from_secs(20), || {
        http(
            procs[other].http,
            "DELETE",
            &format!("/admin/v1/members/{first}"),
            None,
        )
        .filter(|(s, _)| *s != 503)
    });
    assert_eq!(status, 200, "{v}");
    let expected: Vec<u64> = (1..=N as u64 + 1).filter(|&i| i != first).collect();
    wait_until("three voters", Duration::from_secs(10), || {
        members(&procs[other]).filter(|m| *m == expected)
    });
    procs[leader_idx].kill();
    let second = wait_until("a leader among the rest", Duration::from_secs(15), || {
        leader(&procs).filter(|&l| l != first)
    });
    assert!(expected.contains(&second));
    wait_until("a write after removal", Duration::from_secs(10), || {
        register(&procs[N], "beta")
    });
    for i in (0..=N).filter(|&i| i != leader_idx) {
        wait_until("replication", Duration::from_secs(10), || {
            model_names(&procs[i]).filter(|m| {
                m == &[
                    "alpha".to_string(),
                    "beta".to_string(),
                    "ghosts".to_string(),
                ]
            })
        });
    }
}

#[test]
fn three_coordinators_elect_replicate_fail_over_and_catch_up() {
    let (_dir, mut procs) = start_group();

    // Health and a leader.
    for p in &procs {
        wait_until("health", Duration::from_secs(10), || {
            http(p.http, "GET", "/health", None).filter(|(s, _)| *s == 200)
        });
    }
    let first = wait_until("a leader", Duration::from_secs(15), || leader(&procs));

    // Writes through a follower are forwarded to the leader.
    let follower = procs
        .iter()
        .position(|p| p.id != first)
        .expect("a follower");
    for name in ["alpha", "beta"] {
        let v = wait_until("a forwarded write", Duration::from_secs(10), || {
            register(&procs[follower], name)
        });
        assert!(v["result"].is_object(), "unexpected write answer {v}");
    }
    // Apply errors come back as JSON errors.
    let (status, v) = http(
        procs[follower].http,
        "DELETE",
        "/admin/v1/models/missing",
        None,
    )
    .expect("delete answer");
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["type"], "not_found");

    // Every coordinator lists them.
    for p in &procs {
        wait_until("replication", Duration::from_secs(10), || {
            model_names(p).filter(|m| m.contains(&"alpha".into()) && m.contains(&"beta".into()))
        });
    }

    // Deletes are forwarded too.
    let (status, v) = wait_until("a forwarded delete", Duration::from_secs(10), || {
        http(
            procs[follower].http,
            "DELETE",
            "/admin/v1/models/beta",
            None,
        )
        .filter(|(s, _)| *s != 503)
    });
    assert_eq!(status, 200, "{v}");

    // SIGKILL the leader: a new one is elected and writes still succeed.
    let old = procs
        .iter()
        .position(|p| p.id == first)
        .expect("leader process");
    procs[old].kill();
    let second = wait_until("a new leader", Duration::from_secs(15), || {
        leader(&procs).filter(|&l| l != first)
    });
    assert_ne!(second, first);
    let survivor = procs
        .iter()
        .position(|p| p.alive() && p.id != second)
        .expect("a surviving follower");
    wait_until("a write after failover", Duration::from_secs(10), || {
        register(&procs[survivor], "gamma")
    });

    // The restarted coordinator catches up.
    procs[old].start();
    wait_until("catch-up after restart", Duration::from_secs(20), || {
        model_names(&procs[old]).filter(|m| m == &["alpha".to_string(), "gamma".to_string()])
    });
    let (status, v) = http(procs[old].http, "GET", "/admin/v1/cluster", None).expect("cluster");
    assert_eq!(status, 200);
    assert_eq!(v["members"], json!([1, 2, 3]));

    // Alone, the restarted coordinator is a minority: reads and writes
    // fail with 503 within the request timeout instead of hanging.
    for (i, p) in procs.iter_mut().enumerate() {
        if i != old {
            p.kill();
        }
    }
    let started = Instant::now();
    let (status, v) = http(procs[old].http, "GET", "/admin/v1/models", None).expect("read");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["type"], "unavailable");
    let body = json!({"name": "delta", "source": "s", "format": "gguf",
        "size_bytes": 1, "desired_replicas": 1});
    let (status, v) =
        http(procs[old].http, "POST", "/admin/v1/models", Some(&body)).expect("write");
    assert_eq!(status, 503, "{v}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // SIGTERM stops a coordinator cleanly.
    let exit = procs[old].terminate(Duration::from_secs(10));
    assert!(exit.is_some_and(|e| e.success()), "exit status {exit:?}");
}

/// With `admin_http` set, the admin API answers only on that listener
/// (keys checked there too) and the public listener serves no `/admin`.
#[test]
fn the_admin_api_can_have_its_own_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("test-cluster").expect("CA");
    ca.issue("coordinator-1", CertRole::Coordinator)
        .expect("issue")
        .save(&dir.path().join("certs"), false)
        .expect("save member");
    let (raft, public, admin) = (free_udp(), free_tcp(), free_tcp());
    let config = write_member_config(dir.path(), 0, &[raft], &[public], 1, false);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!("admin_http = \"{admin}\"\n"));
    std::fs::write(&config, text).expect("config");
    let mut p = proc(dir.path(), config, admin, 1);
    p.start();
    wait_until("the admin listener", Duration::from_secs(15), || {
        http(admin, "GET", "/admin/v1/cluster", None).filter(|(s, _)| *s == 200)
    });
    let (status, v) = http(public, "GET", "/admin/v1/cluster", None).expect("public");
    assert_eq!(status, 404, "{v}");
    let (status, _) = http(public, "GET", "/v1/models", None).expect("public models");
    assert_eq!(status, 200);
    let (status, _) = http(admin, "GET", "/v1/models", None).expect("admin models");
    assert_eq!(status, 404);
    assert_eq!(http(admin, "GET", "/health", None).map(|r| r.0), Some(200));
    // Keys are checked on the admin listener too.
    let mut s = TcpStream::connect(admin).expect("connect");
    s.write_all(b"GET /admin/v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    p.kill();
}

/// Runs `inferno audit --url http://ADDR ARGS` with the admin key;
/// (success, stdout, stderr).
fn audit_cli(dir: &Path, addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = inferno()
        .arg("audit")
        .arg("--url")
        .arg(format!("http://{addr}"))
        .arg("--api-key-file")
        .arg(dir.join("admin.key"))
        .args(args)
        .output()
        .expect("run inferno audit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces every `from` with `to` (same length) in the raft log entries
/// and the snapshot of the coordinator whose data directory is `data`,
/// fixing the snapshot's checksum as a careful intruder would; returns how
/// many values changed.
fn tamper(data: &Path, from: &[u8], to: &[u8]) -> usize {
    use redb::{ReadableTable, TableDefinition};
    use sha2::Digest;
    const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    assert_eq!(from.len(), to.len());
    let replace = |bytes: &[u8]| -> Option<Vec<u8>> {
        let at = bytes.windows(from.len()).position(|w| w == from)?;
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        Some(out)
    };
    let db = redb::Database::open(data.join("raft.redb")).expect("open the raft database");
    let tx = db.begin_write().expect("write transaction");
    let mut changed = 0;
    {
        let mut entries = tx.open_table(ENTRIES).expect("entries table");
        let edits: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .expect("iterate")
            .filter_map(|r| {
                let (k, v) = r.expect("entry");
                replace(v.value()).map(|new| (k.value(), new))
            })
            .collect();
        for (k, v) in edits {
            entries.insert(k, v.as_slice()).expect("rewrite entry");
            changed += 1;
        }
        let mut meta = tx.open_table(META).expect("meta table");
        let snap = meta
            .get("snapshot_data")
            .expect("read snapshot")
            .map(|v| v.value().to_vec());
        if let Some(mut new) = snap.as_deref().and_then(replace) {
            // Header: magic 8, version 4, length 8, SHA-256 32.
            let digest = sha2::Sha256::digest(&new[52..]);
            new[20..52].copy_from_slice(&digest);
            meta.insert("snapshot_data", new.as_slice())
                .expect("rewrite snapshot");
            changed += 1;
        }
    }
    tx.commit().expect("commit");
    changed
}

/// The path the bad-key requests of the audit test ask for.
const PROBE: &str = "/admin/v1/audit-probe";

/// The audit entries of requests for [`PROBE`].
fn probes(entries: &[Value]) -> impl Iterator<Item = &Value> {
    entries.iter().filter(|e| e["record"]["route"] == PROBE)
}

/// Admin writes and refused keys land in the audit chain with who, from
/// where and the outcome; the chain verifies and agrees across
/// coordinators; an entry edited on one coordinator's disk is caught.
#[test]
fn the_audit_chain_records_and_verifies_and_catches_a_tampered_copy() {
    let (dir, mut procs) = start_group();
    wait_until("a leader", Duration::from_secs(15), || leader(&procs));
    wait_until("a write", Duration::from_secs(10), || {
        register(&procs[0], "audited")
    });
    // Once every coordinator knows the admin key (earlier polls were
    // refused) and a new one-second window began, five bad-key requests.
    for p in &procs {
        wait_until("the admin key", Duration::from_secs(10), || {
            http(p.http, "GET", "/admin/v1/cluster", None).filter(|(s, _)| *s == 200)
        });
    }
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..5 {
        let r = http_with_key(procs[1].http, "inf-not-a-key", "GET", PROBE, None);
        assert_eq!(r.map(|r| r.0), Some(401));
    }

    let entries = wait_until("the audit entries", Duration::from_secs(20), || {
        let (ok, out, _) = audit_cli(dir.path(), procs[2].http, &["--json"]);
        let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let e = v.as_array()?.clone();
        let write = e.iter().any(|e| {
            e["record"]["kind"] == "admin_write"
                && e["record"]["route"] == "/admin/v1/models"
                && e["record"]["status"] == 200
        });
        let refused: u64 = probes(&e)
            .map(|e| e["record"]["count"].as_u64().unwrap_or(0))
            .sum();
        (write && refused == 5).then_some(e)
    });
    let write = entries
        .iter()
        .find(|e| e["record"]["route"] == "/admin/v1/models")
        .expect("the write");
    assert_eq!(write["record"]["tenant"], "default", "{write}");
    assert_eq!(write["record"]["client"], "127.0.0.1", "{write}");
    assert_eq!(write["record"]["method"], "POST", "{write}");
    assert!(write["record"]["key_id"].as_str().is_some(), "{write}");
    // Aggregated: one record per source and one-second window.
    assert!(probes(&entries).count() <= 2, "{entries:?}");
    for refused in probes(&entries) {
        assert_eq!(refused["record"]["kind"], "auth_failure", "{refused}");
        assert_eq!(refused["record"]["key_id"], Value::Null, "{refused}");
        assert_eq!(refused["record"]["status"], 401, "{refused}");
    }

    // Verified on every coordinator, all holding the same head.
    for p in &procs {
        let (ok, out, err) = audit_cli(dir.path(), p.http, &["--verify"]);
        assert!(ok, "verify on {}: {out} {err}", p.http);
        assert!(out.contains("chain verified"), "{out}");
        for i in 1..=N {
            assert!(out.contains(&format!("coordinator-{i}")), "{out}");
        }
    }
    // An inference key may not read the trail.
    let (status, v) = http(
        procs[0].http,
        "POST",
        "/admin/v1/keys",
        Some(&json!({"tenant": "default", "scope": "inference"})),
    )
    .expect("create key");
    assert_eq!(status, 200, "{v}");
    let inference = v["key"].as_str().expect("the new key");
    wait_until("403 for an inference key", Duration::from_secs(5), || {
        http_with_key(procs[0].http, inference, "GET", "/admin/v1/audit", None)
            .filter(|(s, _)| *s == 403)
    });

    // Coordinator 3 is stopped, one audit entry in its log is edited, and
    // it comes back and replays it: its chain is self-consistent but no
    // longer the others'.
    procs[2].kill();
    let changed = tamper(
        &dir.path().join("data-3"),
        b"/admin/v1/models",
        b"/admin/v1/modelz",
    );
    assert!(changed >= 1, "nothing to tamper with");
    procs[2].start();
    let head = |p: &Proc| {
        http(p.http, "GET", "/admin/v1/audit?limit=1", None)
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, v)| v["head"]["seq"].as_u64())
    };
    let target = wait_until("the leader's head", Duration::from_secs(10), || {
        head(&procs[0])
    });
    wait_until("coordinator 3 to catch up", Duration::from_secs(20), || {
        head(&procs[2]).filter(|&h| h >= target)
    });
    let (ok, out, err) = audit_cli(dir.path(), procs[2].http, &["--verify"]);
    assert!(!ok, "a tampered copy verified: {out}");
    assert!(err.contains("diverge"), "{err}");
    let (ok, out, err) = audit_cli(dir.path(), procs[0].http, &["--verify"]);
    assert!(
        !ok,
        "the divergence went unnoticed from coordinator 1: {out}"
    );
    assert!(err.contains("coordinator-3"), "{err}");
}

/// A member whose certificate is a node's (right name, wrong role) is
/// never let into raft: the leader refuses to talk to it, so it stays a
/// learner that never catches up, and the group goes on without it.
#[test]
fn a_node_certificate_cannot_join_raft() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ca = ClusterCa::generate("test-cluster").expect("CA");
    ca.issue("coordinator-1", CertRole::Coordinator)
        .expect("issue")
        .save(&certs, false)
        .expect("save member");
    ca.issue("coordinator-2", CertRole::Node)
        .expect("issue")
        .save(&certs, false)
        .expect("save impostor");
    let raft = [free_udp(), free_udp()];
    let http_addrs = [free_tcp(), free_tcp()];
    let mut procs: Vec<Proc> = (0..2)
        .map(|i| {
            proc(
                dir.path(),
                write_member_config(dir.path(), i, &raft, &http_addrs, 1, i == 1),
                http_addrs[i],
                i as u64 + 1,
            )
        })
        .collect();
    procs[0].start();
    procs[1].start();
    wait_until("a write", Duration::from_secs(15), || {
        register(&procs[0], "before")
    });
    let body = json!({"id": 2, "name": "coordinator-2", "raft_addr": raft[1].to_string()});
    let (status, v) = wait_until("the add call", Duration::from_secs(15), || {
        http(procs[0].http, "POST", "/admin/v1/members", Some(&body)).filter(|(s, _)| *s != 503)
    });
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["role"], "learner", "{v}");
    std::thread::sleep(Duration::from_secs(3));
    let (_, v) = http(procs[0].http, "GET", "/admin/v1/members", None).expect("members");
    assert_eq!(v["voters"], json!([1]), "{v}");
    assert_eq!(v["learners"], json!([2]), "{v}");
    assert!(register(&procs[0], "after").is_some());
    // The impostor never received the state.
    let models = http(procs[1].http, "GET", "/admin/v1/models", None);
    assert!(models.as_ref().is_none_or(|(s, _)| *s != 200), "{models:?}");
}

/// SIGHUP reloads a coordinator's certificate from its certificates
/// directory: connections made afterwards see the new one, without a
/// restart (and the coordinator keeps serving).
#[test]
fn sighup_rotates_a_coordinators_certificate() {
    use protocol::quic;
    use protocol::tls::{cert_fingerprint, MemberIdentity};
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ca = ClusterCa::generate("test-cluster").expect("CA");
    let first = ca
        .issue("coordinator-1", CertRole::Coordinator)
        .expect("issue");
    first.save(&certs, false).expect("save member");
    let client_id = ca.issue("node-9", CertRole::Node).expect("issue");
    let (raft, http_addr) = (free_udp(), free_tcp());
    let mut p = proc(
        dir.path(),
        write_member_config(dir.path(), 0, &[raft], &[http_addr], 1, false),
        http_addr,
        1,
    );
    p.start();
    wait_until("the coordinator", Duration::from_secs(15), || {
        http(http_addr, "GET", "/admin/v1/cluster", None).filter(|(s, _)| *s == 200)
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let served_fingerprint = || {
        rt.block_on(async {
            let ep = quic::client_endpoint(&client_id, ca.cert_der()).ok()?;
            let conn = quic::connect(
                &ep,
                raft,
                "coordinator-1",
                CertRole::Coordinator,
                Duration::from_secs(5),
            )
            .await
            .ok()?;
            let fp = quic::peer_fingerprint(&conn);
            conn.close(quic::CLOSE_NORMAL, b"bye");
            fp
        })
    };
    assert_eq!(
        served_fingerprint(),
        Some(cert_fingerprint(first.cert_der()))
    );

    let second = ca
        .issue("coordinator-1", CertRole::Coordinator)
        .expect("issue");
    second.save(&certs, true).expect("replace member");
    assert_eq!(
        MemberIdentity::load(&certs, "coordinator-1")
            .map(|m| cert_fingerprint(m.cert_der()))
            .ok(),
        Some(cert_fingerprint(second.cert_der()))
    );
    let pid = p.pid().expect("pid");
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let want = cert_fingerprint(second.cert_der());
    wait_until("the new certificate", Duration::from_secs(10), || {
        (served_fingerprint()? == want).then_some(())
    });
    assert!(http(http_addr, "GET", "/admin/v1/cluster", None).is_some_and(|(s, _)| s == 200));
}
