//! The Responses API: `POST /v1/responses`, `GET /v1/responses/{id}`,
//! `DELETE /v1/responses/{id}`.
//!
//! A request is translated into the chat completion it asks for
//! ([`translate`]), so it is validated, templated, constrained and routed
//! like one; its answer becomes a response object ([`output`]). Stored
//! responses (the default) keep the conversation so far, which
//! `previous_response_id` continues; the backend keeps them on a majority
//! of the coordinators, bounded and with a TTL ([`store`]). A tenant only
//! ever sees its own responses.

mod output;
mod store;
mod stream;
pub(crate) mod translate;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use store::{valid_id, ResponseStore, StoreError, StoreLimits};

use super::backend::InferenceBackend;
use super::chunks::Endpoint;
use super::errors::ApiError;
use super::extra_params::{self, Route};
use super::handlers::{self, AppState};
use super::request::ChatCompletionRequest;
use super::validate;
use crate::auth::Principal;
use crate::quota::TokenMeter;
use output::Outcome;
use translate::ResponsesBody;

/// What is kept of a stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Whose it is: the tenant's name, empty when auth is off.
    owner: String,
    /// The response object, as answered.
    response: Value,
    /// The conversation up to and including this answer, as chat
    /// messages (instructions left out: they are not carried over).
    conversation: Vec<Value>,
}

/// The owner of responses made with `principal`'s key.
fn owner(principal: Option<&Extension<Principal>>) -> String {
    principal.map_or_else(String::new, |p| p.0.tenant.clone())
}

/// The stored record of `id` if it exists and belongs to `owner`; `param`
/// names where the id came from, for the 404.
async fn load<B: InferenceBackend>(
    backend: &B,
    id: &str,
    owner: &str,
    param: Option<&str>,
) -> Result<Record, ApiError> {
    let shown: String = id.chars().take(80).collect();
    if !valid_id(id) {
        return Err(ApiError::response_not_found(&shown, param));
    }
    let bytes = backend
        .load_response(id.to_string())
        .await?
        .ok_or_else(|| ApiError::response_not_found(&shown, param))?;
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::unavailable(format!("a stored response is damaged: {e}")))?;
    if record.owner != owner {
        // Another tenant's response does not exist for this one.
        return Err(ApiError::response_not_found(&shown, param));
    }
    Ok(record)
}

/// `POST /v1/responses`.
pub(crate) async fn create<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    principal: Option<Extension<Principal>>,
    meter: Option<Extension<TokenMeter>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match create_inner(&s, principal, meter, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn create_inner<B: InferenceBackend>(
    s: &Arc<AppState<B>>,
    principal: Option<Extension<Principal>>,
    meter: Option<Extension<TokenMeter>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = handlers::read_body(body, s.config.max_body_bytes)?;
    let mut body: ResponsesBody = validate::parse_body(&bytes)?;
    extra_params::check(Route::Responses, &body.extra)?;
    let owner = owner(principal.as_ref());
    let history = match &body.previous_response_id {
        Some(id) => {
            load(&*s.backend, id, &owner, Some("previous_response_id"))
                .await?
                .conversation
        }
        None => Vec::new(),
    };
    let conversation = translate::messages(body.input.take(), history)?;
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(instructions) = &body.instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    messages.extend(conversation.iter().cloned());
    let chat = translate::chat_body(&body, messages)?;
    let chat: ChatCompletionRequest = validate::parse_value(&chat)?;
    let model = chat.model.clone();
    let validated =
        validate::chat(chat).map(|v| handlers::keyed(v, principal.as_ref().map(|p| &p.0), headers));
    let account = handlers::account(principal, meter);
    let mut prepared = handlers::prepare(s, model, validated, Endpoint::Chat, account)?;
    let pending = output::Pending::new(&body, prepared.v.request.model.clone());
    let keep = Keep {
        owner,
        conversation,
        store: body.store != Some(false),
    };
    if body.stream == Some(true) {
        return Ok(stream::respond(s.clone(), prepared, pending, keep).await);
    }
    let answer = handlers::whole(s, &mut prepared).await?;
    let outcome = Outcome::from_chat(&serde_json::to_value(answer).unwrap_or_default());
    let object = finish(&*s.backend, pending, outcome, keep).await;
    Ok((StatusCode::OK, Json(object)).into_response())
}

/// What to keep of a response once it is complete.
struct Keep {
    owner: String,
    conversation: Vec<Value>,
    store: bool,
}

/// The finished response object; stored if asked for. A response that
/// cannot be stored is still answered, with `"store": false`.
async fn finish<B: InferenceBackend>(
    backend: &B,
    pending: output::Pending,
    outcome: Outcome,
    keep: Keep,
) -> Value {
    let mut conversation = keep.conversation;
    conversation.push(outcome.assistant_message());
    let mut object = pending.object(&outcome, keep.store);
    if keep.store {
        let record = Record {
            owner: keep.owner,
            response: object.clone(),
            conversation,
        };
        let saved = match serde_json::to_vec(&record) {
            Ok(bytes) => backend.save_response(pending.id().to_string(), bytes).await,
            Err(e) => Err(super::RouteError::Unavailable(e.to_string())),
        };
        if let Err(e) = saved {
            tracing::warn!(id = pending.id(), "a response could not be stored: {e}");
            object["store"] = json!(false);
        }
    }
    object
}

/// `GET /v1/responses/{id}`.
pub(crate) async fn retrieve<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    match load(&*s.backend, &id, &owner(principal.as_ref()), None).await {
        Ok(record) => Json(record.response).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/responses/{id}`.
pub(crate) async fn delete<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Response {
    let deleted = async {
        load(&*s.backend, &id, &owner(principal.as_ref()), None).await?;
        s.backend.delete_response(id.clone()).await?;
        Ok::<_, ApiError>(())
    };
    match deleted.await {
        Ok(()) => {
            Json(json!({"id": id, "object": "response.deleted", "deleted": true})).into_response()
        }
        Err(e) => e.into_response(),
    }
}
