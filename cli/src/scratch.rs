//! Scratch directories of the commands that start their own processes
//! (benchmarks, dataset conversion).

use std::path::PathBuf;

/// A path under the system temp directory that no other run uses at the
/// same time: `PREFIX-PID-NANOS`. Not created.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}
