//! Inference streams: the coordinators' router opens a bidirectional QUIC
//! stream per request, writes one [`InferenceRequest`] frame and reads
//! [`GenerateEvent`] frames until `Finished` or `Failed`.
//!
//! The sequence is cancelled (its receiver dropped, which frees its slot and
//! KV cache at the engine's next step) as soon as the peer resets or stops
//! the stream, a frame cannot be written, or the node shuts down.

use std::sync::Arc;
use std::time::Duration;

use protocol::fl::MAX_FL_FRAME_BYTES;
use protocol::frame::{self, FrameError};
use protocol::prefix;
use protocol::quic;
use protocol::{
    GenerateError, GenerateEvent, GenerateRequest, InferenceRequest, NodeStreamRequest, PrefixSpan,
    Prompt, TokenizeOutput, TokenizeRequest, MAX_NODE_FRAME_BYTES,
};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, watch};

use crate::fl_worker::FlShared;
use crate::node::Node;

/// How long a peer may take to send its request frame.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing one event frame may take (a peer not reading is dropped).
pub const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest silence between two events of a request (queueing included)
/// before it is failed as unavailable.
pub const EVENT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Application error code used when the node abandons a stream
/// (cancelled, could not write, shutting down).
pub const STREAM_CANCELLED: VarInt = VarInt::from_u32(2);

/// Accepts connections on `endpoint` until it is closed; serves each
/// connection's streams on their own tasks.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    node: Arc<Node>,
    fl: Arc<FlShared>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = match quic::accept_connection(&endpoint, HANDSHAKE_TIMEOUT).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("refused connection: {e}");
                continue;
            }
        };
        let peer = quic::peer_name(&conn).unwrap_or_else(|| "?".into());
        // Only coordinators drive a node: another node's certificate (or
        // one without a role) is refused.
        if let Err(e) = quic::require_role(&conn, protocol::tls::CertRole::Coordinator) {
            tracing::warn!(%peer, remote = %conn.remote_address(), "connection refused: {e}");
            continue;
        }
        tracing::debug!(%peer, remote = %conn.remote_address(), "connection accepted");
        tokio::spawn(serve_connection(
            conn,
            node.clone(),
            fl.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    node: Arc<Node>,
    fl: Arc<FlShared>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = quic::accept_hello(&conn, HANDSHAKE_TIMEOUT).await {
        tracing::warn!(remote = %conn.remote_address(), "connection refused: {e}");
        return;
    }
    loop {
        match quic::accept_stream(&conn, quic::IDLE_TIMEOUT).await {
            Ok(Some((send, recv))) => {
                tokio::spawn(serve_stream(
                    send,
                    recv,
                    node.clone(),
                    fl.clone(),
                    shutdown.clone(),
                ));
            }
            // Idle for a while; the transport closes dead connections itself.
            Err(quic::QuicError::Timeout(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("connection ended: {e}");
                return;
            }
        }
    }
}

/// Serves one inference stream to its end.
pub(crate) async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    node: Arc<Node>,
    fl: Arc<FlShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let first: NodeStreamRequest =
        match frame::read_frame(&mut recv, MAX_FL_FRAME_BYTES, REQUEST_READ_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("bad request frame: {e}");
                let _ = recv.stop(quic::STREAM_ERROR_BAD_FRAME);
                let _ = send.reset(quic::STREAM_ERROR_BAD_FRAME);
                return;
            }
        };
    let req = match first {
        NodeStreamRequest::Inference(req) => req,
        NodeStreamRequest::Tokenize(req) => {
            let answer = tokenize(&node, req).await;
            match frame::write_frame(
                &mut send,
                &answer,
                MAX_NODE_FRAME_BYTES,
                EVENT_WRITE_TIMEOUT,
            )
            .await
            {
                Ok(()) => {
                    let _ = send.finish();
                }
                Err(e) => tracing::debug!("cannot send the tokenizer's answer: {e}"),
            }
            return;
        }
        NodeStreamRequest::Infer(req) => {
            let answer = tokio::select! {
                a = node.infer(&req.model, req.inputs) => a,
                _ = peer_reset(&mut recv) => {
                    // The coordinator gave up: the request left the queue
                    // when its future was dropped.
                    let _ = send.reset(STREAM_CANCELLED);
                    return;
                }
                _ = shutdown.changed() => {
                    let _ = send.reset(STREAM_CANCELLED);
                    let _ = recv.stop(STREAM_CANCELLED);
                    return;
                }
            };
            write_answer(&mut send, &answer).await;
            return;
        }
        NodeStreamRequest::FlTrain(req) => {
            let answer = node.train_round(&fl, req).await;
            match frame::write_frame(&mut send, &answer, MAX_FL_FRAME_BYTES, REQUEST_READ_TIMEOUT)
                .await
            {
                Ok(()) => {
                    let _ = send.finish();
                }
                Err(e) => tracing::debug!("cannot send the federated update: {e}"),
            }
            return;
        }
    };
    let model = req.model.clone();
    let mut events = match prepare(&node, req).await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::debug!(%model, "inference refused: {e}");
            let ev = GenerateEvent::Failed(e);
            if write_event(&mut send, &ev).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
    };
    let mut peer_open = true;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            ev = tokio::time::timeout(EVENT_IDLE_TIMEOUT, events.recv()) => {
                let ev = match ev {
                    Ok(Some(ev)) => ev,
                    Ok(None) => GenerateEvent::Failed(GenerateError::Unavailable(
                        "the model ended the stream without a final event".into(),
                    )),
                    Err(_) => GenerateEvent::Failed(GenerateError::Unavailable(format!(
                        "no progress in {}s", EVENT_IDLE_TIMEOUT.as_secs()
                    ))),
                };
                let last = ev.is_terminal();
                if let Err(e) = write_event(&mut send, &ev).await {
                    tracing::debug!(%model, "cannot write event, cancelling: {e}");
                    drop(events);
                    let _ = send.reset(STREAM_CANCELLED);
                    let _ = recv.stop(STREAM_CANCELLED);
                    return;
                }
                if last {
                    let _ = send.finish();
                    return;
                }
            }
            r = recv.read(&mut buf), if peer_open => {
                match r {
                    // The peer finished its side after the request: normal.
                    Ok(None) => peer_open = false,
                    // Extra bytes after the request are ignored.
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::debug!(%model, "peer reset the stream, cancelling: {e}");
                        drop(events);
                        let _ = send.reset(STREAM_CANCELLED);
                        return;
                    }
                }
            }
            _ = shutdown.changed() => {
                drop(events);
                let _ = send.reset(STREAM_CANCELLED);
                let _ = recv.stop(STREAM_CANCELLED);
                return;
            }
        }
    }
}

/// Resolves once the peer resets its side of the stream; never if it
/// finishes it normally.
async fn peer_reset(recv: &mut RecvStream) {
    let mut buf = [0u8; 64];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(_)) => {}
            Ok(None) => std::future::pending::<()>().await,
            Err(_) => return,
        }
    }
}

/// Writes an ONNX model's answer; outputs too large for one frame are
/// answered with an error instead.
async fn write_answer(
    send: &mut SendStream,
    answer: &Result<Vec<protocol::NamedTensor>, GenerateError>,
) {
    let mut written =
        frame::write_frame(send, answer, MAX_NODE_FRAME_BYTES, EVENT_WRITE_TIMEOUT).await;
    if let Err(FrameError::TooLarge { .. }) = written {
        let too_large: Result<Vec<protocol::NamedTensor>, GenerateError> =
            Err(GenerateError::InvalidRequest(format!(
                "the outputs are larger than the {MAX_NODE_FRAME_BYTES}-byte frame limit; \
                 send fewer rows per request"
            )));
        written =
            frame::write_frame(send, &too_large, MAX_NODE_FRAME_BYTES, EVENT_WRITE_TIMEOUT).await;
    }
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!("cannot send the model's outputs: {e}"),
    }
}

async fn write_event(send: &mut SendStream, ev: &GenerateEvent) -> Result<(), FrameError> {
    frame::write_frame(send, ev, MAX_NODE_FRAME_BYTES, EVENT_WRITE_TIMEOUT).await
}

/// Answers a tokenizer round trip with the model's own tokenizer and
/// template, exactly as [`prepare`] would tokenize the same prompt.
pub(crate) async fn tokenize(
    node: &Node,
    req: TokenizeRequest,
) -> Result<TokenizeOutput, GenerateError> {
    let frontend = node.frontend(req.model()).await?;
    tokio::task::spawn_blocking(move || match req {
        TokenizeRequest::Encode { prompt, tools, .. } => match &prompt {
            Prompt::Text(text) => frontend.encode_as_text(text),
            Prompt::Chat(messages) => frontend.chat_prompt(messages, tools.as_deref()),
        }
        .map(TokenizeOutput::Tokens)
        .map_err(|e| e.to_string()),
        TokenizeRequest::Decode { tokens, .. } => frontend
            .tokenizer
            .decode(&tokens)
            .map(TokenizeOutput::Text)
            .map_err(|e| e.to_string()),
    })
    .await
    .map_err(|e| GenerateError::Unavailable(format!("tokenizer task failed: {e}")))?
    .map_err(GenerateError::InvalidRequest)
}

/// Renders and tokenizes a request and submits it to the model.
pub(crate) async fn prepare(
    node: &Node,
    req: InferenceRequest,
) -> Result<mpsc::Receiver<GenerateEvent>, GenerateError> {
    let frontend = node.frontend(&req.model).await?;
    let prompt = req.prompt;
    let salt = req.cache_salt;
    let specials = req.allow_special_tokens;
    let priority = req.priority;
    let constraint = req.constraint;
    let tools = req.tools;
    // Tokenizing a long prompt and compiling a new grammar are CPU work:
    // keep them off the async threads and off the model's scheduler (the
    // engine then takes the compiled grammar from the cache).
    let (tokens, prefix_spans, salt, constraint) = tokio::task::spawn_blocking(move || {
        let tokens = match &prompt {
            Prompt::Text(text) if specials => frontend.encode(text),
            Prompt::Text(text) => frontend.encode_as_text(text),
            Prompt::Chat(messages) => frontend.chat_prompt(messages, tools.as_deref()),
        }
        .map_err(|e| e.to_string())?;
        if let Some(c) = &constraint {
            frontend.constraint(c).map_err(|e| e.to_string())?;
        }
        let spans = prefix_spans(&prompt, &salt, tokens.len());
        Ok::<_, String>((tokens, spans, salt, constraint))
    })
    .await
    .map_err(|e| GenerateError::Unavailable(format!("tokenizer task failed: {e}")))?
    .map_err(GenerateError::InvalidRequest)?;
    let request = GenerateRequest {
        prompt_tokens: tokens,
        max_tokens: req.max_tokens,
        sampling: req.sampling,
        stop: req.stop,
        ignore_eos: req.ignore_eos,
        cache_salt: salt,
        prefix_spans,
        priority,
        constraint,
        logprobs: req.logprobs,
    };
    node.generate(&req.model, request).await
}

/// The prompt's text spans, each with the share of the prompt's tokens
/// its text reaches (the template's own tokens are spread evenly: an
/// estimate, rounded down so a span never claims a block it may not cover).
fn prefix_spans(prompt: &Prompt, salt: &str, tokens: usize) -> Vec<PrefixSpan> {
    let bytes = prefix::canonical_len(prompt).max(1);
    prefix::span_hashes(prompt, salt)
        .into_iter()
        .enumerate()
        .map(|(i, hash)| {
            let end = ((i + 1) * prefix::SPAN_BYTES) as u128;
            let covered = end * tokens as u128 / bytes as u128;
            PrefixSpan {
                hash,
                tokens: u32::try_from(covered).unwrap_or(u32::MAX),
            }
        })
        .collect()
}
