//! The process's one ONNX Runtime environment, loaded from the shared
//! library `inferno pull onnxruntime` fetches (`ort`'s `load-dynamic`).

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;

use super::OnnxError;

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The environment, loading `library` on the first call. ONNX Runtime allows
/// one environment per process, so later calls get the first one whatever
/// path they name (and its error, if loading failed).
pub fn environment(library: &Path) -> Result<&'static Environment, OnnxError> {
    ENVIRONMENT
        .get_or_init(|| load(library))
        .as_ref()
        .map_err(|reason| OnnxError::Runtime(reason.clone()))
}

fn load(library: &Path) -> Result<Environment, String> {
    if !library.is_file() {
        return Err(format!(
            "{} does not exist (run `inferno pull onnxruntime`)",
            library.display()
        ));
    }
    let builder =
        ort::init_from(library).map_err(|e| format!("cannot load {}: {e}", library.display()))?;
    builder
        .with_name("inferno")
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", library.display()))
}
