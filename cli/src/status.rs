//! `inferno status --url URL [--json]`: the cluster as one coordinator
//! sees it: raft leader and members, nodes and their load, models and
//! their replicas.

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;

use crate::admin_api::cell as s;

/// Arguments of `inferno status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Base URL of a coordinator, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// Print the raw JSON of `GET /admin/v1/cluster`.
    #[arg(long)]
    pub json: bool,
}

/// Prints the cluster table (or JSON).
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let target = crate::admin_api::Target {
        url: args.url,
        key: args.key,
    };
    let v = crate::admin_api::call(&target, "GET", "/admin/v1/cluster", None)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

/// The human-readable tables for a `GET /admin/v1/cluster` answer.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leader {}  term {}  commit {}  members {}",
        s(&v["leader_id"]),
        s(&v["term"]),
        s(&v["commit_index"]),
        s(&v["members"])
    );
    let _ = writeln!(
        out,
        "\n{:<14} {:<22} {:<6} {:>5} {:>9} {:>8} {:>8} {:>6} {:>8}",
        "NODE", "ADDRESS", "STATUS", "CORES", "MEM_MIB", "RUNNING", "WAITING", "KV", "PFX_HIT"
    );
    if let Some(nodes) = v["nodes"].as_object() {
        for (id, n) in nodes {
            let hb = &v["heartbeats"][id];
            let sum = |key: &str| -> u64 {
                hb["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter_map(|x| x[key].as_u64()).sum())
            };
            let kv = |key: &str| -> u64 {
                hb["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter_map(|x| x["kv"][key].as_u64()).sum())
            };
            let percent = |part: u64, whole: u64| {
                if whole == 0 {
                    "-".to_string()
                } else {
                    format!("{:.0}%", 100.0 * part as f64 / whole as f64)
                }
            };
            let _ = writeln!(
                out,
                "{:<14} {:<22} {:<6} {:>5} {:>9} {:>8} {:>8} {:>6} {:>8}",
                id,
                s(&n["addr"]),
                s(&n["status"]),
                s(&n["cores"]),
                n["memory_bytes"].as_u64().unwrap_or(0) >> 20,
                sum("running"),
                sum("waiting"),
                percent(kv("used_blocks"), kv("total_blocks")),
                percent(kv("hit_tokens"), kv("queried_tokens")),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:>7} {:>8}  REPLICAS",
        "MODEL", "VERSION", "DESIRED"
    );
    if let Some(models) = v["models"].as_array() {
        for m in models {
            let name = s(&m["name"]);
            let replicas = v["placements"][&name]
                .as_object()
                .map(|p| {
                    p.iter()
                        .map(|(node, r)| format!("{node}:{}", s(&r["state"]).to_lowercase()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<24} {:>7} {:>8}  {}",
                name,
                s(&m["version"]),
                s(&m["desired_replicas"]),
                replicas
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nodes_models_and_replicas() {
        let v = json!({
            "leader_id": 2, "term": 3, "commit_index": 17, "members": [1, 2, 3],
            "nodes": {"node-1": {"addr": "127.0.0.1:7201", "status": "Up", "cores": 2,
                "memory_bytes": 2147483648u64}},
            "heartbeats": {"node-1": {"replicas": [{"model": "m", "running": 3, "waiting": 1,
                "kv": {"used_blocks": 25, "total_blocks": 100, "hit_tokens": 900, "queried_tokens": 1000}}]}},
            "models": [{"name": "m", "version": 1, "desired_replicas": 2}],
            "placements": {"m": {"node-1": {"state": "Ready", "model_version": 1}}},
        });
        let text = render(&v);
        assert!(text.contains("leader 2  term 3"), "{text}");
        assert!(text.contains("node-1") && text.contains("2048"), "{text}");
        assert!(text.contains("       3        1    25%      90%"), "{text}");
        assert!(text.contains("node-1:ready"), "{text}");
    }
}
