//! Function tools end to end: `inferno up` on Qwen2.5-Coder-0.5B (whose
//! chat template offers tools), driven by the official `openai` Python
//! package (`tests/py/openai_tools.py`): required, named and automatic
//! calls that validate against their schemas, a two-turn conversation with
//! the tool's result, parallel calls, and streamed call deltas. Also what
//! `/v1/models` says about the model, read from its file; and the
//! Responses API (`tests/py/openai_responses.py`), whose stored responses
//! outlive the coordinator that stored them.

use std::time::Duration;

use inferno_cluster_tests::local_up::{signal, LocalUp};
use inferno_cluster_tests::{http, qwen_model, run_python_client};

const STARTUP: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(60);

#[test]
fn qwen_calls_tools_through_the_official_client() {
    let up = LocalUp::start_with_model(&qwen_model(), 1, 1, &[], STARTUP);
    let r = http::request(up.api, up.key(), "GET", "/v1/models", None, T).expect("models");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.json()["data"][0].clone();
    let model = m["id"].as_str().expect("model id").to_string();
    assert_eq!(m["architecture"], "qwen2", "{m}");
    assert_eq!(m["quantization"], "Q4_K_M", "{m}");
    assert_eq!(m["max_model_len"], 32768, "{m}");
    assert_eq!(m["size_bytes"], 491_400_064u64, "{m}");
    assert_eq!(m["capabilities"]["tools"], true, "{m}");
    let r = http::request(
        up.api,
        up.key(),
        "GET",
        &format!("/v1/models/{model}"),
        None,
        T,
    )
    .expect("one model");
    assert_eq!((r.status, r.json()), (200, m), "{}", r.body);

    let url = format!("http://{}/v1", up.api);
    run_python_client("openai_tools.py", &[&url, &model, &up.api_key]);

    // The Responses API needs a key like every other route; stored
    // responses live on a majority of the coordinators, so killing the one
    // that answered loses nothing.
    let body = format!(r#"{{"model": "{model}", "input": "Hi"}}"#);
    let r = http::request(up.api, None, "POST", "/v1/responses", Some(&body), T)
        .expect("keyless responses request");
    assert_eq!(r.status, 401, "{}", r.body);
    let apis = up.coordinator_apis();
    let first = up
        .members
        .iter()
        .find(|m| m.http == Some(apis[0]))
        .expect("the first coordinator");
    let url = format!("http://{}/v1", apis[0]);
    let printed = run_python_client(
        "openai_responses.py",
        &["create", &url, &model, &up.api_key],
    );
    let ids = printed.lines().last().expect("response ids").to_string();
    signal(first.pid, "-KILL");
    let url = format!("http://{}/v1", apis[1]);
    run_python_client(
        "openai_responses.py",
        &["continue", &url, &model, &up.api_key, &ids],
    );
}
