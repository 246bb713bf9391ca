//! Helpers for tests that run the real `inferno` binary as separate processes.

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
