//! Helpers for tests that run the real `inferno` binary as separate processes.

pub mod coordinators;
pub mod http;
pub mod local_up;
pub mod udp_proxy;

use std::path::PathBuf;
use std::process::Command;

/// Path of the `inferno` binary under test: `INFERNO_BIN`, or the one built
/// next to this test executable (`target/<profile>/inferno`; build it first
/// with `cargo build -p inferno-cli`, as the test script does).
pub fn inferno_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("INFERNO_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join("inferno")))
        .unwrap_or_else(|| PathBuf::from("inferno"))
}

/// A command running the `inferno` binary, with logs quiet unless asked for.
pub fn inferno() -> Command {
    let bin = inferno_binary();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p inferno-cli` first (the test script does)",
        bin.display()
    );
    Command::new(bin)
}

/// The default model for tests: `INFERNO_TEST_MODEL`, or where `inferno pull` puts it.
pub fn test_model() -> PathBuf {
    let p = std::env::var_os("INFERNO_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".inferno/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "test model {} is missing: run `inferno pull` or set INFERNO_TEST_MODEL",
        p.display()
    );
    p
}

/// A catalog model for the tests: `env` if set, else `file` where
/// `inferno pull NAME` puts it; checked to exist (the test script pulls it).
fn pulled_model(env: &str, file: &str, name: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".inferno/models")
            .join(file)
    });
    assert!(
        p.exists(),
        "test model {} is missing: run `inferno pull {name}` or set {env}",
        p.display()
    );
    p
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (`INFERNO_QWEN_MODEL`).
pub fn qwen_model() -> PathBuf {
    pulled_model(
        "INFERNO_QWEN_MODEL",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b",
    )
}

/// Gemma 3 270M Q4_K_M (`INFERNO_GEMMA_MODEL`).
pub fn gemma_model() -> PathBuf {
    pulled_model(
        "INFERNO_GEMMA_MODEL",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3-270m",
    )
}

/// ONNX Runtime's library (`INFERNO_ONNXRUNTIME`, or where `inferno pull
/// onnxruntime` puts it).
pub fn onnx_runtime() -> PathBuf {
    pulled_model(
        "INFERNO_ONNXRUNTIME",
        "libonnxruntime.so.1.32.0",
        "onnxruntime",
    )
}

/// Writes the ONNX test model (y = Relu(x W + b), x FP32 [batch, 4]) to
/// `dir/affine_relu.onnx` with `scripts/make-onnx-test-model.py`, which
/// needs the PyPI `onnx` package (the test script installs it).
pub fn onnx_test_model(dir: &std::path::Path) -> PathBuf {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-onnx-test-model.py");
    let out = dir.join("affine_relu.onnx");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("run python3");
    assert!(
        run.status.success(),
        "{} failed (pip install onnx?):\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// The datasets directory for federated tests (`INFERNO_DATA_DIR` or
/// `~/.inferno/data`), checked to hold MNIST (`inferno fl data mnist`;
/// the test script fetches it).
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("INFERNO_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".inferno/data")
        });
    let mnist = dir.join("mnist/mnist.pkl.gz");
    assert!(
        mnist.exists(),
        "{} is missing: run `inferno fl data mnist` (scripts/test.sh does)",
        mnist.display()
    );
    dir
}

/// Calls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn poll_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// [`poll_until`], panicking on timeout.
pub fn wait_until<T>(what: &str, timeout: std::time::Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Sum of a metric over all its label sets in a Prometheus text body
/// (`name` is the sample name, e.g. `inferno_preemptions_total`).
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The model name `inferno up` registers for the test model (its file stem, lower case).
pub fn test_model_name() -> String {
    test_model()
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

/// Runs the Python client `tests/py/SCRIPT` with `args` (it drives a
/// cluster with the official `openai` package) and fails the test with its
/// output unless it exits 0. Returns what it printed.
pub fn run_python_client(script: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} failed (pip install openai jsonschema?):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
