//! ONNX models next to the LLM on one cluster: `inferno up` with two
//! `--model`s (the test GGUF model and the ONNX test model written by
//! `scripts/make-onnx-test-model.py`), the KServe v2 API driven by the
//! official `tritonclient[http]` package (`tests/py/triton_client.py`),
//! the key required, each API refusing the other kind of model, and the
//! ONNX replica re-placed after its node is killed.

use std::time::{Duration, Instant};

use inferno_cluster_tests::local_up::{signal, LocalUp};
use inferno_cluster_tests::{
    http, onnx_test_model, run_python_client, test_model, test_model_name,
};

const STARTUP: Duration = Duration::from_secs(180);
const T: Duration = Duration::from_secs(30);
const MODEL: &str = "affine_relu";

fn infer_body(rows: usize) -> String {
    let data = vec!["1.0"; rows * 4].join(", ");
    format!(
        r#"{{"inputs": [{{"name": "x", "shape": [{rows}, 4], "datatype": "FP32", "data": [{data}]}}]}}"#
    )
}

fn ready_holder(up: &LocalUp) -> Option<String> {
    let v = up.cluster()?;
    v["placements"][MODEL]
        .as_object()?
        .iter()
        .find(|(_, p)| p["state"] == "Ready")
        .map(|(n, _)| n.clone())
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_onnx_model_serves_tritonclient_beside_the_llm_and_survives_a_node_kill() {
    let models = tempfile::tempdir().expect("tempdir");
    let onnx = onnx_test_model(models.path());
    let onnx_arg = onnx.to_str().expect("utf-8 path");
    let up = LocalUp::start_with_model(
        &test_model(),
        2,
        1,
        &["--coordinators", "1", "--model", onnx_arg],
        STARTUP,
    );
    let infer = format!("/v2/models/{MODEL}/infer");

    // Every v2 route needs a key.
    for (method, path, body) in [
        ("GET", format!("/v2/models/{MODEL}"), None),
        ("GET", "/v2/health/ready".to_string(), None),
        ("POST", infer.clone(), Some(infer_body(1))),
    ] {
        let r = http::request(up.api, None, method, &path, body.as_deref(), T).expect("keyless");
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
    }

    run_python_client(
        "triton_client.py",
        &[
            &up.api.to_string(),
            &up.dir.path().join("api.key").to_string_lossy(),
            MODEL,
        ],
    );

    // The calls are counted like the OpenAI API's.
    let r = http::request(up.api, up.key(), "GET", "/metrics", None, T).expect("metrics");
    let counted = format!("inferno_requests_total{{model=\"{MODEL}\",status=\"200\"}}");
    assert!(r.body.contains(&counted), "{}", r.body);
    assert!(
        r.body.contains(&format!(
            "inferno_requests_total{{model=\"{MODEL}\",status=\"400\"}}"
        )),
        "the refused input is counted: {}",
        r.body
    );

    // Each API refuses the other kind of model, saying which it is.
    let chat =
        format!(r#"{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}"#);
    let r = http::request(
        up.api,
        up.key(),
        "POST",
        "/v1/chat/completions",
        Some(&chat),
        T,
    )
    .expect("chat with an ONNX model");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("ONNX"), "{}", r.body);
    let llm_infer = format!("/v2/models/{}/infer", test_model_name());
    let r = http::request(
        up.api,
        up.key(),
        "POST",
        &llm_infer,
        Some(&infer_body(1)),
        T,
    )
    .expect("v2 infer on the LLM");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http::request(up.api, up.key(), "POST", &infer, Some("{\"inputs\": 3}"), T)
        .expect("malformed infer");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].is_string(), "{}", r.body);

    // SIGKILL the node holding the ONNX replica: it is re-placed on the
    // other node and serves again.
    let holder = wait_until("a ready ONNX replica", T, || ready_holder(&up));
    signal(up.member(&holder).pid, "-KILL");
    let moved = wait_until(
        "the ONNX replica re-placed",
        Duration::from_secs(60),
        || ready_holder(&up).filter(|h| *h != holder),
    );
    eprintln!("the ONNX replica moved from {holder} to {moved}");
    let r = wait_until("an answer after the node kill", T, || {
        let r = http::request(up.api, up.key(), "POST", &infer, Some(&infer_body(2)), T).ok()?;
        (r.status == 200).then_some(r)
    });
    let y = r.json()["outputs"][0]["data"].clone();
    let y: Vec<f64> = serde_json::from_value(y).expect("FP32 data");
    let want = [1.4, 0.5, 0.0, 1.4, 0.5, 0.0];
    assert!(
        y.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-5),
        "{y:?}"
    );
}
