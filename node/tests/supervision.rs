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
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerateRequest::default()
    }
}

async fn finish(mut rx: Receiver<GenerateEvent>) -> Result<FinishReason, GenerateError> {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(GenerateEvent::Token { .. } | GenerateEvent::KeepAlive) => {}
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

fn fl_request(job: &str) -> protocol::fl::FlTrainRequest {
    let spec = backends::fl::JobSpec::from_toml(
        r#"
id = "j"
dataset = "mnist"
model = { kind = "logistic_regression", inputs = 784, classes = 10 }
rounds = 1
train = { optimizer = { kind = "sgd", lr = 0.1 }, batch_size = 8, local_epochs = 1, proximal_mu = 0.0, seed = 1 }
partition = { split = "iid", clients = 2 }
"#,
    )
    .unwrap();
    protocol::fl::FlTrainRequest {
        job: job.into(),
        round: 1,
        spec_json: spec.to_json().unwrap(),
        global: spec.model.init(0).unwrap().to_raw_le(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_federated_worker_is_restarted_within_its_budget() {
    use protocol::fl::FlTrainResponse;
    let node = Node::start(Vec::new(), RestartBudget::new(2, Duration::from_secs(60)))
        .await
        .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let shared = std::sync::Arc::new(node::FlShared::new(node::FlConfig {
        client: Some(0),
        data_dir: empty.path().to_path_buf(),
        byzantine: false,
    }));
    let failed = |r: FlTrainResponse| match r {
        FlTrainResponse::Failed(reason) => reason,
        FlTrainResponse::Update(_) => panic!("no data here: training cannot succeed"),
    };
    // Without a crash: a clear error about the missing data.
    let reason = failed(node.train_round(&shared, fl_request("j")).await);
    assert!(reason.contains("inferno fl data mnist"), "{reason}");
    // A panic in training fails the round, the worker is restarted and
    // the next round is handled again; other jobs are unaffected.
    for _ in 0..2 {
        assert!(node.inject_fl_panic("j", &shared).await);
        let reason = failed(node.train_round(&shared, fl_request("j")).await);
        assert!(reason.contains("panicked"), "{reason}");
        let reason = failed(node.train_round(&shared, fl_request("j")).await);
        assert!(
            reason.contains("inferno fl data mnist"),
            "restarted: {reason}"
        );
    }
    // Out of restarts: the job's worker stays down, another job works.
    assert!(node.inject_fl_panic("j", &shared).await);
    let _ = node.train_round(&shared, fl_request("j")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reason = failed(node.train_round(&shared, fl_request("j")).await);
    assert!(reason.contains("failed too often"), "{reason}");
    let reason = failed(node.train_round(&shared, fl_request("other")).await);
    assert!(reason.contains("inferno fl data mnist"), "{reason}");
    node.shutdown().await;
}
