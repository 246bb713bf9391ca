//! The admin HTTP API (axum): cluster view, model registration, scaling.
//!
//! Reads are linearizable (ReadIndex through the local raft loop); writes
//! go to the leader (forwarded over QUIC when this coordinator is a
//! follower) and are answered after commit and apply. Every error is a
//! JSON object `{"error": {"message", "type"}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::nodes::NodeRegistry;
use super::peers::{submit_membership, submit_write, Peers};
use super::raft_loop::{LocalView, LoopRequest, MemberChange, ReadView};
use super::wire::{PeerRequest, PeerResponse, WriteReply};
use crate::auth::{sees_tenant, Principal};
use crate::state::machine::FlJob;
use crate::state::{ClusterState, FlJobStatus, Op, DEFAULT_TENANT};
use backends::fl::JobSpec;

/// Largest accepted request body.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the admin handlers need.
#[derive(Debug)]
pub struct Admin {
    /// This coordinator's raft id.
    pub id: u64,
    /// The local raft loop.
    pub requests: mpsc::Sender<LoopRequest>,
    /// The transport to other coordinators (for forwarding writes).
    pub peers: Arc<Peers>,
    /// Client request timeout.
    pub timeout: Duration,
    /// Node heartbeats heard by this coordinator (load, replica states).
    pub registry: Arc<NodeRegistry>,
    /// The local raft view (to notice a leader change mid-forward).
    pub view: watch::Receiver<LocalView>,
    /// Checkpoint blobs (federated models).
    pub blobs: Arc<crate::fl::BlobStore>,
}

/// An admin API error: status and message, rendered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            404 => "not_found",
            409 => "conflict",
            503 => "unavailable",
            _ => "invalid_request",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind()}});
        (self.status, Json(body)).into_response()
    }
}

/// The admin routes, `/admin/v1/...` (merged with the OpenAI routes,
/// which serve `/health` and answer unknown paths).
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/v1/cluster", get(cluster))
        .route("/admin/v1/models", get(list_models).post(register_model))
        .route(
            "/admin/v1/models/{name}",
            axum::routing::delete(unregister_model),
        )
        .route("/admin/v1/models/{name}/scale", post(scale_model))
        .route("/admin/v1/members", get(list_members).post(add_member))
        .route("/admin/v1/fl/jobs", get(list_fl_jobs).post(create_fl_job))
        .route("/admin/v1/fl/jobs/{id}", get(get_fl_job))
        .route("/admin/v1/fl/jobs/{id}/stop", post(stop_fl_job))
        .route("/admin/v1/fl/jobs/{id}/model", get(fl_model))
        .route(
            "/admin/v1/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route(
            "/admin/v1/keys",
            get(super::keys::list_keys).post(super::keys::create_key),
        )
        .route(
            "/admin/v1/keys/{id}",
            axum::routing::delete(super::keys::revoke_key),
        )
        .route("/admin/v1/tenants", get(super::tenants::list_tenants))
        .route(
            "/admin/v1/tenants/{name}",
            axum::routing::put(super::tenants::set_tenant),
        )
        .route("/admin/v1/certs/revoke", post(super::certs_api::revoke))
        .route("/admin/v1/certs/revoked", get(super::certs_api::list))
        .route("/admin/v1/audit", get(super::audit_api::list))
        .route("/admin/v1/audit/peers", get(super::audit_api::peers))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(admin)
}

/// Parses a JSON body into `T`, answering 400 with serde's message.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// Body of `POST /admin/v1/models`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterModelBody {
    name: String,
    source: String,
    format: String,
    size_bytes: u64,
    desired_replicas: u32,
}

/// Body of `POST /admin/v1/models/{name}/scale`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    desired_replicas: u32,
}

/// Body of `POST /admin/v1/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberBody {
    id: u64,
    name: String,
    raft_addr: std::net::SocketAddr,
}

async fn list_members(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    Ok(Json(json!({
        "leader_id": v.leader_id,
        "voters": v.voters,
        "learners": v.learners,
        "coordinators": v.state.coordinators(),
    })))
}

/// Adds a coordinator: records its name and address through raft (so
/// every member can reach it), then adds it as a learner, which the
/// leader promotes to voter once it has caught up: a member that never
/// answers never costs quorum. 200 once it votes, 202 while it is still a
/// learner. Start the new coordinator with `join = true` in its
/// configuration.
async fn add_member(
    State(admin): State<Arc<Admin>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: AddMemberBody = parse_body(&body)?;
    if b.id == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "id must be non-zero",
        ));
    }
    let record = Op::AddCoordinator {
        id: b.id,
        name: b.name.clone(),
        addr: b.raft_addr.to_string(),
    };
    match commit(&admin, record).await {
        WriteReply::Applied(_) => {}
        // Already recorded (a retried call): fine if it is the same member.
        WriteReply::Rejected { status: 409, .. } => {
            let v = read(&admin).await?;
            let same = v
                .state
                .coordinators()
                .get(&b.id)
                .is_some_and(|c| c.name == b.name && c.addr == b.raft_addr.to_string());
            if !same {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "coordinator {} or its address is already recorded differently",
                        b.id
                    ),
                ));
            }
        }
        other => return reply_json(other).map(|j| (StatusCode::OK, j)),
    }
    match commit_membership(&admin, MemberChange::Add(b.id)).await {
        WriteReply::Applied(_) => {}
        other => return reply_json(other).map(|j| (StatusCode::OK, j)),
    }
    // It joined as a learner; the leader promotes it once it has caught up.
    let mut view = admin.view.clone();
    let promoted = tokio::time::timeout(PROMOTION_WAIT, async {
        while !view.borrow_and_update().voters.contains(&b.id) {
            if view.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if promoted {
        return Ok((
            StatusCode::OK,
            Json(json!({"result": "Applied", "id": b.id, "role": "voter"})),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "result": "Learner",
            "id": b.id,
            "role": "learner",
            "message": format!(
                "coordinator {} was added as a learner and becomes a voter once it has caught up \
                 (it has not answered yet: is it running, with join = true, at {}?)",
                b.id, b.raft_addr
            ),
        })),
    ))
}

/// How long `POST /admin/v1/members` waits for the new member to catch up
/// and become a voter before answering 202 (it stays a learner, not
/// counting toward quorum, until it does).
const PROMOTION_WAIT: Duration = Duration::from_secs(5);

/// Removes a coordinator from the voters (leadership moves first if it
/// is the leader), then forgets its address.
async fn remove_member(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    if !v.voters.contains(&id) && !v.state.coordinators().contains_key(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("coordinator {id} is not a member"),
        ));
    }
    if v.voters.len() == 1 && v.voters.contains(&id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the last coordinator cannot be removed",
        ));
    }
    match commit_membership(&admin, MemberChange::Remove(id)).await {
        WriteReply::Applied(_) => {}
        other => return reply_json(other),
    }
    match commit(&admin, Op::RemoveCoordinator { id }).await {
        WriteReply::Applied(_) | WriteReply::Rejected { status: 404, .. } => {
            Ok(Json(json!({"result": "Applied"})))
        }
        other => reply_json(other),
    }
}

/// Runs a membership change on the leader, forwarding and retrying while
/// leadership moves, within the request timeout.
pub async fn commit_membership(admin: &Admin, change: MemberChange) -> WriteReply {
    let deadline = tokio::time::Instant::now() + admin.timeout;
    loop {
        let mut reply = submit_membership(&admin.requests, change, admin.timeout).await;
        if let WriteReply::NotLeader { leader } = reply {
            if leader != 0 && leader != admin.id {
                let req = PeerRequest::Membership { change };
                reply = match admin.peers.request(leader, &req, admin.timeout).await {
                    Ok(PeerResponse::Write(r)) => r,
                    Ok(other) => WriteReply::Unavailable {
                        message: format!("unexpected answer from leader {leader}: {other:?}"),
                    },
                    Err(e) => WriteReply::Unavailable {
                        message: format!("cannot forward to leader {leader}: {e}"),
                    },
                };
            }
        }
        let retry = matches!(reply, WriteReply::NotLeader { .. });
        if !retry || tokio::time::Instant::now() >= deadline {
            return reply;
        }
        // Leadership is moving (e.g. the leader is removing itself).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits a federated job: the body is the spec as TOML (or JSON).
async fn create_fl_job(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the job spec is not UTF-8"))?;
    let parsed = if text.trim_start().starts_with('{') {
        JobSpec::from_json(text)
    } else {
        JobSpec::from_toml(text)
    };
    let spec = parsed
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid job spec: {e}")))?;
    let json = spec
        .to_json()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = spec.id.clone();
    let _created = write(
        &admin,
        Op::CreateFlJob {
            id: id.clone(),
            tenant: who.map_or_else(|| DEFAULT_TENANT.to_string(), |p| p.0.tenant),
            spec: json,
        },
    )
    .await?;
    Ok(Json(json!({"id": id, "status": "Pending"})))
}

/// The job `id` if `who` may see it; another tenant's job is as unknown
/// as a missing one (404).
fn visible_job<'a>(
    state: &'a ClusterState,
    who: Option<&Principal>,
    id: &str,
) -> Result<&'a FlJob, ApiError> {
    state
        .fl_job(id)
        .filter(|j| sees_tenant(who, &j.tenant))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no federated job {id:?}")))
}

async fn list_fl_jobs(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let jobs: Vec<Value> = v
        .state
        .fl_jobs()
        .iter()
        .filter(|(_, j)| sees_tenant(who.as_deref(), &j.tenant))
        .map(|(id, j)| {
            let rounds = JobSpec::from_json(&j.spec).map_or(0, |s| s.rounds);
            json!({"id": id, "tenant": j.tenant, "status": j.status,
                "rounds_done": j.last_round(), "rounds": rounds})
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })))
}

async fn get_fl_job(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let job = visible_job(&v.state, who.as_deref(), &id)?;
    let spec: Value = serde_json::from_str(&job.spec).unwrap_or(Value::Null);
    let rounds: Vec<Value> = job
        .rounds
        .iter()
        .map(|r| json!({"round": r.round, "checkpoint": r.checkpoint_hash, "metrics": r.metrics}))
        .collect();
    Ok(Json(
        json!({"id": id, "tenant": job.tenant, "status": job.status, "reason": job.failure,
            "spec": spec, "rounds": rounds}),
    ))
}

async fn stop_fl_job(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    visible_job(&v.state, who.as_deref(), &id)?;
    write(
        &admin,
        Op::SetFlJobStatus {
            job: id,
            status: FlJobStatus::Cancelled,
            reason: None,
        },
    )
    .await
}

/// The job's latest global model as safetensors (from this coordinator's
/// checkpoint copy).
/// Query of `GET /admin/v1/fl/jobs/{id}/model`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelQuery {
    /// `safetensors` (the default) or `onnx`.
    format: Option<String>,
}

async fn fl_model(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let onnx = match query.format.as_deref() {
        None | Some("safetensors") => false,
        Some("onnx") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format {other:?} is not served (safetensors or onnx)"),
            ))
        }
    };
    let v = read(&admin).await?;
    let job = visible_job(&v.state, who.as_deref(), &id)?;
    let round = job.rounds.last().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "the job has no committed round yet")
    })?;
    let spec = JobSpec::from_json(&job.spec)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
    let bytes = admin.blobs.get(&round.checkpoint_hash).ok_or_else(|| {
        unavailable(format!(
            "checkpoint {} is not on this coordinator; ask another",
            round.checkpoint_hash
        ))
    })?;
    let layout = spec
        .model
        .init(0)
        .map_err(|e| unavailable(e.to_string()))?
        .layout();
    let params = backends::fl::Params::from_raw_le(&bytes, &layout)
        .and_then(|p| {
            if onnx {
                backends::fl::onnx_export::to_onnx(&spec.model, &p)
            } else {
                p.to_safetensors()
            }
        })
        .map_err(|e| unavailable(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        params,
    )
        .into_response())
}

async fn cluster(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    let mut v = cluster_json(&read(&admin).await?);
    let heartbeats: serde_json::Map<String, Value> = admin
        .registry
        .snapshot()
        .into_iter()
        .map(|(id, s)| {
            let hb = s.heartbeat;
            let replicas: Vec<Value> = hb
                .replicas
                .iter()
                .map(|r| {
                    let kv = r.kv.as_ref().map(|kv| {
                        json!({"total_blocks": kv.total_blocks, "used_blocks": kv.used_blocks,
                            "cached_blocks": kv.cached_blocks, "queried_tokens": kv.queried_tokens,
                            "hit_tokens": kv.hit_tokens, "preemptions": kv.preemptions,
                            "cached_prefix_spans": kv.prefix_spans.len()})
                    });
                    json!({"model": r.model, "state": format!("{:?}", r.state).to_lowercase(),
                        "running": r.running, "waiting": r.waiting, "error": r.error, "kv": kv})
                })
                .collect();
            let age_ms = u64::try_from(s.age.as_millis()).unwrap_or(u64::MAX);
            let entry = json!({"age_ms": age_ms, "free_kv_bytes": hb.free_kv_bytes,
                "replicas": replicas});
            (id, entry)
        })
        .collect();
    v["heartbeats"] = Value::Object(heartbeats);
    Ok(Json(v))
}

async fn list_models(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"models": models_json(&read(&admin).await?)})))
}

async fn register_model(
    State(admin): State<Arc<Admin>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RegisterModelBody = parse_body(&body)?;
    let op = Op::RegisterModel {
        name: b.name,
        source: b.source,
        format: b.format,
        size_bytes: b.size_bytes,
        desired_replicas: b.desired_replicas,
    };
    write(&admin, op).await
}

async fn unregister_model(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    write(&admin, Op::UnregisterModel { name }).await
}

async fn scale_model(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ScaleBody = parse_body(&body)?;
    let op = Op::ScaleModel {
        name,
        desired_replicas: b.desired_replicas,
    };
    write(&admin, op).await
}

/// A linearizable read of the replicated state, or 503.
pub async fn read(admin: &Admin) -> Result<ReadView, ApiError> {
    let unavailable = |m: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
    let (tx, rx) = oneshot::channel();
    let fut = async {
        admin
            .requests
            .send(LoopRequest::Read { reply: tx })
            .await
            .map_err(|_| unavailable("the raft loop has stopped"))?;
        rx.await
            .map_err(|_| unavailable("linearizable read timed out (no quorum?)"))?
            .map_err(|e| unavailable(&e))
    };
    tokio::time::timeout(admin.timeout, fut)
        .await
        .map_err(|_| unavailable("linearizable read timed out (no quorum?)"))?
}

/// Commits `op` through the leader (forwarding if needed) and answers
/// with its outcome.
pub async fn write(admin: &Admin, op: Op) -> Result<Json<Value>, ApiError> {
    reply_json(commit(admin, op).await)
}

/// The HTTP answer for a write's outcome.
pub(crate) fn reply_json(reply: WriteReply) -> Result<Json<Value>, ApiError> {
    match reply {
        WriteReply::Applied(outcome) => Ok(Json(json!({"result": outcome}))),
        WriteReply::Rejected { status, message } => Err(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message,
        )),
        WriteReply::NotLeader { leader } => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("leader changed (now {leader}); retry"),
        )),
        WriteReply::Unavailable { message } => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message))
        }
    }
}

/// Proposes `op` locally, or forwards it to the leader this coordinator
/// knows of; bounded by the request timeout (plus the forwarding hop).
pub async fn commit(admin: &Admin, op: Op) -> WriteReply {
    let reply = submit_write(&admin.requests, op.clone(), admin.timeout).await;
    let WriteReply::NotLeader { leader } = reply else {
        return reply;
    };
    if leader == 0 {
        return WriteReply::Unavailable {
            message: "no leader known".into(),
        };
    }
    let req = PeerRequest::Forward { op };
    let forward = admin
        .peers
        .request(leader, &req, admin.timeout + Duration::from_secs(1));
    let forward = tokio::time::timeout(admin.timeout + Duration::from_secs(2), forward);
    // A leader that dies mid-request would hold the client until the
    // timeout; give up as soon as this coordinator sees it lose leadership.
    let mut view = admin.view.clone();
    view.mark_unchanged();
    let lost = async move {
        // Only changes published from now on count: the published view may
        // lag the raft node that just named `leader`.
        while view.changed().await.is_ok() {
            if view.borrow().leader_id != leader {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    let answer = tokio::select! {
        r = forward => r.unwrap_or_else(|_| Err("timed out".into())),
        _ = lost => {
            return WriteReply::Unavailable {
                message: format!(
                    "leader {leader} lost leadership while forwarding; the write may or may not \
                     have been applied"
                ),
            }
        }
    };
    match answer {
        Ok(PeerResponse::Write(r)) => r,
        Ok(other) => WriteReply::Unavailable {
            message: format!("unexpected answer from leader {leader}: {other:?}"),
        },
        Err(e) => WriteReply::Unavailable {
            message: format!("cannot forward to leader {leader}: {e}"),
        },
    }
}

fn models_json(v: &ReadView) -> Value {
    Value::Array(
        v.state
            .models()
            .iter()
            .map(|(name, m)| {
                json!({
                    "name": name,
                    "source": m.source,
                    "format": m.format,
                    "size_bytes": m.size_bytes,
                    "desired_replicas": m.desired_replicas,
                    "version": m.version,
                })
            })
            .collect(),
    )
}

fn cluster_json(v: &ReadView) -> Value {
    json!({
        "leader_id": v.leader_id,
        "term": v.term,
        "commit_index": v.commit_index,
        "applied_index": v.applied_index,
        "members": v.voters,
        "coordinators": v.state.coordinators(),
        "nodes": v.state.nodes(),
        "models": models_json(v),
        "placements": v.state.placements(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_errors_map_to_statuses() {
        use crate::server::wire::apply_error_status;
        use crate::state::ApplyError;
        assert_eq!(
            apply_error_status(&ApplyError::UnknownModel("m".into())),
            404
        );
        assert_eq!(
            apply_error_status(&ApplyError::TenantExists("t".into())),
            409
        );
        let invalid = ApplyError::InvalidField {
            field: "name",
            reason: "empty".into(),
        };
        assert_eq!(apply_error_status(&invalid), 400);
    }

    #[test]
    fn bad_bodies_are_400_with_the_reason() {
        let e = parse_body::<ScaleBody>(b"{\"desired_replicas\": \"two\"}").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = parse_body::<ScaleBody>(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
