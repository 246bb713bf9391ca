//! The node's actor tree: a crashed worker fails its in-flight requests,
//! is restarted within its budget, and never takes other models down;
//! models load and unload at run time.

use std::time::Duration;

use backends::engine::EngineConfig;
use node::{ModelSpec, ModelState, Node, NodeError, RestartBudget};
use protocol::{FinishReason, GenerateError, GenerateEvent, GenerateRequest, SamplingParams};
use tokio::sync::mpsc::Receiver;

fn spec(name: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        path: inferno_cluster_tests::test_model(),
        engine: EngineConfig::default(),
    }
}

fn request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: vec![100, 200, 300, 400],
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
    }
}

async fn finish(mut rx: Receiver<GenerateEvent>) -> Result<FinishReason, GenerateError> {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(GenerateEvent::Token { .. }) => {}
                Some(GenerateEvent::Finished { reason, .. }) => return Ok(reason),
                Some(GenerateEvent::Failed(e)) => return Err(e),
                None => panic!("stream closed without a final event"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("request neither finished nor failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_worker_fails_in_flight_requests_and_restarts() {
    let node = Node::start(vec![spec("a"), spec("b")], RestartBudget::default())
        .await
        .unwrap();
    node.wait_ready("a", Duration::from_secs(30)).await.unwrap();
    node.wait_ready("b", Duration::from_secs(30)).await.unwrap();

    let mut in_flight = node.generate("a", request(1000)).await.unwrap();
    assert!(matches!(
        in_flight.recv().await,
        Some(GenerateEvent::Token { .. })
    ));
    let other = node.generate("b", request(16)).await.unwrap();
    assert!(node.inject_worker_panic("a"));

    match finish(in_flight).await {
        Err(GenerateError::Unavailable(msg)) => assert!(msg.contains("stopped"), "{msg}"),
        other => panic!("in-flight request should fail, got {other:?}"),
    }
    assert_eq!(
        finish(other).await.unwrap(),
        FinishReason::Length,
        "model b must keep serving"
    );

    node.wait_ready("a", Duration::from_secs(30)).await.unwrap();
    let status = node.model_status("a").await.unwrap();
    assert_eq!(status.restarts, 1);
    let after = node.generate("a", request(8)).await.unwrap();
    assert_eq!(finish(after).await.unwrap(), FinishReason::Length);
    node.shutdown().await;
}

async fn wait_for(node: &Node, model: &str, what: &str, pred: impl Fn(&node::ModelStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = node.model_status(model).await.unwrap();
        if pred(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{model} never {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_is_marked_failed_when_restart_budget_is_spent() {
    let node = Node::start(
        vec![spec("a")],
        RestartBudget::new(1, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    node.wait_ready("a", Duration::from_secs(30)).await.unwrap();
    assert!(node.inject_worker_panic("a"));
    wait_for(&node, "a", "restarted", |s| {
        s.restarts == 1 && s.state == ModelState::Ready
    })
    .await;
    assert!(node.inject_worker_panic("a"));
    wait_for(&node, "a", "failed", |s| {
        matches!(s.state, ModelState::Failed(_))
    })
    .await;
    let s = node.model_status("a").await.unwrap();
    assert!(
        matches!(s.state, ModelState::Failed(ref r) if r.contains("restart budget")),
        "{:?}",
        s.state
    );
    match node.generate("a", request(4)).await {
        Err(GenerateError::Unavailable(msg)) => assert!(msg.contains("failed"), "{msg}"),
        other => panic!(
            "failed model must refuse requests, got {:?}",
            other.map(|_| ())
        ),
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloadable_model_fails_alone_and_unknown_model_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"not a model").unwrap();
    let broken = ModelSpec {
        name: "broken".into(),
        path: bad,
        engine: EngineConfig::default(),
    };
    let node = Node::start(vec![broken, spec("good")], RestartBudget::default())
        .await
        .unwrap();
    node.wait_ready("good", Duration::from_secs(30))
        .await
        .unwrap();
    let s = node.model_status("broken").await.unwrap();
    assert!(
        matches!(s.state, ModelState::Failed(ref r) if r.contains("not a valid GGUF")),
        "{:?}",
        s.state
    );
    assert!(matches!(
        node.generate("nope", request(4)).await,
        Err(GenerateError::UnknownModel(_))
    ));
    assert_eq!(
        finish(node.generate("good", request(4)).await.unwrap())
            .await
            .unwrap(),
        FinishReason::Length
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_and_unload_at_run_time() {
    let node = Node::start(Vec::new(), RestartBudget::default())
        .await
        .unwrap();
    assert!(node.status().await.is_empty());
    assert!(matches!(
        node.generate("a", request(4)).await,
        Err(GenerateError::UnknownModel(_))
    ));

    node.load(spec("a")).await.unwrap();
    // Loading a name already present is a no-op.
    node.load(spec("a")).await.unwrap();
    assert_eq!(node.models(), vec!["a".to_string()]);
    node.wait_ready("a", Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        finish(node.generate("a", request(8)).await.unwrap())
            .await
            .unwrap(),
        FinishReason::Length
    );

    // A request in flight fails when its model is unloaded.
    let mut in_flight = node.generate("a", request(1000)).await.unwrap();
    assert!(matches!(
        in_flight.recv().await,
        Some(GenerateEvent::Token { .. })
    ));
    node.unload("a").await.unwrap();
    match finish(in_flight).await {
        Err(GenerateError::Unavailable(_)) => {}
        other => panic!("in-flight request should fail, got {other:?}"),
    }
    assert!(matches!(
        node.generate("a", request(4)).await,
        Err(GenerateError::UnknownModel(_))
    ));
    assert!(matches!(
        node.model_status("a").await,
        Err(NodeError::UnknownModel(_))
    ));
    assert!(matches!(
        node.unload("a").await,
        Err(NodeError::UnknownModel(_))
    ));
    assert!(node.status().await.is_empty());

    // Loading it again works.
    node.load(spec("a")).await.unwrap();
    node.wait_ready("a", Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        finish(node.generate("a", request(4)).await.unwrap())
            .await
            .unwrap(),
        FinishReason::Length
    );
    let s = node.model_status("a").await.unwrap();
    assert_eq!(s.restarts, 0);
    node.shutdown().await;
}
