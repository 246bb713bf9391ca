//! Byzantine robustness through real processes: 4 nodes train a federated
//! job and one of them sends garbage updates (`inferno up
//! --fl-byzantine-nodes 1`); with Krum (f = 1) the job still converges.
//! Needs MNIST (`inferno fl data mnist`; the test script fetches it).

use std::time::Duration;

use inferno_cluster_tests::http;
use inferno_cluster_tests::local_up::LocalUp;

const JOB: &str = r#"
id = "krum-test"
dataset = "mnist"
model = { kind = "mlp", layers = [784, 64, 10] }
init = { seed = 7 }
rounds = 5
strategy = { name = "krum", f = 1 }
train = { optimizer = { kind = "sgd", lr = 0.05 }, batch_size = 32, local_epochs = 1, proximal_mu = 0.0, seed = 42 }
sampling = { fraction = 1.0, min_clients = 4 }
round_timeout_s = 60
partition = { split = "iid", clients = 4, seed = 42, max_rows_per_client = 2000 }
"#;

#[test]
fn krum_job_converges_with_a_node_sending_garbage() {
    let data = inferno_cluster_tests::data_dir();
    let up = LocalUp::start(
        4,
        1,
        &[
            "--fl-data-dir",
            data.to_str().expect("utf-8 path"),
            "--fl-byzantine-nodes",
            "1",
        ],
        Duration::from_secs(240),
    );
    let r = http::request(
        up.api,
        up.admin(),
        "POST",
        "/admin/v1/fl/jobs",
        Some(JOB),
        Duration::from_secs(30),
    )
    .expect("submit");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = up.wait_fl_job(
        "krum-test",
        "the job to complete",
        Duration::from_secs(300),
        |v| v["status"] == "Completed",
    );
    let rounds = v["rounds"].as_array().expect("rounds");
    let accuracy: Vec<f64> = rounds
        .iter()
        .map(|r| r["metrics"]["accuracy"].as_f64().unwrap_or(f64::NAN))
        .collect();
    eprintln!("Krum with one garbage node, accuracy per round: {accuracy:?}");
    assert_eq!(rounds.len(), 5);
    assert!(
        rounds.iter().all(|r| r["metrics"]["participants"] == 4.0),
        "every round had the garbage node in it: {v}"
    );
    assert!(accuracy[4] > 0.8, "{accuracy:?}");
}
