//! Revoking a node's certificate through `inferno up`: within 2 s every
//! coordinator holds the node down and stops routing to it, its
//! connections are closed and its heartbeats refused (it stays down), and
//! the cluster goes on serving from the other node. Every process is
//! stopped at the end.

use std::time::{Duration, Instant};

use inferno_cluster_tests::local_up::LocalUp;
use inferno_cluster_tests::{http, inferno, test_model_name, wait_until};
use serde_json::{json, Value};

const STARTUP: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(60);

/// Node `node`'s status (`Up`/`Down`) as coordinator `api` holds it.
fn status(up: &LocalUp, api: std::net::SocketAddr, node: &str) -> Option<String> {
    let r = http::request(api, up.admin(), "GET", "/admin/v1/cluster", None, T).ok()?;
    let v: Value = (r.status == 200).then(|| r.json())?;
    v["nodes"][node]["status"].as_str().map(str::to_string)
}

#[test]
fn a_revoked_node_is_cut_off_within_two_seconds_and_the_cluster_serves_on() {
    let up = LocalUp::start(2, 2, &[], STARTUP);
    for api in up.coordinator_apis() {
        wait_until("both nodes up", T, || {
            (status(&up, api, "node-1")? == "Up" && status(&up, api, "node-2")? == "Up")
                .then_some(())
        });
    }

    let started = Instant::now();
    let out = inferno()
        .args(["certs", "revoke", "--url", &format!("http://{}", up.api)])
        .arg("--api-key-file")
        .arg(up.dir.path().join("admin.key"))
        .arg("--cert")
        .arg(up.dir.path().join("certs/node-1.pem"))
        .output()
        .expect("run inferno certs revoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("revoked node-1"), "{stdout}");
    for api in up.coordinator_apis() {
        wait_until("node-1 down everywhere", Duration::from_secs(2), || {
            (status(&up, api, "node-1")? == "Down").then_some(())
        });
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Its heartbeats are refused from now on: it stays down (the leader
    // would have marked a node that heartbeats up again within a second).
    std::thread::sleep(Duration::from_secs(4));
    for api in up.coordinator_apis() {
        assert_eq!(status(&up, api, "node-1").as_deref(), Some("Down"));
        assert_eq!(status(&up, api, "node-2").as_deref(), Some("Up"));
    }
    let r = http::request(
        up.api,
        up.admin(),
        "GET",
        "/admin/v1/certs/revoked",
        None,
        T,
    )
    .expect("revoked list");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["revoked"][0]["name"], "node-1", "{}", r.body);

    // The other node serves on, through every coordinator.
    let body = json!({"model": test_model_name(), "max_tokens": 4,
        "messages": [{"role": "user", "content": "Say hello."}]});
    for api in up.coordinator_apis() {
        let r = http::request(
            api,
            up.key(),
            "POST",
            "/v1/chat/completions",
            Some(&body.to_string()),
            T,
        )
        .expect("chat");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // An inference key may not revoke anything.
    let r = http::request(
        up.api,
        up.key(),
        "POST",
        "/admin/v1/certs/revoke",
        Some(&json!({"fingerprint": "a".repeat(64), "name": "node-2"}).to_string()),
        T,
    )
    .expect("revoke with an inference key");
    assert_eq!(r.status, 403, "{}", r.body);
}
