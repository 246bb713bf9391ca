//! One blocking call to a coordinator's admin API, as the `--url` commands
//! make it (`keys`, `status`, `audit`): the key as a bearer token, the
//! answer's JSON body, and the API's `{"error":{"message"}}` as the error.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::api_key::{with_key, ApiKeyArgs};

/// Where the admin API is and how to authenticate.
#[derive(Args, Debug)]
pub struct Target {
    /// Base URL of a coordinator.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: ApiKeyArgs,
}

/// `method path` with an optional JSON body; the JSON answer.
pub fn call(t: &Target, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let agent = with_key(
        ureq::AgentBuilder::new().timeout(Duration::from_secs(15)),
        t.key.resolve()?,
    )
    .build();
    let url = format!("{}{path}", t.url.trim_end_matches('/'));
    let req = agent.request(method, &url);
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(r) => r.into_json().with_context(|| format!("{url}: not JSON")),
        Err(ureq::Error::Status(code, r)) => {
            let v: Value = r.into_json().unwrap_or(Value::Null);
            let msg = v["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("{url}: HTTP {code}: {msg}");
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach {url}")),
    }
}

/// A JSON value as a table cell: strings bare, `null` as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
