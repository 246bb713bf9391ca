//! `inferno tenants set|list --url URL`: tenants' limits (shared by all of
//! a tenant's keys) and scheduling class, through the admin API. Setting
//! them needs the operator's admin key (tenant `default`).

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::admin_api::{call, cell as s, Target};

/// `inferno tenants ...`.
#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Set a tenant's limits and class (creating it if new); a limit left
    /// out is no limit.
    Set(SetArgs),
    /// List the tenants with their limits, class and number of keys.
    List(ListArgs),
}

/// A tenant's scheduling class at the nodes.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum PriorityArg {
    /// Admitted first: someone waits for the answer.
    Interactive,
    /// Admitted when no interactive request waits, preempted first.
    Batch,
}

/// Arguments of `inferno tenants set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub target: Target,
    /// The tenant.
    pub name: String,
    /// Requests per minute for the whole tenant, over the whole cluster.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute for the whole tenant.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub tpm: Option<u32>,
    /// Requests of the tenant in flight at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: Option<u32>,
    /// Scheduling class of the tenant's requests.
    #[arg(long, value_enum, default_value = "interactive")]
    pub priority: PriorityArg,
}

/// Arguments of `inferno tenants list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON objects (`name`, `rpm`, `tpm`, `max_concurrent`,
    /// `priority`, `keys`).
    #[arg(long)]
    pub json: bool,
}

/// Runs a `tenants` subcommand.
pub fn run(c: TenantsCommand) -> anyhow::Result<()> {
    match c {
        TenantsCommand::Set(a) => {
            let priority = match a.priority {
                PriorityArg::Interactive => "interactive",
                PriorityArg::Batch => "batch",
            };
            let v = call(
                &a.target,
                "PUT",
                &format!("/admin/v1/tenants/{}", a.name),
                Some(json!({
                    "rpm": a.rpm,
                    "tpm": a.tpm,
                    "max_concurrent": a.max_concurrent,
                    "priority": priority,
                })),
            )?;
            println!(
                "tenant {}: rpm {}, tpm {}, max concurrent {}, priority {}",
                s(&v["name"]),
                s(&v["rpm"]),
                s(&v["tpm"]),
                s(&v["max_concurrent"]),
                s(&v["priority"])
            );
        }
        TenantsCommand::List(a) => {
            let v = call(&a.target, "GET", "/admin/v1/tenants", None)?;
            let tenants = v["tenants"].as_array().cloned().unwrap_or_default();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                println!(
                    "{:<20} {:>8} {:>10} {:>6} {:<12} {:>5}",
                    "TENANT", "RPM", "TPM", "CONC", "PRIORITY", "KEYS"
                );
                for t in &tenants {
                    println!(
                        "{:<20} {:>8} {:>10} {:>6} {:<12} {:>5}",
                        s(&t["name"]),
                        s(&t["rpm"]),
                        s(&t["tpm"]),
                        s(&t["max_concurrent"]),
                        s(&t["priority"]),
                        s(&t["keys"])
                    );
                }
            }
        }
    }
    Ok(())
}
