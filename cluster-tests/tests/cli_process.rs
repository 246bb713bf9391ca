//! The `inferno` binary as a user runs it: a separate process, real model file.

use inferno_cluster_tests::{inferno, test_model};

#[test]
fn generate_streams_a_completion_to_stdout() {
    let out = inferno()
        .args([
            "generate",
            "--prompt",
            "January, February, March, April,",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ])
        .arg("--model")
        .arg(test_model())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("May"), "stdout: {stdout}");
    assert!(
        stderr.contains("8 generated, finish: length"),
        "stderr: {stderr}"
    );
}

#[test]
fn generate_with_chat_template_stops_at_end_of_turn() {
    let out = inferno()
        .args([
            "generate",
            "--chat",
            "--prompt",
            "Say hello.",
            "--temperature",
            "0",
            "--max-tokens",
            "64",
        ])
        .arg("--model")
        .arg(test_model())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("finish: stop"), "stderr: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("<|im_end|>"));
}

#[test]
fn corrupt_model_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00 but then nothing sensible").unwrap();
    let out = inferno()
        .args(["generate", "--prompt", "hi", "--model"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a valid GGUF file"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn bench_engine_prints_one_json_line_per_level() {
    let out = inferno()
        .args([
            "bench",
            "engine",
            "--concurrency",
            "1,2",
            "--prompt-tokens",
            "16",
            "--max-tokens",
            "4",
            "--json",
        ])
        .arg("--model")
        .arg(test_model())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, c) in rows.iter().zip([1, 2]) {
        assert_eq!(row["concurrency"], c);
        for key in [
            "threads",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "ttft_ms_p50",
            "itl_ms_p50",
            "peak_rss_mb",
        ] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
        }
    }
}
