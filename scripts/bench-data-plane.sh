#!/usr/bin/env bash
# Data-plane benchmark, ours and the anchor in the same run:
#   1. `inferno up` (3 coordinators, NODES nodes x THREADS_PER_NODE threads) and
#      ../shared/anchors/llamacpp/load.py at concurrency 1, 4, 8 through a coordinator;
#   2. llama-server --parallel 8 with the same total threads, same load.py runs;
#   3. routing overhead: median TTFT through the coordinator (concurrency 1)
#      minus the median TTFT of the same chat prompt on the engine directly
#      (`inferno generate`, same threads).
# Prints one JSON line per run and a summary table. Loopback only; every
# process it starts is stopped at the end.
#   INFERNO_BIN (default target/release/inferno), ANCHORS (default ../shared/anchors),
#   NODES (2), THREADS_PER_NODE (1), REQUESTS (32), MAX_TOKENS (64)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${INFERNO_BIN:-target/release/inferno}
ANCHORS=${ANCHORS:-../shared/anchors}
NODES=${NODES:-2}
TPN=${THREADS_PER_NODE:-1}
REQUESTS=${REQUESTS:-32}
MAX_TOKENS=${MAX_TOKENS:-64}
TOTAL=$((NODES * TPN))
LOAD="python3 $ANCHORS/llamacpp/load.py"
PROMPT="Write a short story about a robot who learns to paint."

MODEL=$("$BIN" pull)
LLAMA_BIN=$(bash "$ANCHORS/llamacpp/build.sh" | tail -1)
# shellcheck source=bench-lib.sh
source scripts/bench-lib.sh

echo "load $(cut -d' ' -f1 /proc/loadavg); $NODES nodes x $TPN threads vs llama-server -t $TOTAL --parallel 8" >&2
port=$(free_port)
"$BIN" up --data-dir "$work/cluster" --http "127.0.0.1:$port" --nodes "$NODES" \
  --threads-per-node "$TPN" --model "$MODEL" >"$work/up.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port/ready" "$work/cluster/api.key"
KEY=$(cat "$work/cluster/api.key") # the inference key `inferno up` made
# load.py asks /v1/models without the key, so it is given --model.
ID=$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$port/v1/models" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
for c in 1 4 8; do
  r=$($LOAD --url "http://127.0.0.1:$port" --api-key "$KEY" --model "$ID" --concurrency "$c" --requests "$REQUESTS" \
    --max-tokens "$MAX_TOKENS" --ignore-eos --prompt "$PROMPT" --json)
  echo "{\"server\":\"inferno\",\"concurrency\":$c,\"result\":$r}"
done | tee "$work/inferno.jsonl"
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

lport=$(free_port)
"$LLAMA_BIN/llama-server" -m "$MODEL" -t "$TOTAL" --parallel 8 -c 4096 \
  --host 127.0.0.1 --port "$lport" >"$work/llama.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$lport/health"
for c in 1 4 8; do
  r=$($LOAD --url "http://127.0.0.1:$lport" --concurrency "$c" --requests "$REQUESTS" \
    --max-tokens "$MAX_TOKENS" --ignore-eos --prompt "$PROMPT" --json)
  echo "{\"server\":\"llama-server\",\"concurrency\":$c,\"result\":$r}"
done | tee "$work/llama.jsonl"

# TTFT of the same chat prompt on the engine directly, same threads per node.
for _ in 1 2 3 4 5; do
  "$BIN" generate --model "$MODEL" --chat --prompt "$PROMPT" --max-tokens 2 --temperature 0 \
    --threads "$TPN" 2>&1 >/dev/null | sed -n 's/.*first token \([0-9]*\) ms.*/\1/p'
done >"$work/direct_ttft.txt"

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
rows = [json.loads(l) for f in ("inferno.jsonl", "llama.jsonl") for l in open(f"{work}/{f}")]
by = {(r["server"], r["concurrency"]): r["result"] for r in rows}
print("| concurrency | inferno tok/s | llama-server tok/s | ratio | inferno TTFT p50 ms | llama TTFT p50 ms |")
print("|---|---|---|---|---|---|")
for c in (1, 4, 8):
    a, b = by[("inferno", c)], by[("llama-server", c)]
    ta, tb = a["agg_tokens_per_s"], b["agg_tokens_per_s"]
    fa, fb = a["ttft_p50_s"] * 1e3, b["ttft_p50_s"] * 1e3
    fails = a["failed"] + b["failed"]
    print(f"| {c} | {ta:.1f} | {tb:.1f} | {ta/tb:.2f}x | {fa:.0f} | {fb:.0f} |" + (f" {fails} failed" if fails else ""))
direct = [float(x) for x in open(f"{work}/direct_ttft.txt").read().split()]
via = by[("inferno", 1)]["ttft_p50_s"] * 1e3
if direct:
    d = statistics.median(direct)
    print(f"routing overhead (TTFT p50 via coordinator - engine direct): {via:.1f} - {d:.1f} = {via - d:.1f} ms")
PY
