//! `inferno fl` and `inferno bench fl` as a user runs them, against real
//! clusters: `bench fl` on its own throwaway cluster, and `fl start --wait`,
//! `fl status` (table, JSON, PNG plot) and `fl stop` against `inferno up`.
//! Needs the MNIST file (`inferno fl data mnist`; the test script fetches
//! it) and the test model (for `inferno up`).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use inferno_cluster_tests::inferno;
use inferno_cluster_tests::local_up::LocalUp;
use serde_json::Value;

/// Runs a command to completion, killing it after `timeout`.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn inferno");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bench_fl_prints_a_json_line_per_round_and_a_summary() {
    let data = inferno_cluster_tests::data_dir();
    let out = run(
        inferno()
            .args([
                "bench",
                "fl",
                "--dataset",
                "mnist",
                "--split",
                "iid",
                "--rounds",
                "2",
                "--clients",
                "2",
                "--max-rows-per-client",
                "1000",
                "--json",
                "--data-dir",
            ])
            .arg(&data),
        Duration::from_secs(300),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (i, r) in lines[..2].iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1, "{r}");
        assert!(r["accuracy"].as_f64().is_some_and(|a| a > 0.5), "{r}");
        assert!(
            r["loss"].as_f64().is_some() && r["seconds"].as_f64().is_some(),
            "{r}"
        );
    }
    let s = &lines[2];
    assert_eq!(
        (s["rounds"].as_u64(), s["clients"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(s["split"], "iid");
    assert_eq!(s["final_accuracy"], lines[1]["accuracy"]);
    assert!(s["wall_seconds"].as_f64().is_some_and(|w| w > 0.0), "{s}");
}

const JOB: &str = r#"
id = "cli-job"
dataset = "mnist"
model = { kind = "mlp", layers = [784, 32, 10] }
rounds = 2
train = { optimizer = { kind = "sgd", lr = 0.05 }, batch_size = 32, local_epochs = 1, proximal_mu = 0.0, seed = 42 }
sampling = { fraction = 1.0, min_clients = 2 }
round_timeout_s = 60
partition = { split = "iid", clients = 2, seed = 42, max_rows_per_client = 1000 }
"#;

#[test]
fn fl_start_wait_status_plot_and_stop_against_inferno_up() {
    let data = inferno_cluster_tests::data_dir();
    let up = LocalUp::start(
        2,
        1,
        &["--fl-data-dir", data.to_str().expect("utf-8 path")],
        Duration::from_secs(240),
    );
    let url = format!("http://{}", up.api);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Duration::from_secs(60);

    let job = dir.path().join("job.toml");
    std::fs::write(&job, JOB).expect("write job");
    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "start", "--url", &url, "--wait", "--timeout-s", "200"])
            .arg(&job),
        Duration::from_secs(240),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("submitted job cli-job"), "{stdout}");
    assert!(
        stdout.contains("round   1  accuracy") && stdout.contains("round   2"),
        "{stdout}"
    );
    assert!(stdout.contains("job cli-job: Completed"), "{stdout}");

    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "status", "--url", &url]),
        t,
    );
    let list = text(&out.stdout);
    assert!(
        out.status.success() && list.contains("cli-job") && list.contains("Completed"),
        "{list}"
    );

    // Another tenant's admin key does not see the job, nor can it stop it.
    let made = inferno_cluster_tests::http::request(
        up.api,
        up.admin(),
        "POST",
        "/admin/v1/keys",
        Some(r#"{"tenant": "other", "scope": "admin"}"#),
        t,
    )
    .expect("make a key");
    assert_eq!(made.status, 200, "{}", made.body);
    let other = made.json()["key"].as_str().expect("key").to_string();
    inferno_cluster_tests::wait_until("the other key applied", Duration::from_secs(5), || {
        let r = inferno_cluster_tests::http::request(
            up.api,
            Some(&other),
            "GET",
            "/admin/v1/fl/jobs",
            None,
            t,
        )
        .ok()?;
        (r.status == 200).then_some(())
    });
    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &other)
            .args(["fl", "status", "--url", &url]),
        t,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("cli-job"),
        "{}",
        text(&out.stdout)
    );
    for (method, path) in [
        ("GET", "/admin/v1/fl/jobs/cli-job"),
        ("POST", "/admin/v1/fl/jobs/cli-job/stop"),
        ("GET", "/admin/v1/fl/jobs/cli-job/model"),
    ] {
        let body = (method == "POST").then_some("{}");
        let r = inferno_cluster_tests::http::request(up.api, Some(&other), method, path, body, t)
            .expect("request");
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
    }

    let png = dir.path().join("plot.png");
    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "status", "--url", &url, "cli-job", "--plot"])
            .arg(&png),
        t,
    );
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", text(&out.stderr));
    assert!(table.contains("round | accuracy"), "{table}");
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("2 |")),
        "{table}"
    );
    assert_eq!(&std::fs::read(&png).expect("png")[..4], b"\x89PNG");

    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "status", "--url", &url, "cli-job", "--json"]),
        t,
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["rounds"].as_array().map(Vec::len), Some(2), "{v}");

    // A long job is stopped.
    let long = dir.path().join("long.toml");
    std::fs::write(
        &long,
        JOB.replace("cli-job", "cli-long")
            .replace("rounds = 2", "rounds = 500"),
    )
    .expect("write job");
    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "start", "--url", &url])
            .arg(&long),
        t,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        inferno()
            .env("INFERNO_API_KEY", &up.admin_key)
            .args(["fl", "stop", "--url", &url, "cli-long"]),
        t,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(
            inferno()
                .env("INFERNO_API_KEY", &up.admin_key)
                .args(["fl", "status", "--url", &url, "cli-long", "--json"]),
            t,
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["status"] == "Cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Errors are explained, not panics.
    let out = run(
        inferno().env("INFERNO_API_KEY", &up.admin_key).args([
            "fl",
            "status",
            "--url",
            &url,
            "no-such-job",
        ]),
        t,
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("HTTP 404"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
