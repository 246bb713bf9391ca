//! What the auth and quota layers add to a request, in-process: the same
//! trivial `/v1/models` handler served through `tower::ServiceExt::oneshot`
//! bare, behind the key check, and behind the key check plus a limited
//! key's quota book. Prints the median per-request time of each over
//! rounds of requests, and the differences.
//!
//! `cargo run --release -p inferno-coordinator --example auth_overhead [REQUESTS]`

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
use coordinator::auth::{hash_key, new_key, require_key, AuthLayerState, AuthMode};
use coordinator::quota::{enforce, QuotaLayerState, TenantMetrics};
use coordinator::server::raft_loop::LocalView;
use coordinator::state::{ClusterState, Command, KeyLimits, KeyScope, Op};
use tower::ServiceExt;

fn state_with_keys(plain: &str, limited: &str) -> ClusterState {
    let mut s = ClusterState::default();
    let ops = [
        Op::CreateTenant { name: "t".into() },
        Op::AddApiKey {
            tenant: "t".into(),
            key_hash: hash_key(plain),
            id: "plain".into(),
            scope: KeyScope::Inference,
            created_at_unix: 0,
            expires_at_unix: None,
            limits: KeyLimits::default(),
        },
        Op::AddApiKey {
            tenant: "t".into(),
            key_hash: hash_key(limited),
            id: "limited".into(),
            scope: KeyScope::Inference,
            created_at_unix: 0,
            expires_at_unix: None,
            limits: KeyLimits {
                rpm: Some(u32::MAX),
                tpm: Some(u32::MAX),
                max_concurrent: Some(1_000),
            },
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        s.apply(i as u64 + 1, &Command::new(op))
            .expect("a fresh state takes these");
    }
    s
}

async fn time_per_request(app: &Router, key: Option<&str>, n: usize) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        let mut req = Request::get("/v1/models");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let (plain, limited) = (new_key().secret, new_key().secret);
    let view = LocalView {
        voters: vec![1, 2, 3],
        state: Arc::new(state_with_keys(&plain, &limited)),
        ..LocalView::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(view);
    let handler = || Router::new().route("/v1/models", get(|| async { "{}" }));
    let bare = handler();
    let auth = Arc::new(AuthLayerState {
        mode: AuthMode::On,
        metrics_public: false,
        view: rx,
    });
    let keyed = handler().layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        require_key,
    ));
    let quota = Arc::new(QuotaLayerState::new(
        Arc::new(|| 3),
        TenantMetrics::default(),
    ));
    let limited_app = handler()
        .layer(axum::middleware::from_fn_with_state(quota, enforce))
        .layer(axum::middleware::from_fn_with_state(auth, require_key));
    let rounds = 7;
    let (mut b, mut k, mut l) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.push(time_per_request(&bare, None, n).await);
        k.push(time_per_request(&keyed, Some(&plain), n).await);
        l.push(time_per_request(&limited_app, Some(&limited), n).await);
    }
    let (b, k, l) = (median(b), median(k), median(l));
    println!("requests per round: {n}, rounds: {rounds}, medians of per-request means:");
    println!("bare handler:               {b:8.2} us");
    println!("+ key check:                {k:8.2} us  (+{:.2} us)", k - b);
    println!("+ key check + quota:        {l:8.2} us  (+{:.2} us)", l - b);
}
