//! `inferno keys create|list|revoke --url URL`: the cluster's API keys
//! through the admin API (an admin key is needed: `--api-key-file
//! DATA_DIR/admin.key` for a cluster started by `inferno up`).

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::admin_api::{call, cell as s, Target};

/// `inferno keys ...`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key; its secret is printed once, alone on the last line.
    Create(CreateArgs),
    /// List the keys (ids, tenants, scopes, expiry, limits; never secrets).
    List(ListArgs),
    /// Revoke a key by id: every coordinator refuses it once applied.
    Revoke(RevokeArgs),
}

/// What a key may do.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ScopeArg {
    /// The inference API.
    Inference,
    /// Everything, the admin API included.
    Admin,
}

/// Arguments of `inferno keys create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: Target,
    /// The tenant (created if new).
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// What the key may do.
    #[arg(long, value_enum, default_value = "inference")]
    pub scope: ScopeArg,
    /// Lifetime, e.g. 3600s, 90m, 12h, 30d (default: no expiry).
    #[arg(long, value_parser = parse_duration_s)]
    pub expires: Option<u64>,
    /// Requests per minute, over the whole cluster (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub tpm: Option<u32>,
    /// Requests in flight at once (default: unlimited).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: Option<u32>,
}

/// Arguments of `inferno keys list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON objects (`id`, `tenant`, `scope`, `created_at`,
    /// `expires_at`, `rpm`, `tpm`, `max_concurrent`).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `inferno keys revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The key's id (from `inferno keys list`).
    pub id: String,
}

/// Seconds in a lifetime such as `30d`, `12h`, `90m`, `3600s` or `3600`.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 90m or 3600s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(format!("{text:?} must be a positive duration")),
    }
}

/// Runs a `keys` subcommand.
pub fn run(c: KeysCommand) -> anyhow::Result<()> {
    match c {
        KeysCommand::Create(a) => {
            let scope = match a.scope {
                ScopeArg::Inference => "inference",
                ScopeArg::Admin => "admin",
            };
            let v = call(
                &a.target,
                "POST",
                "/admin/v1/keys",
                Some(json!({
                    "tenant": a.tenant,
                    "scope": scope,
                    "expires_in_s": a.expires,
                    "rpm": a.rpm,
                    "tpm": a.tpm,
                    "max_concurrent": a.max_concurrent,
                })),
            )?;
            let key = v["key"].as_str().context("the answer holds no key")?;
            eprintln!(
                "created {} key {} for tenant {} (expires: {}); it is shown only now:",
                scope,
                s(&v["id"]),
                s(&v["tenant"]),
                s(&v["expires_at"])
            );
            println!("{key}");
        }
        KeysCommand::List(a) => {
            let v = call(&a.target, "GET", "/admin/v1/keys", None)?;
            let keys = v["keys"].as_array().cloned().unwrap_or_default();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<20} {:<16} {:<10} {:>12} {:>12} {:>8} {:>10} {:>6}",
                    "ID", "TENANT", "SCOPE", "CREATED", "EXPIRES", "RPM", "TPM", "CONC"
                );
                for k in &keys {
                    println!(
                        "{:<20} {:<16} {:<10} {:>12} {:>12} {:>8} {:>10} {:>6}",
                        s(&k["id"]),
                        s(&k["tenant"]),
                        s(&k["scope"]),
                        s(&k["created_at"]),
                        s(&k["expires_at"]),
                        s(&k["rpm"]),
                        s(&k["tpm"]),
                        s(&k["max_concurrent"])
                    );
                }
            }
        }
        KeysCommand::Revoke(a) => {
            call(
                &a.target,
                "DELETE",
                &format!("/admin/v1/keys/{}", a.id),
                None,
            )?;
            eprintln!("revoked {}", a.id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_duration_s("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_s("12h"), Ok(43_200));
        assert_eq!(parse_duration_s("90m"), Ok(5400));
        assert_eq!(parse_duration_s("3600"), Ok(3600));
        assert!(parse_duration_s("0s").is_err());
        assert!(parse_duration_s("5y").is_err());
        assert!(parse_duration_s("d").is_err());
        assert!(parse_duration_s("99999999999999999999d").is_err());
    }
}
