//! `inferno coordinator`: run one coordinator of the raft group.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use coordinator::server::{self, CoordinatorConfig};

/// Arguments of `inferno coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Coordinator configuration file; see configs/coordinator-1.toml.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the coordinator until Ctrl-C or SIGTERM.
pub async fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(&args.config)?;
    let id = cfg.id;
    server::run(cfg, crate::signals::shutdown_signal())
        .await
        .with_context(|| format!("coordinator {id}"))
}
