#!/usr/bin/env bash
# ONNX serving, ours and the anchor in the same run (loopback only; every
# process started is stopped at the end): an MLP written by
# scripts/make-onnx-test-model.py (x FP32 [batch, 1024], 4 hidden layers of
# 2048, 16 outputs: ~15 M multiply-adds a row), served by `inferno up
# --nodes 1 --coordinators 1 --threads-per-node THREADS` and driven by
# `inferno bench onnx` (binary tensors, one row a request, concurrency
# 1, 8, 32), against onnxruntime's Python InferenceSession on the same file
# with THREADS intra-op threads, looping single requests and running
# best-case batches of 32 (scripts/bench-onnx-ort.py).
#   INFERNO_BIN (default target/release/inferno), THREADS (1), REQUESTS (256),
#   MLP ("1024 2048 4 16": IN HIDDEN LAYERS OUT)
# Needs the PyPI packages onnx and onnxruntime==1.32.0.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${INFERNO_BIN:-target/release/inferno}
THREADS=${THREADS:-1}
REQUESTS=${REQUESTS:-256}
read -r -a MLP <<<"${MLP:-1024 2048 4 16}"
# shellcheck source=bench-lib.sh
source scripts/bench-lib.sh

model=$work/mlp.onnx
python3 scripts/make-onnx-test-model.py "$model" --mlp "${MLP[@]}"
port=$(free_port)
"$BIN" up --data-dir "$work/up" --http "127.0.0.1:$port" --nodes 1 --coordinators 1 \
  --threads-per-node "$THREADS" --model "$model" >"$work/up.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port/v2/models/mlp/ready" "$work/up/api.key"

echo "== anchor: onnxruntime InferenceSession, $THREADS thread(s)"
python3 scripts/bench-onnx-ort.py "$model" --threads "$THREADS" --requests "$REQUESTS" --json
echo "== inferno: bench onnx through the coordinator, $THREADS thread(s)"
"$BIN" bench onnx --url "http://127.0.0.1:$port" --model mlp --api-key-file "$work/up/api.key" \
  --concurrency 1,8,32 --requests "$REQUESTS" --json
