//! The data plane end to end, through `inferno up` (3 coordinators and
//! worker nodes as separate processes): the OpenAI API on every
//! coordinator (driven by the official `openai` Python package too),
//! errors, cancellation of abandoned streams, and node and leader kills
//! under load. Every wait is bounded; every process is stopped at the end.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferno_cluster_tests::local_up::{signal, LocalUp};
use inferno_cluster_tests::{
    http, metric_sum, run_python_client, test_model_name as model_name, wait_until,
};
use serde_json::{json, Value};

const STARTUP: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(60);

fn post(
    addr: SocketAddr,
    key: Option<&str>,
    path: &str,
    body: &Value,
) -> std::io::Result<http::Response> {
    http::request(addr, key, "POST", path, Some(&body.to_string()), T)
}

/// Opens a 1,500-token completion stream and waits for its first bytes
/// (the 200 head); the caller drops it to walk away mid-stream.
fn open_long_stream(addr: SocketAddr, key: Option<&str>, model: &str) -> std::net::TcpStream {
    let body = json!({"model": model, "prompt": "Once upon a time", "max_tokens": 1500,
        "ignore_eos": true, "stream": true, "temperature": 0});
    let mut conn = http::send(
        addr,
        key,
        "POST",
        "/v1/completions",
        Some(&body.to_string()),
        T,
    )
    .expect("open stream");
    let mut first = [0u8; 2048];
    let n = conn.read(&mut first).expect("first bytes");
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("200"),
        "stream did not start"
    );
    conn
}

fn chat_body(model: &str, content: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "temperature": 0})
}

#[test]
fn openai_api_on_every_coordinator_errors_and_abandoned_streams() {
    let up = LocalUp::start(2, 2, &[], STARTUP);
    let model = model_name();

    // Every coordinator serves the API and routes to the replicas.
    for api in up.coordinator_apis() {
        let r = http::request(api, up.key(), "GET", "/v1/models", None, T).expect("models");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["data"][0]["id"], model.as_str());
        let r = post(
            api,
            up.key(),
            "/v1/chat/completions",
            &chat_body(&model, "Say hello.", 8),
        )
        .expect("chat");
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()));
        assert!(v["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=8).contains(&n)));
        let r = http::request(api, up.key(), "GET", "/ready", None, T).expect("ready");
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // The models list says what the file says; SmolLM2's template has no
    // tool format, so a request with tools is refused rather than ignored.
    let r = http::request(up.api, up.key(), "GET", "/v1/models", None, T).expect("models");
    let m = &r.json()["data"][0];
    assert_eq!(
        (
            &m["architecture"],
            &m["max_model_len"],
            &m["capabilities"]["tools"]
        ),
        (&json!("llama"), &json!(8192), &json!(false)),
        "{m}"
    );
    let mut body = chat_body(&model, "Weather in Paris?", 8);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather"}}]);
    let r = post(up.api, up.key(), "/v1/chat/completions", &body).expect("tools");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("does not support tools"), "{}", r.body);

    // /tokenize counts what generation is given; /detokenize inverts it.
    let chat = post(
        up.api,
        up.key(),
        "/v1/chat/completions",
        &chat_body(&model, "Say hello.", 4),
    )
    .expect("chat");
    let messages = &chat_body(&model, "Say hello.", 4)["messages"];
    let r = post(
        up.api,
        up.key(),
        "/tokenize",
        &json!({"model": model, "messages": messages}),
    )
    .expect("tokenize");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["count"],
        chat.json()["usage"]["prompt_tokens"],
        "{}",
        r.body
    );
    let text = "Hello, wörld! <|im_end|>";
    let ids = post(
        up.api,
        up.key(),
        "/tokenize",
        &json!({"model": model, "prompt": text}),
    )
    .expect("tokenize text")
    .json()["tokens"]
        .clone();
    let r = post(
        up.api,
        up.key(),
        "/detokenize",
        &json!({"model": model, "tokens": ids}),
    )
    .expect("detokenize");
    assert_eq!(r.json()["prompt"], text, "{}", r.body);
    let r = post(up.api, None, "/tokenize", &json!({"prompt": text})).expect("no key");
    assert_eq!(r.status, 401, "{}", r.body);

    // Streaming: SSE chunks ending with [DONE].
    let mut body = chat_body(&model, "Count to three.", 6);
    body["stream"] = json!(true);
    let r = post(up.api, up.key(), "/v1/chat/completions", &body).expect("stream");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let events: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", r.body);
    assert!(events.len() >= 3, "{}", r.body);

    // Errors are OpenAI error objects with the right statuses.
    let r = http::request(
        up.api,
        up.key(),
        "POST",
        "/v1/chat/completions",
        Some("{not json"),
        T,
    )
    .expect("bad json");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
    let r = post(
        up.api,
        up.key(),
        "/v1/chat/completions",
        &chat_body("no-such-model", "hi", 4),
    )
    .expect("unknown model");
    assert_eq!(r.status, 404, "{}", r.body);
    let long = "hello ".repeat(9000);
    let r = post(
        up.api,
        up.key(),
        "/v1/completions",
        &json!({"model": model, "prompt": long, "max_tokens": 4}),
    )
    .expect("long prompt");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("context") || r.body.contains("prompt"),
        "{}",
        r.body
    );

    // A prompt that cannot fit the context whatever it tokenizes to is a
    // 400 before the node tokenizes it.
    let huge = "lorem ipsum ".repeat(250_000);
    let r = post(
        up.api,
        up.key(),
        "/v1/completions",
        &json!({"model": model, "prompt": huge, "max_tokens": 1}),
    )
    .expect("huge prompt");
    assert_eq!(r.status, 400, "{}", &r.body[..r.body.len().min(300)]);
    assert!(r.body.contains("cannot fit the context"), "{}", r.body);

    // Default deny: only /health is open, /admin needs an admin key; every
    // refusal is an OpenAI error object.
    let get = |key: Option<&str>, path: &str| {
        http::request(up.api, key, "GET", path, None, T).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    assert_eq!(get(None, "/health").status, 200);
    for path in [
        "/v1/models",
        "/ready",
        "/metrics",
        "/admin/v1/cluster",
        "/admin/v1/keys",
        "/no/such/route",
    ] {
        let r = get(None, path);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "missing_api_key", "{path}");
        let r = get(Some("inf-not-a-key"), path);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key", "{path}");
    }
    let r = post(
        up.api,
        None,
        "/v1/chat/completions",
        &chat_body(&model, "hi", 2),
    )
    .expect("chat");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = get(up.key(), "/admin/v1/cluster");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(get(up.admin(), "/v1/models").status, 200);
    assert_eq!(get(up.key(), "/metrics").status, 200);

    // A body must be JSON by its Content-Type (a web page cannot send that
    // cross-origin without a CORS preflight); a wrong method is a JSON 405;
    // a client that never finishes its headers is cut off.
    let raw = |text: String| -> String {
        let mut c = std::net::TcpStream::connect(up.api).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        std::io::Write::write_all(&mut c, text.as_bytes()).expect("send");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    let body = chat_body(&model, "hi", 2).to_string();
    let answer = raw(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        up.api_key,
        body.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let r = get(up.key(), "/v1/chat/completions");
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
    let t0 = Instant::now();
    let answer = raw("GET /health HTTP/1.1\r\nHost: x\r\n".into());
    assert!(
        t0.elapsed() < Duration::from_secs(19),
        "a slow client held its connection for {:?}: {answer}",
        t0.elapsed()
    );

    // A key made through the CLI works on every coordinator; revoked, every
    // coordinator refuses it within 2 s.
    let admin_file = up.dir.path().join("admin.key");
    let cli = |args: &[&str]| {
        let out = inferno_cluster_tests::inferno()
            .args(args)
            .arg("--url")
            .arg(format!("http://{}", up.api))
            .arg("--api-key-file")
            .arg(&admin_file)
            .output()
            .expect("run inferno keys");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let made = cli(&["keys", "create", "--tenant", "acme", "--expires", "1d"]);
    let secret = made
        .lines()
        .last()
        .expect("the key line")
        .trim()
        .to_string();
    assert!(secret.starts_with("inf-"), "{made}");
    let listed: Value = serde_json::from_str(&cli(&["keys", "list", "--json"])).expect("JSON");
    let entry = listed
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["tenant"] == "acme"))
        .unwrap_or_else(|| panic!("acme's key not listed: {listed}"))
        .clone();
    assert_eq!(entry["scope"], "inference");
    assert!(!listed.to_string().contains(&secret), "a secret was listed");
    for api in up.coordinator_apis() {
        wait_until(
            "the new key on every coordinator",
            Duration::from_secs(2),
            || {
                let r = http::request(api, Some(&secret), "GET", "/v1/models", None, T).ok()?;
                (r.status == 200).then_some(())
            },
        );
    }
    let id = entry["id"].as_str().expect("id").to_string();
    cli(&["keys", "revoke", &id]);
    for api in up.coordinator_apis() {
        wait_until(
            "the revoked key refused everywhere",
            Duration::from_secs(2),
            || {
                let r = http::request(api, Some(&secret), "GET", "/v1/models", None, T).ok()?;
                (r.status == 401).then_some(())
            },
        );
    }

    // Key limits hold across coordinators: a 30-requests-a-minute key sent
    // round robin to all 3 gets about 30 served, not 90; refusals are 429s
    // with Retry-After and OpenAI's x-ratelimit-* headers.
    let last_line = |out: String| out.lines().last().unwrap_or_default().trim().to_string();
    let limited = last_line(cli(&["keys", "create", "--tenant", "quota", "--rpm", "30"]));
    for api in up.coordinator_apis() {
        wait_until("the limited key everywhere", Duration::from_secs(2), || {
            let r = http::request(api, Some(&limited), "GET", "/metrics", None, T).ok()?;
            (r.status == 200).then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let apis = up.coordinator_apis();
    let (mut served, mut refused) = (0, 0);
    for i in 0..90 {
        let r = http::request(apis[i % 3], Some(&limited), "GET", "/v1/models", None, T)
            .expect("models");
        match r.status {
            200 => {
                served += 1;
                assert_eq!(r.header("x-ratelimit-limit-requests"), Some("30"));
            }
            429 => {
                refused += 1;
                assert_eq!(
                    r.json()["error"]["code"],
                    "rate_limit_exceeded",
                    "{}",
                    r.body
                );
                assert!(
                    r.header("retry-after")
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|s| s >= 1),
                    "Retry-After"
                );
                assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
            }
            other => panic!("status {other}: {}", r.body),
        }
    }
    assert!(
        (30..=34).contains(&served),
        "served {served} of 90 (refused {refused})"
    );
    let m = http::request(up.api, up.key(), "GET", "/metrics", None, T).expect("metrics");
    assert!(
        m.body
            .contains("inferno_tenant_rate_limited_total{tenant=\"quota\",kind=\"requests\"}"),
        "per-tenant refusals: {}",
        m.body
    );

    // A one-at-a-time key: a second request while a stream runs is a 429
    // until the stream's client goes away.
    let single = last_line(cli(&[
        "keys",
        "create",
        "--tenant",
        "quota",
        "--max-concurrent",
        "1",
    ]));
    wait_until("the single key", Duration::from_secs(2), || {
        let r = http::request(up.api, Some(&single), "GET", "/v1/models", None, T).ok()?;
        (r.status == 200).then_some(())
    });
    let conn = open_long_stream(up.api, Some(&single), &model);
    let r = post(
        up.api,
        Some(&single),
        "/v1/chat/completions",
        &chat_body(&model, "hi", 2),
    )
    .expect("second");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "concurrency", "{}", r.body);
    drop(conn);
    wait_until(
        "the slot back after the stream's client left",
        Duration::from_secs(5),
        || {
            let r = post(
                up.api,
                Some(&single),
                "/v1/chat/completions",
                &chat_body(&model, "hi", 2),
            )
            .ok()?;
            (r.status == 200).then_some(())
        },
    );

    // Tokens per minute are charged after each request: a 20-token key is
    // refused once a request used more than its share.
    let frugal = last_line(cli(&["keys", "create", "--tenant", "quota", "--tpm", "20"]));
    wait_until("the frugal key", Duration::from_secs(2), || {
        let r = http::request(up.api, Some(&frugal), "GET", "/metrics", None, T).ok()?;
        (r.status == 200).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = post(
        up.api,
        Some(&frugal),
        "/v1/chat/completions",
        &chat_body(&model, "Say hello.", 8),
    )
    .expect("first");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        up.api,
        Some(&frugal),
        "/v1/chat/completions",
        &chat_body(&model, "Again.", 8),
    )
    .expect("second");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "tokens", "{}", r.body);
    assert!(
        r.header("x-ratelimit-limit-tokens") == Some("20"),
        "{:?}",
        r.header("x-ratelimit-limit-tokens")
    );

    // A tenant's limit is shared by its keys: two unlimited keys of a
    // 30-a-minute tenant, alternated round robin over all 3 coordinators,
    // get about 30 served between them; the refusal names the tenant.
    cli(&[
        "tenants",
        "set",
        "team",
        "--rpm",
        "30",
        "--priority",
        "batch",
    ]);
    let team = [
        last_line(cli(&["keys", "create", "--tenant", "team"])),
        last_line(cli(&["keys", "create", "--tenant", "team"])),
    ];
    for api in up.coordinator_apis() {
        for k in &team {
            wait_until("the team's keys everywhere", Duration::from_secs(2), || {
                let r = http::request(api, Some(k), "GET", "/metrics", None, T).ok()?;
                (r.status == 200).then_some(())
            });
        }
    }
    let listed: Value =
        serde_json::from_str(&cli(&["tenants", "list", "--json"])).expect("tenants JSON");
    let row = listed
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "team"))
        .unwrap_or_else(|| panic!("team not listed: {listed}"))
        .clone();
    assert_eq!(
        (&row["rpm"], &row["priority"], &row["keys"]),
        (&json!(30), &json!("batch"), &json!(2)),
        "{row}"
    );
    let (mut served, mut refusal) = (0, String::new());
    for i in 0..90 {
        let r = http::request(
            apis[i % 3],
            Some(&team[i % 2]),
            "GET",
            "/v1/models",
            None,
            T,
        )
        .expect("models");
        match r.status {
            200 => served += 1,
            429 => refusal = r.body,
            other => panic!("status {other}: {}", r.body),
        }
    }
    assert!((30..=34).contains(&served), "the team got {served} of 90");
    assert!(refusal.contains("of this tenant"), "{refusal}");

    // Tenants see only their own keys: acme's admin key lists acme's keys
    // and may not make keys for another tenant.
    let acme_admin = last_line(cli(&[
        "keys", "create", "--tenant", "acme", "--scope", "admin",
    ]));
    let r = wait_until("acme's admin key", Duration::from_secs(2), || {
        let r = http::request(up.api, Some(&acme_admin), "GET", "/admin/v1/keys", None, T).ok()?;
        (r.status == 200).then_some(r)
    });
    let tenants: Vec<String> = r.json()["keys"]
        .as_array()
        .map(|ks| {
            ks.iter()
                .map(|k| k["tenant"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| t == "acme"),
        "{tenants:?}"
    );
    let r = post(
        up.api,
        Some(&acme_admin),
        "/admin/v1/keys",
        &json!({"tenant": "default", "scope": "admin"}),
    )
    .expect("create");
    assert_eq!(r.status, 403, "{}", r.body);
    // Nor lift its own tenant's limits: only the operator sets those.
    let r = http::request(
        up.api,
        Some(&acme_admin),
        "PUT",
        "/admin/v1/tenants/acme",
        Some("{}"),
        T,
    )
    .expect("set tenant");
    assert_eq!(r.status, 403, "{}", r.body);

    // The official client.
    let url = format!("http://{}/v1", up.coordinator_apis()[1]);
    run_python_client("openai_client.py", &[&url, &model, &up.api_key]);

    // A client that goes away mid-stream frees its slot at the node.
    let conn = open_long_stream(up.api, up.key(), &model);
    let metrics = || {
        http::request(up.api, up.key(), "GET", "/metrics", None, T)
            .map(|r| r.body)
            .unwrap_or_default()
    };
    wait_until("the node to report the running sequence", T, || {
        (metric_sum(&metrics(), "inferno_running_sequences") >= 1.0).then_some(())
    });
    drop(conn);
    let freed = Instant::now();
    wait_until(
        "the slot to be freed after the client left",
        Duration::from_secs(10),
        || (metric_sum(&metrics(), "inferno_running_sequences") == 0.0).then_some(()),
    );
    eprintln!("slot freed {:?} after the disconnect", freed.elapsed());
    let m = metrics();
    assert!(m.contains("inferno_ttft_seconds"), "{m}");
    assert!(m.contains("inferno_requests_total"), "{m}");
}

/// Closed-loop clients sending whole (non-streaming) chat requests to the
/// coordinators in `targets`, recording every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(clients: usize, targets: Vec<SocketAddr>, key: &str, model: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let targets = Arc::new(Mutex::new(targets));
        let threads = (0..clients)
            .map(|c| {
                let (stop, ok, failures, targets) =
                    (stop.clone(), ok.clone(), failures.clone(), targets.clone());
                let body = chat_body(model, "Name a fruit.", 12);
                let key = key.to_string();
                std::thread::spawn(move || {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let addr = {
                            let t = targets.lock().expect("targets");
                            t[i % t.len()]
                        };
                        i += 1;
                        match post(addr, Some(&key), "/v1/chat/completions", &body) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("{addr}: {} {}", r.status, r.body)),
                            Err(e) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("{addr}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            targets,
            threads,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn ready_holders(up: &LocalUp, model: &str) -> Option<Vec<String>> {
    let v = up.cluster()?;
    let placements = v["placements"][model].as_object()?;
    Some(
        placements
            .iter()
            .filter(|(_, p)| p["state"] == "Ready")
            .map(|(n, _)| n.clone())
            .collect(),
    )
}

#[test]
fn requests_survive_a_node_kill_and_a_leader_kill() {
    let up = LocalUp::start(3, 2, &[], STARTUP);
    let model = model_name();
    let holders = wait_until("two ready replicas", T, || {
        ready_holders(&up, &model).filter(|h| h.len() == 2)
    });
    let load = Load::start(3, up.coordinator_apis(), &up.api_key, &model);
    wait_until("some answers", T, || (load.ok() >= 5).then_some(()));

    // SIGKILL a node holding a replica: no request fails (whole requests
    // are retried on the other replica) and the replica is re-placed.
    let victim = up.member(&holders[0]);
    signal(victim.pid, "-KILL");
    let killed_at = Instant::now();
    let before = load.ok();
    let replaced = wait_until("the replica re-placed on the third node", T, || {
        ready_holders(&up, &model).filter(|h| h.len() == 2 && !h.contains(&holders[0]))
    });
    eprintln!(
        "re-placed on {replaced:?} {:?} after the kill",
        killed_at.elapsed()
    );
    wait_until("answers after the node kill", T, || {
        (load.ok() >= before + 5).then_some(())
    });
    let failures = load.failures.lock().expect("failures").clone();
    assert!(
        failures.is_empty(),
        "requests failed after a node kill: {failures:?}"
    );

    // SIGKILL the leader coordinator; clients keep using the others.
    let leader_id = up
        .cluster()
        .and_then(|v| v["leader_id"].as_u64())
        .expect("leader");
    let leader = up.member(&format!("coordinator-{leader_id}"));
    let survivors: Vec<SocketAddr> = up
        .coordinator_apis()
        .into_iter()
        .filter(|a| Some(*a) != leader.http)
        .collect();
    *load.targets.lock().expect("targets") = survivors;
    // Let requests already sent to the leader finish first.
    std::thread::sleep(Duration::from_secs(2));
    load.failures.lock().expect("failures").clear();
    signal(leader.pid, "-KILL");
    let before = load.ok();
    std::thread::sleep(Duration::from_secs(8));
    let (ok, failures) = load.finish();
    assert!(
        ok >= before + 5,
        "too few answers after the leader kill: {} ",
        ok - before
    );
    assert!(
        failures.is_empty(),
        "requests failed after the leader kill: {failures:?}"
    );
}
