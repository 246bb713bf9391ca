//! Loading and unloading models on a running node.

use std::time::Duration;

use backends::engine::EngineConfig;
use node::{ModelSpec, Node, NodeError, RestartBudget};
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
