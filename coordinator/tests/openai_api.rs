//! The OpenAI API (`coordinator::openai`) driven through its router with a
//! scripted backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use protocol::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, InferenceRequest, Prompt,
    TokenizeOutput, TokenizeRequest, Usage,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

use coordinator::openai::{
    router, router_with_config, ApiConfig, InferenceBackend, Metrics, ModelEntry, RouteError,
    Routed,
};

const MODEL: &str = "smollm";

/// What the fake backend does with a request.
#[derive(Clone)]
enum Script {
    /// Sends these events and drops the sender (the stream ends).
    Events(Vec<GenerateEvent>),
    /// Sends these events and keeps the sender (the stream stays open).
    Hold(Vec<GenerateEvent>),
    /// Sends each event after its pause, from a task of its own (the
    /// stream ends after the last).
    Paced(Vec<(Duration, GenerateEvent)>),
    /// Refuses to route.
    Reject(RouteError),
}

struct Fake {
    script: Script,
    ready: Result<(), RouteError>,
    requests: Mutex<Vec<InferenceRequest>>,
    held: Mutex<Vec<mpsc::Sender<GenerateEvent>>>,
    stored: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

impl Fake {
    fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script,
            ready: Ok(()),
            requests: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            stored: Mutex::new(Default::default()),
        })
    }

    fn last_request(&self) -> InferenceRequest {
        self.requests.lock().unwrap().last().cloned().unwrap()
    }

    fn held_sender(&self) -> mpsc::Sender<GenerateEvent> {
        self.held.lock().unwrap()[0].clone()
    }
}

impl InferenceBackend for Fake {
    fn models(&self) -> Vec<ModelEntry> {
        vec![ModelEntry {
            id: MODEL.into(),
            ready_replicas: 1,
            card: Some(protocol::ModelCard {
                architecture: "qwen2".into(),
                context_length: 32768,
                quantization: "Q4_K_M".into(),
                parameters: 494_000_000,
                size_bytes: 491_400_064,
                chat_template: true,
                tool_format: Some(protocol::ToolFormat::Hermes),
            }),
        }]
    }

    async fn generate(
        &self,
        req: InferenceRequest,
        _prefer: Option<String>,
    ) -> Result<Routed, RouteError> {
        let model = req.model.clone();
        self.requests.lock().unwrap().push(req);
        if model != MODEL {
            return Err(RouteError::UnknownModel(model));
        }
        let (tx, rx) = mpsc::channel(64);
        let send_all = |events: &[GenerateEvent]| {
            for e in events {
                tx.try_send(e.clone()).unwrap();
            }
        };
        match &self.script {
            Script::Reject(e) => return Err(e.clone()),
            Script::Events(events) => send_all(events),
            Script::Hold(events) => {
                send_all(events);
                self.held.lock().unwrap().push(tx.clone());
            }
            Script::Paced(events) => {
                let (tx, events) = (tx.clone(), events.clone());
                tokio::spawn(async move {
                    for (pause, e) in events {
                        tokio::time::sleep(pause).await;
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Ok(Routed {
            node: "node-a".into(),
            events: rx,
        })
    }

    async fn ready(&self) -> Result<(), RouteError> {
        self.ready.clone()
    }

    async fn save_response(&self, id: String, record: Vec<u8>) -> Result<(), RouteError> {
        self.stored.lock().unwrap().insert(id, record);
        Ok(())
    }

    async fn load_response(&self, id: String) -> Result<Option<Vec<u8>>, RouteError> {
        Ok(self.stored.lock().unwrap().get(&id).cloned())
    }

    async fn delete_response(&self, id: String) -> Result<bool, RouteError> {
        Ok(self.stored.lock().unwrap().remove(&id).is_some())
    }

    /// One token per byte of text (and per message role and content);
    /// ids decode back to bytes, and ids above 255 are out of vocabulary.
    async fn tokenize(&self, req: TokenizeRequest) -> Result<TokenizeOutput, RouteError> {
        if req.model() != MODEL {
            return Err(RouteError::UnknownModel(req.model().into()));
        }
        match req {
            TokenizeRequest::Encode { prompt, .. } => {
                let text = match prompt {
                    Prompt::Text(t) => t,
                    Prompt::Chat(ms) => ms
                        .iter()
                        .map(|m| format!("{}{}", m.role, m.content))
                        .collect(),
                };
                Ok(TokenizeOutput::Tokens(
                    text.bytes().map(u32::from).collect(),
                ))
            }
            TokenizeRequest::Decode { tokens, .. } => {
                let bytes = tokens
                    .iter()
                    .map(|&t| {
                        u8::try_from(t).map_err(|_| {
                            RouteError::Invalid(format!("token id {t} is out of range"))
                        })
                    })
                    .collect::<Result<Vec<u8>, _>>()?;
                Ok(TokenizeOutput::Text(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ))
            }
        }
    }
}

fn token(text: &str) -> GenerateEvent {
    GenerateEvent::Token {
        text: text.into(),
        token_ids: vec![1],
        logprobs: Vec::new(),
    }
}

fn finished() -> GenerateEvent {
    GenerateEvent::Finished {
        reason: FinishReason::Stop,
        usage: Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
        },
    }
}

fn hello_world() -> Script {
    Script::Events(vec![token("Hello"), token(" world"), finished()])
}

fn make_app(fake: &Arc<Fake>) -> (Router, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (router(fake.clone(), metrics.clone()), metrics)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// The SSE payloads that are JSON (all but `[DONE]`).
    fn chunks(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    fn assert_error(&self, status: StatusCode, param: Option<&str>) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let error = &v["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(error["type"].is_string(), "{v}");
        assert!(error.get("code").is_some(), "{v}");
        match param {
            Some(p) => assert_eq!(error["param"], p, "{v}"),
            None => assert!(error.get("param").is_some(), "{v}"),
        }
        error.clone()
    }
}

async fn send(app: Router, method: &str, uri: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn post(app: Router, uri: &str, body: Value) -> Answer {
    send(app, "POST", uri, &body.to_string()).await
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn openai_chat_non_streaming() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(app, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        v["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world"},
            "logprobs": null,
            "finish_reason": "stop",
        }])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    );
    let req = fake.last_request();
    assert_eq!(
        req.prompt,
        Prompt::Chat(vec![ChatMessage::new("user", "Hi")])
    );
    assert_eq!(req.max_tokens, None);
    // OpenAI defaults, not llama.cpp's.
    assert_eq!(req.sampling.temperature, 1.0);
    assert_eq!(req.sampling.top_p, 1.0);
    assert_eq!(req.sampling.top_k, 0);
    assert_eq!(req.sampling.min_p, 0.0);
    assert_eq!(req.sampling.repetition_penalty, 1.0);
    assert_eq!(req.sampling.seed, None);
    assert!(!req.ignore_eos);
}

#[tokio::test]
async fn openai_completion_non_streaming() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let body = json!({"model": MODEL, "prompt": ["Once"], "max_tokens": 16});
    let a = post(app, "/v1/completions", body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "text": "Hello world", "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(v["usage"]["total_tokens"], 7);
    let req = fake.last_request();
    assert_eq!(req.prompt, Prompt::Text("Once".into()));
    assert_eq!(req.max_tokens, Some(16));
}

#[tokio::test]
async fn openai_chat_streaming_chunks_in_order() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = a.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = a.chunks();
    assert_eq!(chunks.len(), 4, "{}", a.body);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert!(c.get("usage").is_none(), "{c}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello"})
    );
    assert_eq!(
        chunks[2]["choices"][0]["delta"],
        json!({"content": " world"})
    );
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_stream_include_usage_ends_with_usage_chunk() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let a = post(app, "/v1/chat/completions", body).await;
    let chunks = a.chunks();
    assert_eq!(chunks.len(), 5, "{}", a.body);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    );
    for c in &chunks[..4] {
        assert_eq!(c["usage"], Value::Null, "{c}");
        assert!(c.get("usage").is_some());
    }
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn openai_completion_streaming() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let body = json!({"model": MODEL, "prompt": "Once", "stream": true});
    let a = post(app, "/v1/completions", body).await;
    let chunks = a.chunks();
    let texts: Vec<_> = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["Hello", " world", ""]);
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn openai_stop_string_and_array_and_params_reach_the_backend() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"stop": "\n"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(fake.last_request().stop, ["\n"]);

    let extra = json!({
        "stop": ["END", "###"], "temperature": 0, "top_p": 0.5, "seed": 42,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "max_tokens": 9,
        "max_completion_tokens": 12, "ignore_eos": true, "top_k": 20, "min_p": 0.1,
        "repetition_penalty": 1.1, "n": 1, "user": "someone", "logit_bias": {"15": -100, "7": 2.5},
    });
    let a = post(app, "/v1/chat/completions", chat_body(extra)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let req = fake.last_request();
    assert_eq!(req.stop, ["END", "###"]);
    assert_eq!(req.sampling.temperature, 0.0);
    assert_eq!(req.sampling.top_p, 0.5);
    assert_eq!(req.sampling.seed, Some(42));
    assert_eq!(req.sampling.presence_penalty, 0.5);
    assert_eq!(req.sampling.frequency_penalty, -0.5);
    assert_eq!(req.sampling.top_k, 20);
    assert_eq!(req.sampling.min_p, 0.1);
    assert_eq!(req.sampling.repetition_penalty, 1.1);
    assert_eq!(req.max_tokens, Some(12), "max_completion_tokens wins");
    let mut bias = req.sampling.logit_bias.clone();
    bias.sort_by_key(|b| b.0);
    assert_eq!(bias, [(7, 2.5), (15, -100.0)]);
    assert!(req.ignore_eos);
}

#[tokio::test]
async fn openai_content_parts() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let body = json!({"model": MODEL, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]});
    let a = post(app.clone(), "/v1/chat/completions", body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        fake.last_request().prompt,
        Prompt::Chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "a\nb"),
        ])
    );
    let body = json!({"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    ]});
    let a = post(app, "/v1/chat/completions", body).await;
    a.assert_error(StatusCode::BAD_REQUEST, Some("messages[0].content"));
}

fn logprob_token(text: &str, lp: f32, alternatives: &[(&str, f32)]) -> GenerateEvent {
    GenerateEvent::Token {
        text: text.into(),
        token_ids: vec![1],
        logprobs: vec![protocol::TokenLogprob {
            bytes: text.as_bytes().to_vec(),
            logprob: lp,
            top: alternatives
                .iter()
                .zip(1u32..)
                .map(|(&(t, l), id)| protocol::TopLogprob {
                    token_id: id,
                    bytes: t.as_bytes().to_vec(),
                    logprob: l,
                })
                .collect(),
        }],
    }
}

fn logprob_script() -> Script {
    Script::Events(vec![
        logprob_token("Hello", -0.25, &[("Hello", -0.25), ("Hi", -1.5)]),
        logprob_token(" world", -0.5, &[(" world", -0.5), (" there", -1.0)]),
        finished(),
    ])
}

#[tokio::test]
async fn openai_n_choices_share_one_node_and_count_the_prompt_once() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"n": 3, "seed": 7})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], "Hello world");
    }
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    // Choice i samples with seed + i, so a fixed seed fixes every choice.
    let seeds: Vec<_> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.sampling.seed)
        .collect();
    assert_eq!(seeds, [Some(7), Some(8), Some(9)]);

    // Streaming: every choice's chunks carry its index, one [DONE] ends all.
    let a = post(
        app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Hi", "n": 2, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.events().iter().filter(|e| *e == "[DONE]").count(), 1);
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"));
    let chunks = a.chunks();
    for i in 0..2 {
        let text: String = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .filter(|c| c["index"] == i)
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, "Hello world", "choice {i}");
        let finishes = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap().clone())
            .filter(|c| c["index"] == i && c["finish_reason"] == "stop")
            .count();
        assert_eq!(finishes, 1, "choice {i}");
    }
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 4, "{usage}");
}

#[tokio::test]
async fn openai_n_out_of_range_is_rejected() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    for n in [json!(0), json!(17), json!(-1), json!(2.5)] {
        let a = post(
            app.clone(),
            "/v1/chat/completions",
            chat_body(json!({ "n": n })),
        )
        .await;
        let e = a.assert_error(StatusCode::BAD_REQUEST, Some("n"));
        assert_eq!(e["type"], "invalid_request_error");
    }
    assert!(fake.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn openai_chat_logprobs_in_openai_shape_whole_and_streamed() {
    let fake = Fake::new(logprob_script());
    let (app, _) = make_app(&fake);
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"logprobs": true, "top_logprobs": 2})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(fake.last_request().logprobs, Some(2));
    let lp = &a.json()["choices"][0]["logprobs"];
    assert_eq!(lp["refusal"], Value::Null);
    let content = lp["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["token"], "Hello");
    assert_eq!(content[0]["logprob"], -0.25);
    assert_eq!(content[0]["bytes"], json!([72, 101, 108, 108, 111]));
    assert_eq!(content[1]["top_logprobs"][1]["token"], " there");
    assert_eq!(content[1]["top_logprobs"][1]["logprob"], -1.0);

    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"logprobs": true, "stream": true})),
    )
    .await;
    let streamed: Vec<Value> = a
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 2, "{}", a.body);
    assert_eq!(streamed[1]["token"], " world");

    // Not asked for: null, and the node is not asked either.
    let a = post(app, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(a.json()["choices"][0]["logprobs"], Value::Null);
    assert_eq!(fake.last_request().logprobs, None);
}

#[tokio::test]
async fn openai_completion_logprobs_in_the_legacy_shape() {
    let fake = Fake::new(logprob_script());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Say", "logprobs": 1}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(fake.last_request().logprobs, Some(1));
    let lp = &a.json()["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["Hello", " world"]));
    assert_eq!(lp["token_logprobs"], json!([-0.25, -0.5]));
    assert_eq!(lp["text_offset"], json!([0, 5]));
    assert_eq!(lp["top_logprobs"][0]["Hi"], -1.5);
}

#[tokio::test]
async fn openai_bad_logprobs_requests_name_the_parameter() {
    let fake = Fake::new(logprob_script());
    let (app, _) = make_app(&fake);
    for (extra, param) in [
        (json!({"logprobs": 3}), "logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
    ] {
        let a = post(app.clone(), "/v1/chat/completions", chat_body(extra)).await;
        a.assert_error(StatusCode::BAD_REQUEST, Some(param));
    }
    for (extra, param) in [
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"logprobs": 2, "top_logprobs": 2}), "top_logprobs"),
    ] {
        let mut body = json!({"model": MODEL, "prompt": "Say"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let a = post(app.clone(), "/v1/completions", body).await;
        a.assert_error(StatusCode::BAD_REQUEST, Some(param));
    }
    assert!(fake.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn openai_malformed_json_is_an_openai_400() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = send(app.clone(), "POST", "/v1/chat/completions", "{\"model\": ").await;
    let e = a.assert_error(StatusCode::BAD_REQUEST, None);
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("JSON"), "{e}");
    // Not a JSON object.
    let a = send(app, "POST", "/v1/completions", "[1, 2]").await;
    a.assert_error(StatusCode::BAD_REQUEST, None);
}

#[tokio::test]
async fn openai_wrong_types_and_ranges_name_the_parameter() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let cases = [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"presence_penalty": -3}), "presence_penalty"),
        (json!({"frequency_penalty": 2.1}), "frequency_penalty"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (
            json!({"max_completion_tokens": -5}),
            "max_completion_tokens",
        ),
        (json!({"stop": 5}), "stop"),
        (json!({"stream": "yes"}), "stream"),
        (json!({"top_k": -2}), "top_k"),
        (json!({"min_p": 1.5}), "min_p"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"messages": "Hi"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"model": null}), "model"),
        (json!({"model": 7}), "model"),
        (json!({"logit_bias": {"15": 101}}), "logit_bias"),
        (json!({"logit_bias": {"x": 1}}), "logit_bias"),
        (json!({"logit_bias": [1]}), "logit_bias"),
        (json!({"store": true}), "store"),
        (json!({"reasoning_effort": "high"}), "reasoning_effort"),
        (json!({"max_token": 5}), "max_token"),
    ];
    for (extra, param) in cases {
        let a = post(
            app.clone(),
            "/v1/chat/completions",
            chat_body(extra.clone()),
        )
        .await;
        let e = a.assert_error(StatusCode::BAD_REQUEST, Some(param));
        assert!(
            e["message"].as_str().unwrap().contains(param),
            "{extra}: {e}"
        );
    }
    let a = post(app.clone(), "/v1/chat/completions", json!({"model": MODEL})).await;
    a.assert_error(StatusCode::BAD_REQUEST, Some("messages"));
    let a = post(app.clone(), "/v1/completions", json!({"model": MODEL})).await;
    a.assert_error(StatusCode::BAD_REQUEST, Some("prompt"));
    let a = post(
        app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": [1, 2, 3]}),
    )
    .await;
    a.assert_error(StatusCode::BAD_REQUEST, Some("prompt"));
    assert!(fake.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn openai_unknown_model_is_404() {
    let fake = Fake::new(hello_world());
    let (app, metrics) = make_app(&fake);
    let body = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "Hi"}]});
    let a = post(app, "/v1/chat/completions", body).await;
    let e = a.assert_error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"inferno_requests_total{model="unknown",status="404"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn openai_overloaded_is_429_with_retry_after() {
    let fake = Fake::new(Script::Reject(RouteError::Overloaded { retry_after_s: 7 }));
    let (app, _) = make_app(&fake);
    let a = post(app, "/v1/chat/completions", chat_body(json!({}))).await;
    a.assert_error(StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(a.headers[header::RETRY_AFTER], "7");
}

#[tokio::test]
async fn openai_no_replica_is_503() {
    let fake = Fake::new(Script::Reject(RouteError::NoReplica(MODEL.into())));
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, None);
}

#[tokio::test]
async fn openai_failure_as_first_event_is_an_http_status() {
    let cases = [
        (
            GenerateError::InvalidRequest("prompt too long".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            GenerateError::UnknownModel(MODEL.into()),
            StatusCode::NOT_FOUND,
        ),
        (
            GenerateError::Overloaded("queue full".into()),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            GenerateError::Unavailable("worker restarting".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (error, status) in cases {
        for stream in [false, true] {
            let fake = Fake::new(Script::Events(vec![GenerateEvent::Failed(error.clone())]));
            let (app, _) = make_app(&fake);
            let body = chat_body(json!({"stream": stream}));
            let a = post(app, "/v1/chat/completions", body).await;
            a.assert_error(status, None);
        }
    }
}

#[tokio::test]
async fn openai_failure_after_first_token_ends_the_stream_with_an_error_event() {
    let fake = Fake::new(Script::Events(vec![
        token("Hello"),
        GenerateEvent::Failed(GenerateError::Unavailable("worker crashed".into())),
        token("never"),
    ]));
    let (app, metrics) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let chunks = a.chunks();
    assert_eq!(chunks.len(), 3, "{}", a.body);
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello");
    assert!(chunks[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("worker crashed"));
    assert!(!a.body.contains("never"));
    assert!(!a.events().iter().any(|e| e == "[DONE]"));
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"inferno_request_errors_total{model="smollm",kind="unavailable"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn openai_stream_that_closes_early_ends_with_an_error_event() {
    let fake = Fake::new(Script::Events(vec![token("Hello")]));
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    let chunks = a.chunks();
    assert!(chunks.last().unwrap()["error"].is_object(), "{}", a.body);
}

#[tokio::test]
async fn openai_dropping_the_response_cancels_at_the_node() {
    let fake = Fake::new(Script::Hold(vec![token("Hello")]));
    let (app, metrics) = make_app(&fake);
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .body(Body::from(chat_body(json!({"stream": true})).to_string()))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("assistant"));
    let sender = fake.held_sender();
    assert!(!sender.is_closed(), "the stream holds the receiver");
    assert!(metrics
        .encode()
        .unwrap()
        .contains(r#"inferno_requests_in_flight{model="smollm"} 1"#));
    drop(body);
    assert!(sender.is_closed(), "dropping the body drops the receiver");
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(r#"inferno_requests_in_flight{model="smollm"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"inferno_requests_total{model="smollm",status="cancelled"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn openai_timeouts() {
    let config = ApiConfig {
        idle_timeout: Duration::from_millis(100),
        total_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let fake = Fake::new(Script::Hold(vec![token("Hello")]));
    let app = router_with_config(fake.clone(), Arc::new(Metrics::new()), config);
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    let chunks = a.chunks();
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello");
    assert!(chunks.last().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("No token"));
    let a = post(app, "/v1/chat/completions", chat_body(json!({}))).await;
    a.assert_error(StatusCode::GATEWAY_TIMEOUT, None);
    // Both receivers were dropped when the requests gave up.
    assert!(fake.held.lock().unwrap().iter().all(|s| s.is_closed()));
}

/// A request that waits on its replica (queued or preempted) for longer
/// than the idle timeout, with keep-alives more often than that, is
/// answered in full, streamed or not, with nothing of the keep-alives in it.
#[tokio::test]
async fn openai_keepalives_hold_waiting_requests_open() {
    let config = ApiConfig {
        idle_timeout: Duration::from_millis(200),
        total_timeout: Duration::from_secs(5),
        ..ApiConfig::default()
    };
    let pause = Duration::from_millis(60);
    let mut events = vec![(pause, GenerateEvent::KeepAlive); 8];
    events.push((pause, token("Hello")));
    events.extend(vec![(pause, GenerateEvent::KeepAlive); 8]);
    events.push((pause, token(" world")));
    events.push((Duration::ZERO, finished()));
    let fake = Fake::new(Script::Paced(events));
    let app = router_with_config(fake, Arc::new(Metrics::new()), config);
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"stream": true})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let chunks = a.chunks();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello world", "{}", a.body);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    let a = post(app, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello world");
}

#[tokio::test]
async fn openai_body_limit_is_413_in_openai_shape() {
    let config = ApiConfig {
        max_body_bytes: 1024,
        ..ApiConfig::default()
    };
    let fake = Fake::new(hello_world());
    let app = router_with_config(fake, Arc::new(Metrics::new()), config);
    let big = "x".repeat(4096);
    let a = post(
        app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": big}),
    )
    .await;
    a.assert_error(StatusCode::PAYLOAD_TOO_LARGE, None);
}

#[tokio::test]
async fn openai_models_health_ready_and_unknown_routes() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = send(app.clone(), "GET", "/v1/models", "").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "inferno");
    assert!(v["data"][0]["created"].is_u64());
    let a = send(app.clone(), "GET", "/health", "").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let a = send(app.clone(), "GET", "/ready", "").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(app, "GET", "/v1/embeddings", "").await;
    a.assert_error(StatusCode::NOT_FOUND, None);

    let not_ready = Arc::new(Fake {
        ready: Err(RouteError::NoReplica(MODEL.into())),
        ..Arc::into_inner(Fake::new(hello_world())).unwrap()
    });
    let (app, _) = make_app(&not_ready);
    let a = send(app, "GET", "/ready", "").await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, None);
}

#[tokio::test]
async fn openai_metrics_count_requests_tokens_and_latencies() {
    let fake = Fake::new(hello_world());
    let (app, metrics) = make_app(&fake);
    metrics.set_queue_depth(3);
    metrics.set_node_sequences("node-a", 4, 2);
    for stream in [false, true] {
        let a = post(
            app.clone(),
            "/v1/chat/completions",
            chat_body(json!({"stream": stream})),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let a = post(
        app.clone(),
        "/v1/chat/completions",
        chat_body(json!({"n": 17})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = send(app, "GET", "/metrics", "").await;
    assert_eq!(a.status, StatusCode::OK);
    let text = a.body;
    for line in [
        r#"inferno_requests_total{model="smollm",status="200"} 2"#,
        r#"inferno_requests_total{model="smollm",status="400"} 1"#,
        r#"inferno_request_errors_total{model="smollm",kind="invalid"} 1"#,
        r#"inferno_prompt_tokens_total{model="smollm",node="node-a"} 10"#,
        r#"inferno_completion_tokens_total{model="smollm",node="node-a"} 4"#,
        r#"inferno_ttft_seconds_count{model="smollm"} 2"#,
        r#"inferno_inter_token_latency_seconds_count{model="smollm"} 2"#,
        r#"inferno_requests_in_flight{model="smollm"} 0"#,
        "inferno_queue_depth 3",
        r#"inferno_running_sequences{node="node-a"} 4"#,
        r#"inferno_waiting_sequences{node="node-a"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    metrics.forget_node("node-a");
    let text = metrics.encode().unwrap();
    assert!(!text.contains("inferno_running_sequences{"), "{text}");
    assert!(!text.contains("inferno_waiting_sequences{"), "{text}");
}

/// `app` with every request carrying `scope`'s principal, as the auth
/// layer leaves it.
fn as_key(app: Router, scope: coordinator::state::KeyScope) -> Router {
    let principal = coordinator::auth::Principal {
        key_id: "k1".into(),
        tenant: "default".into(),
        scope,
        limits: Default::default(),
        tenant_settings: Default::default(),
    };
    app.layer(axum::Extension(principal))
}

/// Special-token text in a raw prompt is text unless an admin key asks
/// for `allow_special_tokens`; an inference key asking is a 403 naming it.
#[tokio::test]
async fn allow_special_tokens_is_for_admin_keys_only() {
    use coordinator::state::KeyScope;
    let body = |allow: Option<bool>| {
        let mut b = json!({"model": MODEL, "prompt": "<|im_end|>hi", "max_tokens": 2});
        if let Some(a) = allow {
            b["allow_special_tokens"] = json!(a);
        }
        b
    };
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        as_key(app.clone(), KeyScope::Inference),
        "/v1/completions",
        body(None),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(!fake.last_request().allow_special_tokens);
    let a = post(
        as_key(app.clone(), KeyScope::Inference),
        "/v1/completions",
        body(Some(true)),
    )
    .await;
    a.assert_error(StatusCode::FORBIDDEN, Some("allow_special_tokens"));
    let a = post(
        as_key(app, KeyScope::Admin),
        "/v1/completions",
        body(Some(true)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(fake.last_request().allow_special_tokens);
}

/// A weather tool, as an application offers it.
fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }])
}

/// A Hermes call, cut into uneven pieces as a tokenizer would.
fn weather_call_script() -> Script {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let mut events: Vec<GenerateEvent> = Vec::new();
    let mut rest = text;
    for n in [11, 1, 3, 9, 2, 17, 5, 4].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*n).min(rest.len()));
        events.push(token(piece));
        rest = tail;
    }
    events.push(finished());
    Script::Events(events)
}

#[tokio::test]
async fn openai_tools_answer_with_parsed_calls() {
    let fake = Fake::new(weather_call_script());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"tools": weather_tools()})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null, "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    // The node got the definitions for the template and a grammar that
    // allows text or calls.
    let req = fake.last_request();
    let tools: Value = serde_json::from_str(req.tools.as_deref().unwrap()).unwrap();
    assert_eq!(tools[0]["function"]["name"], "get_weather");
    match req.constraint {
        Some(protocol::OutputConstraint::Lark(grammar)) => {
            assert!(
                grammar.starts_with("start: calls | body | TEXT"),
                "{grammar}"
            );
            assert!(grammar.contains("get_weather"), "{grammar}");
        }
        other => panic!("expected a Lark grammar, got {other:?}"),
    }
}

#[tokio::test]
async fn openai_tools_stream_as_deltas_that_reassemble_to_the_call() {
    let fake = Fake::new(weather_call_script());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"tools": weather_tools(), "stream": true})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let chunks = a.chunks();
    let mut name = None;
    let mut id = None;
    let mut arguments = String::new();
    let mut content = String::new();
    for c in &chunks {
        let delta = &c["choices"][0]["delta"];
        if let Some(text) = delta["content"].as_str() {
            content.push_str(text);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for call in calls {
                assert_eq!(call["index"], 0, "{c}");
                if let Some(n) = call["function"]["name"].as_str() {
                    assert!(name.is_none(), "the name comes once: {c}");
                    name = Some(n.to_string());
                    id = call["id"].as_str().map(str::to_string);
                    assert_eq!(call["type"], "function");
                }
                arguments.push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(content, "", "no call text leaks into the content");
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert!(id.unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{last}");
    assert_eq!(a.events().last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn openai_tools_required_or_named_constrain_the_whole_answer() {
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let fake = Fake::new(weather_call_script());
        let (app, _) = make_app(&fake);
        let a = post(
            app,
            "/v1/chat/completions",
            chat_body(json!({"tools": weather_tools(), "tool_choice": choice,
                             "parallel_tool_calls": false})),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        match fake.last_request().constraint {
            Some(protocol::OutputConstraint::Lark(grammar)) => {
                assert!(
                    grammar.starts_with("start: calls | body\ncalls: call\n"),
                    "{grammar}"
                )
            }
            other => panic!("expected a Lark grammar, got {other:?}"),
        }
    }
    // "none": the tools are not offered and the text is free.
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"tools": weather_tools(), "tool_choice": "none"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello world");
    let req = fake.last_request();
    assert_eq!((req.tools, req.constraint), (None, None));
}

#[tokio::test]
async fn openai_tool_results_reach_the_model_as_messages() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]);
    let a = post(
        app,
        "/v1/chat/completions",
        chat_body(json!({"tools": weather_tools(), "messages": messages})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    let Prompt::Chat(sent) = fake.last_request().prompt else {
        panic!("expected a chat prompt");
    };
    assert_eq!(sent[1].tool_calls.len(), 1);
    assert_eq!(sent[1].tool_calls[0].name, "get_weather");
    assert_eq!(sent[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}");
    assert_eq!(sent[2].role, "tool");
    assert_eq!(sent[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(sent[2].content, "18 C, sunny");
}

#[tokio::test]
async fn openai_bad_tool_requests_are_400s_naming_the_field() {
    let cases = [
        (
            "/v1/chat/completions",
            chat_body(json!({"tools": weather_tools(),
                             "response_format": {"type": "json_object"}})),
            "tools",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "tools": weather_tools()}),
            "tools",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]})),
            "tools[0].function.name",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"tools": weather_tools(),
                             "tool_choice": {"type": "function", "function": {"name": "other"}}})),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": [{"role": "tool", "content": "18 C"}]})),
            "messages[0].tool_call_id",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": [{"role": "assistant", "tool_calls": [{
                "id": "c", "type": "function",
                "function": {"name": "f", "arguments": "not json"}}]}]})),
            "messages[0].tool_calls[0].function.arguments",
        ),
    ];
    for (uri, body, param) in cases {
        let fake = Fake::new(hello_world());
        let (app, _) = make_app(&fake);
        post(app, uri, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, Some(param));
        assert!(
            fake.requests.lock().unwrap().is_empty(),
            "{param}: nothing is routed"
        );
    }
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}],
               "tools": weather_tools()}),
    )
    .await;
    a.assert_error(StatusCode::NOT_FOUND, Some("model"));
}

#[tokio::test]
async fn openai_models_report_what_the_file_says() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = send(app.clone(), "GET", "/v1/models", "").await;
    let m = &a.json()["data"][0];
    assert_eq!(m["max_model_len"], 32768, "{m}");
    assert_eq!(m["architecture"], "qwen2");
    assert_eq!(m["quantization"], "Q4_K_M");
    assert_eq!(m["parameters"], 494_000_000u64);
    assert_eq!(m["size_bytes"], 491_400_064u64);
    assert_eq!(m["ready_replicas"], 1);
    assert_eq!(
        m["capabilities"],
        json!({"completions": true, "chat": true, "tools": true, "json_schema": true,
               "embeddings": false})
    );
    let one = send(app.clone(), "GET", &format!("/v1/models/{MODEL}"), "").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(&one.json(), m);
    send(app, "GET", "/v1/models/nope", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, Some("model"));
}

#[tokio::test]
async fn tokenize_and_detokenize_in_vllm_and_llama_server_shapes() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    // vLLM: model and prompt; count, max_model_len and tokens.
    let a = post(
        app.clone(),
        "/tokenize",
        json!({"model": MODEL, "prompt": "Hi!"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"count": 3, "max_model_len": 32768, "tokens": [72, 105, 33]})
    );
    // llama-server: content, no model (the cluster serves one).
    let a = post(app.clone(), "/tokenize", json!({"content": "Hi!"})).await;
    assert_eq!(a.json()["tokens"], json!([72, 105, 33]), "{}", a.body);
    // A conversation goes through the template.
    let a = post(
        app.clone(),
        "/tokenize",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(a.json()["count"], 6, "{}", a.body);
    let a = post(
        app.clone(),
        "/detokenize",
        json!({"model": MODEL, "tokens": [72, 105]}),
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"prompt": "Hi", "content": "Hi"}),
        "{}",
        a.body
    );

    let bad = [
        (
            "/tokenize",
            json!({"model": MODEL}),
            StatusCode::BAD_REQUEST,
            "prompt",
        ),
        (
            "/tokenize",
            json!({"model": "nope", "prompt": "x"}),
            StatusCode::NOT_FOUND,
            "model",
        ),
        (
            "/tokenize",
            json!({"prompt": "x", "add_special_tokens": false}),
            StatusCode::BAD_REQUEST,
            "add_special_tokens",
        ),
        (
            "/tokenize",
            json!({"prompt": "x", "with_pieces": true}),
            StatusCode::BAD_REQUEST,
            "with_pieces",
        ),
        (
            "/tokenize",
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "messages[0].role",
        ),
        (
            "/detokenize",
            json!({"model": MODEL}),
            StatusCode::BAD_REQUEST,
            "tokens",
        ),
        (
            "/detokenize",
            json!({"tokens": [-1]}),
            StatusCode::BAD_REQUEST,
            "tokens",
        ),
    ];
    for (uri, body, status, param) in bad {
        post(app.clone(), uri, body)
            .await
            .assert_error(status, Some(param));
    }
    let a = post(app, "/detokenize", json!({"tokens": [70000]})).await;
    a.assert_error(StatusCode::BAD_REQUEST, None);
}

fn tenant_app(fake: &Arc<Fake>, tenant: &str) -> Router {
    let principal = coordinator::auth::Principal {
        key_id: format!("key-of-{tenant}"),
        tenant: tenant.into(),
        scope: coordinator::state::KeyScope::Inference,
        limits: Default::default(),
        tenant_settings: Default::default(),
    };
    make_app(fake).0.layer(axum::Extension(principal))
}

/// The chat messages a request sent to the backend.
fn sent_messages(req: &InferenceRequest) -> Vec<(String, String)> {
    match &req.prompt {
        Prompt::Chat(ms) => ms
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect(),
        Prompt::Text(t) => panic!("a text prompt: {t}"),
    }
}

#[tokio::test]
async fn responses_are_answered_stored_continued_and_deleted() {
    let fake = Fake::new(hello_world());
    let app = tenant_app(&fake, "acme");
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": MODEL, "input": "Say hello", "instructions": "Be brief.",
               "max_output_tokens": 9}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = a.json();
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"), "{r}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello world");
    assert_eq!(r["usage"]["input_tokens"], 5);
    assert_eq!(r["usage"]["output_tokens"], 2);
    assert_eq!(r["instructions"], "Be brief.");
    let first = fake.last_request();
    assert_eq!(first.max_tokens, Some(9));
    assert_eq!(
        sent_messages(&first),
        [
            ("system".into(), "Be brief.".into()),
            ("user".into(), "Say hello".into())
        ]
    );

    // GET gives the same object back.
    let got = send(app.clone(), "GET", &format!("/v1/responses/{id}"), "").await;
    assert_eq!((got.status, got.json()), (StatusCode::OK, r.clone()));

    // A follow-up sees the whole conversation; instructions are not carried.
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Again"}]}],
               "previous_response_id": id}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["previous_response_id"], id.as_str());
    assert_eq!(
        sent_messages(&fake.last_request()),
        [
            ("user".into(), "Say hello".into()),
            ("assistant".into(), "Hello world".into()),
            ("user".into(), "Again".into())
        ]
    );

    // Another tenant cannot see, continue or delete it.
    let other = tenant_app(&fake, "globex");
    let a = send(other.clone(), "GET", &format!("/v1/responses/{id}"), "").await;
    a.assert_error(StatusCode::NOT_FOUND, None);
    let a = post(
        other.clone(),
        "/v1/responses",
        json!({"model": MODEL, "input": "x", "previous_response_id": id}),
    )
    .await;
    a.assert_error(StatusCode::NOT_FOUND, Some("previous_response_id"));
    let a = send(other, "DELETE", &format!("/v1/responses/{id}"), "").await;
    a.assert_error(StatusCode::NOT_FOUND, None);

    // DELETE, then it is gone.
    let a = send(app.clone(), "DELETE", &format!("/v1/responses/{id}"), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["deleted"], true);
    let a = send(app.clone(), "GET", &format!("/v1/responses/{id}"), "").await;
    a.assert_error(StatusCode::NOT_FOUND, None);

    // store: false keeps nothing.
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": MODEL, "input": "x", "store": false}),
    )
    .await;
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(a.json()["store"], false);
    let a = send(app, "GET", &format!("/v1/responses/{id}"), "").await;
    a.assert_error(StatusCode::NOT_FOUND, None);
}

#[tokio::test]
async fn responses_function_calls_whole_and_streamed() {
    let fake = Fake::new(weather_call_script());
    let (app, _) = make_app(&fake);
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": MODEL, "input": "Weather in Paris?", "tools": tools, "tool_choice": "required"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = a.json();
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call", "{r}");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(fake.last_request().constraint.is_some());
    let call_id = call["call_id"].as_str().unwrap().to_string();

    // The tool's answer continues the conversation.
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": MODEL, "previous_response_id": r["id"], "tools": tools,
               "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let req = fake.last_request();
    let Prompt::Chat(ms) = &req.prompt else {
        panic!("not chat")
    };
    assert_eq!(ms[1].tool_calls[0].id, call_id);
    assert_eq!(ms[2].role, "tool");
    assert_eq!(ms[2].tool_call_id.as_deref(), Some(call_id.as_str()));

    // Streamed: typed events in order, numbered, that add up to the call.
    let a = post(
        app,
        "/v1/responses",
        json!({"model": MODEL, "input": "Weather in Paris?", "tools": tools,
               "tool_choice": "required", "stream": true}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let events = a.chunks();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..3],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ],
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"response.completed"));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    let args: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    let done = events.last().unwrap();
    assert_eq!(done["response"]["output"][0]["arguments"], args.as_str());
    assert_eq!(done["response"]["status"], "completed");
    // The SSE event names are the types.
    assert!(
        a.body.contains("event: response.output_item.done"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn responses_stream_text_deltas() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    let a = post(
        app,
        "/v1/responses",
        json!({"model": MODEL, "input": "Say hello", "stream": true}),
    )
    .await;
    let events = a.chunks();
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "Hello world");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "Hello world"
    );
}

#[tokio::test]
async fn bad_responses_requests_name_the_field() {
    let fake = Fake::new(hello_world());
    let (app, _) = make_app(&fake);
    for (body, status, param) in [
        (json!({"model": MODEL}), StatusCode::BAD_REQUEST, "input"),
        (
            json!({"model": MODEL, "input": [{"type": "reasoning"}]}),
            StatusCode::BAD_REQUEST,
            "input[0].type",
        ),
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
            StatusCode::BAD_REQUEST,
            "tools[0].type",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true}),
            StatusCode::BAD_REQUEST,
            "background",
        ),
        (
            json!({"model": MODEL, "input": "x", "reasoning": {"effort": "high"}}),
            StatusCode::BAD_REQUEST,
            "reasoning.effort",
        ),
        (
            json!({"model": MODEL, "input": "x", "truncation": "auto"}),
            StatusCode::BAD_REQUEST,
            "truncation",
        ),
        (
            json!({"model": MODEL, "input": "x", "include": ["file_search_call.results"]}),
            StatusCode::BAD_REQUEST,
            "include[0]",
        ),
        (
            json!({"model": MODEL, "input": "x", "text": {"verbosity": "low"}}),
            StatusCode::BAD_REQUEST,
            "text.verbosity",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_nothere",
                   "frobnicate": true}),
            StatusCode::BAD_REQUEST,
            "frobnicate",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_nothere"}),
            StatusCode::NOT_FOUND,
            "previous_response_id",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "../etc"}),
            StatusCode::NOT_FOUND,
            "previous_response_id",
        ),
    ] {
        let a = post(app.clone(), "/v1/responses", body.clone()).await;
        a.assert_error(status, Some(param));
    }
    assert!(fake.requests.lock().unwrap().is_empty());
    let a = post(
        app.clone(),
        "/v1/responses",
        json!({"model": "nope", "input": "x"}),
    )
    .await;
    a.assert_error(StatusCode::NOT_FOUND, Some("model"));
    // What the Codex CLI sends besides the basics asks for nothing that
    // is not done: no reasoning, no encrypted reasoning to include.
    let codex_like = json!({
        "model": MODEL, "input": "x", "store": false, "reasoning": null,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "session-1",
        "text": {"verbosity": "medium"}, "service_tier": "auto",
    });
    let a = post(app, "/v1/responses", codex_like).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}
