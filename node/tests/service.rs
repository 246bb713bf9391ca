//! The node service against a fake coordinator: heartbeats, assignment,
//! inference streams (including a client reset) and unloading.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::engine::EngineConfig;
use node::service::{CoordinatorAddr, NodeService, ServableFile, ServiceConfig};
use node::{OnnxSettings, RestartBudget};
use protocol::frame;
use protocol::quic;
use protocol::tls::{CertRole, ClusterCa};
use protocol::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, HeartbeatReply, InferenceRequest,
    NamedTensor, NodeHeartbeat, NodeRequest, NodeResponse, NodeStreamRequest, Prompt, ReplicaState,
    SamplingParams, TensorData, TensorInferRequest, MAX_NODE_FRAME_BYTES,
};
use quinn::{Connection, VarInt};

const T: Duration = Duration::from_secs(10);
const MODEL: &str = "smol";

/// What the fake coordinator answers and what it last heard.
#[derive(Default)]
struct CoordinatorState {
    assigned: Option<Vec<String>>,
    last: Option<NodeHeartbeat>,
    beats: usize,
}

type Shared = Arc<Mutex<CoordinatorState>>;

/// A coordinator that answers heartbeats from the shared state.
fn fake_coordinator(ca: &ClusterCa, state: Shared) -> (SocketAddr, quinn::Endpoint) {
    let id = ca.issue("coordinator-1", CertRole::Coordinator).unwrap();
    let endpoint =
        quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &id, ca.cert_der()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Ok(Some(conn)) = quic::accept_connection(&ep, T).await {
            let state = state.clone();
            tokio::spawn(async move {
                if quic::accept_hello(&conn, T).await.is_err() {
                    return;
                }
                while let Ok(Some((send, recv))) = quic::accept_stream(&conn, T).await {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = quic::serve_stream(
                            send,
                            recv,
                            MAX_NODE_FRAME_BYTES,
                            T,
                            |req: NodeRequest| async move {
                                let NodeRequest::Heartbeat(hb) = req else {
                                    return NodeResponse::Ack;
                                };
                                let mut s = state.lock().unwrap();
                                s.last = Some(hb);
                                s.beats += 1;
                                NodeResponse::Heartbeat(HeartbeatReply {
                                    assigned: s.assigned.clone(),
                                    from_leader: false,
                                })
                            },
                        )
                        .await;
                    });
                }
            });
        }
    });
    (addr, endpoint)
}

/// Waits until a heartbeat received after this call satisfies `pred`.
async fn wait_heartbeat(state: &Shared, what: &str, pred: impl Fn(&NodeHeartbeat) -> bool) {
    let start_beats = state.lock().unwrap().beats;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        {
            let s = state.lock().unwrap();
            if s.beats > start_beats && s.last.as_ref().is_some_and(&pred) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw a heartbeat where {what}: {:?}",
                s.last
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(model: &str, prompt: Prompt, max_tokens: u32, ignore_eos: bool) -> InferenceRequest {
    InferenceRequest {
        model: model.into(),
        prompt,
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos,
        cache_salt: String::new(),
        allow_special_tokens: false,
        priority: Default::default(),
        constraint: None,
        tools: None,
        logprobs: None,
    }
}

/// Sends a request on a new stream and reads every event to the last one.
async fn infer(conn: &Connection, req: &InferenceRequest) -> Vec<GenerateEvent> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    frame::write_frame(
        &mut send,
        &NodeStreamRequest::Inference(req.clone()),
        MAX_NODE_FRAME_BYTES,
        T,
    )
    .await
    .unwrap();
    send.finish().unwrap();
    let mut events = Vec::new();
    loop {
        let ev: GenerateEvent =
            frame::read_frame(&mut recv, MAX_NODE_FRAME_BYTES, Duration::from_secs(60))
                .await
                .unwrap();
        let last = matches!(
            ev,
            GenerateEvent::Finished { .. } | GenerateEvent::Failed(_)
        );
        events.push(ev);
        if last {
            break;
        }
    }
    // The node finishes the stream after the last event.
    let end: Result<GenerateEvent, _> = frame::read_frame(&mut recv, MAX_NODE_FRAME_BYTES, T).await;
    assert!(matches!(end, Err(frame::FrameError::Closed)), "{end:?}");
    events
}

fn onnx_settings() -> OnnxSettings {
    OnnxSettings {
        runtime: inferno_cluster_tests::onnx_runtime(),
        threads: 1,
        batching: Default::default(),
    }
}

/// Runs an ONNX model over a new stream: one request frame, one answer.
async fn run_onnx(
    conn: &Connection,
    model: &str,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, GenerateError> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = NodeStreamRequest::Infer(TensorInferRequest {
        model: model.into(),
        inputs,
    });
    frame::write_frame(&mut send, &req, MAX_NODE_FRAME_BYTES, T)
        .await
        .unwrap();
    send.finish().unwrap();
    frame::read_frame(&mut recv, MAX_NODE_FRAME_BYTES, T)
        .await
        .unwrap()
}

fn relu_input(rows: i64) -> NamedTensor {
    NamedTensor {
        name: "x".into(),
        shape: vec![rows, 4],
        data: TensorData::Fp32(vec![1.0; rows as usize * 4]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_onnx_model_serves_tensors_and_comes_back_after_a_crash() {
    let ca = ClusterCa::generate("test-ca").unwrap();
    let state: Shared = Arc::new(Mutex::new(CoordinatorState {
        assigned: Some(vec!["relu".to_string()]),
        ..Default::default()
    }));
    let (coord_addr, coord_endpoint) = fake_coordinator(&ca, state.clone());
    let dir = tempfile::tempdir().unwrap();
    let service = NodeService::start(ServiceConfig {
        identity: ca.issue("node-1", CertRole::Node).unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_addr: None,
        cores: 2,
        memory_bytes: 4 << 30,
        heartbeat_interval: Duration::from_millis(100),
        coordinators: vec![CoordinatorAddr {
            name: "coordinator-1".into(),
            addr: coord_addr,
        }],
        models: vec![ServableFile {
            name: "relu".into(),
            path: inferno_cluster_tests::onnx_test_model(dir.path()),
        }],
        engine: EngineConfig::default(),
        onnx: onnx_settings(),
        restart_budget: RestartBudget::default(),
        fl: node::service::FlConfig::default(),
        certs_dir: None,
    })
    .await
    .unwrap();
    wait_heartbeat(&state, "the ONNX model is ready", |hb| {
        hb.replicas
            .iter()
            .any(|r| r.model == "relu" && r.state == ReplicaState::Ready)
    })
    .await;
    {
        let s = state.lock().unwrap();
        let hb = s.last.as_ref().unwrap();
        let sig = hb.servable[0]
            .signature
            .as_ref()
            .expect("its signature is announced");
        assert_eq!(sig.inputs[0].name, "x");
        assert_eq!(sig.outputs[0].dims, vec![-1, 3]);
        assert!(hb.servable[0].card.is_none());
    }
    let router_id = ca.issue("coordinator-1", CertRole::Coordinator).unwrap();
    let router = quic::client_endpoint(&router_id, ca.cert_der()).unwrap();
    let conn = quic::connect(&router, service.local_addr(), "node-1", CertRole::Node, T)
        .await
        .unwrap();

    // Relu(x W + b) for x = 1: column j is sum_i (i - j) / 4 + j / 10 - 0.1.
    let want = [1.4f32, 0.5, 0.0];
    let out = run_onnx(&conn, "relu", vec![relu_input(2)]).await.unwrap();
    assert_eq!(out[0].shape, vec![2, 3]);
    let TensorData::Fp32(y) = &out[0].data else {
        panic!("{out:?}")
    };
    for (got, want) in y.iter().zip(want.iter().cycle()) {
        assert!((got - want).abs() < 1e-5, "{y:?}");
    }

    let mut bad = relu_input(1);
    bad.shape = vec![2, 2];
    match run_onnx(&conn, "relu", vec![bad]).await {
        Err(GenerateError::InvalidRequest(m)) => assert!(m.contains("'x'"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run_onnx(&conn, "nope", vec![relu_input(1)]).await,
        Err(GenerateError::UnknownModel(_))
    ));

    // A crash of the batching thread restarts the worker; it serves again.
    assert!(service.node().inject_worker_panic("relu"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = service.node().model_status("relu").await.unwrap();
        if s.restarts == 1 && s.state == node::ModelState::Ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never restarted: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(run_onnx(&conn, "relu", vec![relu_input(1)]).await.is_ok());

    state.lock().unwrap().assigned = Some(Vec::new());
    wait_heartbeat(&state, "no replica is left", |hb| hb.replicas.is_empty()).await;
    assert!(service.node().models().is_empty());

    conn.close(quic::CLOSE_NORMAL, b"done");
    router.close(quic::CLOSE_NORMAL, b"done");
    tokio::time::timeout(Duration::from_secs(20), service.shutdown())
        .await
        .expect("shutdown is bounded");
    coord_endpoint.close(quic::CLOSE_NORMAL, b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_follows_assignments_and_serves_streams() {
    let ca = ClusterCa::generate("test-ca").unwrap();
    let state: Shared = Arc::new(Mutex::new(CoordinatorState {
        assigned: Some(vec![MODEL.to_string()]),
        ..Default::default()
    }));
    let (coord_addr, coord_endpoint) = fake_coordinator(&ca, state.clone());

    let model_path = inferno_cluster_tests::test_model();
    let size = std::fs::metadata(&model_path).unwrap().len();
    let service = NodeService::start(ServiceConfig {
        identity: ca.issue("node-1", CertRole::Node).unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_addr: None,
        cores: 2,
        memory_bytes: 4 << 30,
        heartbeat_interval: Duration::from_millis(100),
        coordinators: vec![CoordinatorAddr {
            name: "coordinator-1".into(),
            addr: coord_addr,
        }],
        models: vec![ServableFile {
            name: MODEL.into(),
            path: model_path,
        }],
        engine: EngineConfig::default(),
        onnx: onnx_settings(),
        restart_budget: RestartBudget::default(),
        fl: node::service::FlConfig::default(),
        certs_dir: None,
    })
    .await
    .unwrap();
    let node_addr = service.local_addr();

    // The assignment is followed: the model loads and is reported ready.
    wait_heartbeat(&state, "the model is ready", |hb| {
        hb.replicas
            .iter()
            .any(|r| r.model == MODEL && r.state == ReplicaState::Ready)
    })
    .await;
    {
        let s = state.lock().unwrap();
        let hb = s.last.as_ref().unwrap();
        assert_eq!(hb.node_id, "node-1");
        assert_eq!(hb.addr, node_addr.to_string());
        assert_eq!((hb.cores, hb.memory_bytes), (2, 4 << 30));
        assert_eq!(hb.servable.len(), 1);
        assert_eq!(
            (hb.servable[0].name.as_str(), hb.servable[0].size_bytes),
            (MODEL, size)
        );
        assert!(hb.free_kv_bytes > 0);
    }

    // Another node's certificate may not drive this node: the node closes
    // the connection, saying why.
    let rogue_id = ca.issue("node-2", CertRole::Node).unwrap();
    let rogue_ep = quic::client_endpoint(&rogue_id, ca.cert_der()).unwrap();
    let refused = quic::connect(&rogue_ep, node_addr, "node-1", CertRole::Node, T)
        .await
        .expect_err("a node's certificate was let in");
    let reason = refused.to_string();
    assert!(reason.contains("coordinator certificate"), "{reason}");

    // Act as the coordinators' router.
    let router_id = ca.issue("coordinator-1", CertRole::Coordinator).unwrap();
    let router = quic::client_endpoint(&router_id, ca.cert_der()).unwrap();
    let conn = quic::connect(&router, node_addr, "node-1", CertRole::Node, T)
        .await
        .unwrap();

    let chat = Prompt::Chat(vec![ChatMessage::new("user", "Say hello.")]);
    let events = infer(&conn, &request(MODEL, chat, 8, true)).await;
    let tokens: usize = events
        .iter()
        .map(|e| match e {
            GenerateEvent::Token { token_ids, .. } => token_ids.len(),
            _ => 0,
        })
        .sum();
    match events.last() {
        Some(GenerateEvent::Finished { reason, usage }) => {
            assert_eq!(*reason, FinishReason::Length);
            assert_eq!(usage.completion_tokens, 8);
            assert!(usage.prompt_tokens > 3, "{usage:?}");
            assert_eq!(tokens, 8);
        }
        other => panic!("expected Finished, got {other:?}"),
    }

    // Raw text works too.
    let events = infer(
        &conn,
        &request(MODEL, Prompt::Text("The sea is".into()), 4, true),
    )
    .await;
    assert!(matches!(
        events.last(),
        Some(GenerateEvent::Finished { usage, .. }) if usage.completion_tokens == 4
    ));

    // Special-token text in a raw prompt is text (several tokens) unless
    // the request allows special tokens (then it is the one control token).
    let prompt_tokens = |allow: bool| {
        let mut r = request(MODEL, Prompt::Text("<|im_end|>".into()), 1, true);
        r.allow_special_tokens = allow;
        r
    };
    let count = |events: Vec<GenerateEvent>| match events.last() {
        Some(GenerateEvent::Finished { usage, .. }) => usage.prompt_tokens,
        other => panic!("expected Finished, got {other:?}"),
    };
    let as_text = count(infer(&conn, &prompt_tokens(false)).await);
    let as_special = count(infer(&conn, &prompt_tokens(true)).await);
    assert!(as_text > as_special, "{as_text} vs {as_special}");

    // An unknown model is one Failed event.
    let events = infer(&conn, &request("nope", Prompt::Text("hi".into()), 4, false)).await;
    assert!(
        matches!(
            events.as_slice(),
            [GenerateEvent::Failed(GenerateError::UnknownModel(_))]
        ),
        "{events:?}"
    );

    // A prompt longer than the context window is refused by the engine
    // (max_tokens left out: the rest of the window, here nothing).
    let mut too_long = request(MODEL, Prompt::Text("hello ".repeat(10_000)), 1, false);
    too_long.max_tokens = None;
    let events = infer(&conn, &too_long).await;
    assert!(
        matches!(
            events.as_slice(),
            [GenerateEvent::Failed(GenerateError::InvalidRequest(_))]
        ),
        "{events:?}"
    );

    // A client reset cancels the sequence at the node, long before the
    // 1000 tokens it asked for could be generated.
    let long = request(MODEL, Prompt::Text("Once upon a time".into()), 1000, true);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    frame::write_frame(
        &mut send,
        &NodeStreamRequest::Inference(long.clone()),
        MAX_NODE_FRAME_BYTES,
        T,
    )
    .await
    .unwrap();
    let first: GenerateEvent = frame::read_frame(&mut recv, MAX_NODE_FRAME_BYTES, T)
        .await
        .unwrap();
    assert!(matches!(first, GenerateEvent::Token { .. }), "{first:?}");
    assert_eq!(service.node().model_status(MODEL).await.unwrap().running, 1);
    send.reset(VarInt::from_u32(7)).unwrap();
    recv.stop(VarInt::from_u32(7)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let s = service.node().model_status(MODEL).await.unwrap();
        if s.running == 0 && s.waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reset request still runs: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_heartbeat(&state, "nothing runs", |hb| {
        hb.replicas.iter().all(|r| r.running == 0)
    })
    .await;

    // An empty assignment unloads the model.
    state.lock().unwrap().assigned = Some(Vec::new());
    wait_heartbeat(&state, "no replica is left", |hb| hb.replicas.is_empty()).await;
    assert!(service.node().models().is_empty());

    conn.close(quic::CLOSE_NORMAL, b"done");
    router.close(quic::CLOSE_NORMAL, b"done");
    tokio::time::timeout(Duration::from_secs(20), service.shutdown())
        .await
        .expect("shutdown is bounded");
    coord_endpoint.close(quic::CLOSE_NORMAL, b"done");
}
