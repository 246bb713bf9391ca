//! `inferno node`: run a worker node that joins a cluster of coordinators.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use node::service::{CoordinatorAddr, NodeService, ServableFile, ServiceConfig};
use node::RestartBudget;
use protocol::tls::MemberIdentity;

use crate::config::{NodeConfig, NodeSection, OnnxSection};

/// Arguments of `inferno node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Node configuration file with a `[node]` table; see configs/node-1.toml.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the node until Ctrl-C or SIGTERM, then shuts it down cleanly.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(Some(&args.config))?;
    let section = cfg.node.as_ref().with_context(|| {
        format!(
            "{} has no [node] table (name, certs_dir, listen, coordinators, models)",
            args.config.display()
        )
    })?;
    let service_cfg = service_config(section, cfg.engine.to_engine_config(), &cfg.onnx)
        .await
        .with_context(|| format!("node {} ({})", section.name, args.config.display()))?;
    let service = NodeService::start(service_cfg)
        .await
        .with_context(|| format!("cannot start node {}", section.name))?;
    eprintln!(
        "node {} listening on {} (QUIC)",
        section.name,
        service.local_addr()
    );
    crate::signals::shutdown_signal().await;
    service.shutdown().await;
    Ok(())
}

/// Builds the service configuration: loads the identity, resolves the
/// coordinators' addresses and the model files.
async fn service_config(
    n: &NodeSection,
    engine: backends::engine::EngineConfig,
    onnx: &OnnxSection,
) -> anyhow::Result<ServiceConfig> {
    let identity = MemberIdentity::load(&n.certs_dir, &n.name).with_context(|| {
        format!(
            "cannot load the certificate of {} from {} (create it with `inferno certs issue --ca CA_DIR --name {} --role node --out {}`)",
            n.name,
            n.certs_dir.display(),
            n.name,
            n.certs_dir.display()
        )
    })?;
    let listen = resolve_addr(&n.listen).context("invalid listen address")?;
    let mut coordinators = Vec::with_capacity(n.coordinators.len());
    for c in &n.coordinators {
        let addr = resolve_addr(&c.addr)
            .with_context(|| format!("invalid address of coordinator {}", c.name))?;
        coordinators.push(CoordinatorAddr {
            name: c.name.clone(),
            addr,
        });
    }
    if coordinators.is_empty() {
        tracing::warn!("no coordinators configured: this node will never be assigned a model");
    }
    let models_dir = n
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    let mut models = Vec::with_capacity(n.models.len());
    for m in &n.models {
        let path = resolve_model(&m.path, &models_dir)
            .await
            .with_context(|| format!("model {}", m.name))?;
        models.push(ServableFile {
            name: m.name.clone(),
            path,
        });
    }
    let runtime = match &onnx.runtime {
        Some(path) => path.clone(),
        None if models
            .iter()
            .any(|m| node::onnx_worker::is_onnx_file(&m.path)) =>
        {
            let dir = models_dir.clone();
            let index = crate::pull::DEFAULT_INDEX.to_string();
            tokio::task::spawn_blocking(move || {
                crate::pull::ensure_model(&crate::models::ONNX_RUNTIME, &dir, &index, false)
            })
            .await
            .context("pull task failed")?
            .context("cannot fetch ONNX Runtime for the ONNX models")?
        }
        None => crate::models::ONNX_RUNTIME.path_in(&models_dir),
    };
    let onnx = node::OnnxSettings {
        runtime,
        threads: onnx.threads.unwrap_or(engine.threads).max(1),
        batching: onnx.batch_policy()?,
    };
    let memory_bytes = match n.memory_mib {
        Some(mib) => mib.saturating_mul(1 << 20),
        None => crate::config::physical_memory_bytes().unwrap_or_else(|| {
            tracing::warn!(
                "cannot read /proc/meminfo; announcing 0 bytes of memory (set memory_mib)"
            );
            0
        }),
    };
    let cores = n.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |c| u32::try_from(c.get()).unwrap_or(u32::MAX))
    });
    Ok(ServiceConfig {
        identity,
        listen,
        advertise_addr: n.advertise_addr.clone(),
        cores,
        memory_bytes,
        heartbeat_interval: Duration::from_millis(n.heartbeat_ms.max(1)),
        coordinators,
        models,
        engine,
        onnx,
        restart_budget: RestartBudget::default(),
        fl: node::service::FlConfig {
            client: n.fl_client,
            data_dir: n
                .fl_data_dir
                .clone()
                .unwrap_or_else(crate::default_data_dir),
            byzantine: n.fl_byzantine,
        },
        certs_dir: Some(n.certs_dir.clone()),
    })
}

/// The first address `host:port` resolves to.
fn resolve_addr(s: &str) -> anyhow::Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("cannot resolve {s:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{s:?} resolves to no address"))
}

/// A model file path, or a known model name pulled into `models_dir`.
async fn resolve_model(path: &str, models_dir: &Path) -> anyhow::Result<PathBuf> {
    crate::models::resolve(path, models_dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_or_fail_with_context() {
        assert_eq!(
            resolve_addr("127.0.0.1:7101").unwrap(),
            "127.0.0.1:7101".parse::<SocketAddr>().unwrap()
        );
        let err = resolve_addr("no-port").unwrap_err();
        assert!(format!("{err:#}").contains("host:port"), "{err:#}");
    }
}
