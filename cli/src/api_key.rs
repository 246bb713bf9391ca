//! How the commands that talk to a coordinator (`--url`) get their API
//! key: `--api-key KEY`, else `--api-key-file FILE` (e.g. the
//! `DATA_DIR/api.key` or `DATA_DIR/admin.key` that `inferno up` writes),
//! else `INFERNO_API_KEY`; and a ureq agent that sends it as
//! `Authorization: Bearer KEY` on every request.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// The environment variable holding a key.
pub const ENV: &str = "INFERNO_API_KEY";

/// The API key flags of a `--url` command.
#[derive(Args, Debug, Clone, Default)]
pub struct ApiKeyArgs {
    /// API key (default: --api-key-file, then INFERNO_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// File holding the API key, e.g. DATA_DIR/api.key of `inferno up`.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
}

impl ApiKeyArgs {
    /// The key to send, if any.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(k) = &self.api_key {
            return Ok(Some(k.trim().to_string()));
        }
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?;
            let key = text.trim();
            anyhow::ensure!(
                !key.is_empty(),
                "the API key file {} is empty",
                path.display()
            );
            return Ok(Some(key.to_string()));
        }
        Ok(std::env::var(ENV)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty()))
    }
}

/// `builder` with `key` sent as a bearer token on every request.
// The closure's `Result<_, ureq::Error>` is ureq's middleware signature.
#[allow(clippy::result_large_err)]
pub fn with_key(builder: ureq::AgentBuilder, key: Option<String>) -> ureq::AgentBuilder {
    match key {
        None => builder,
        Some(key) => {
            let value = format!("Bearer {key}");
            builder.middleware(move |req: ureq::Request, next: ureq::MiddlewareNext<'_>| {
                next.handle(req.set("Authorization", &value))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.key");
        std::fs::write(&file, "inf-from-file\n").unwrap();
        let a = ApiKeyArgs {
            api_key: Some("inf-flag".into()),
            api_key_file: Some(file.clone()),
        };
        assert_eq!(a.resolve().unwrap().as_deref(), Some("inf-flag"));
        let a = ApiKeyArgs {
            api_key: None,
            api_key_file: Some(file),
        };
        assert_eq!(a.resolve().unwrap().as_deref(), Some("inf-from-file"));
        let a = ApiKeyArgs {
            api_key: None,
            api_key_file: Some(dir.path().join("missing")),
        };
        assert!(a.resolve().is_err());
    }
}
