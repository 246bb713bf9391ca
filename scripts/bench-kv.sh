#!/usr/bin/env bash
# KV-cache benchmarks, ours and the anchor in the same run (loopback only;
# every process started is stopped at the end):
#   A. shared prefixes, one node: `inferno up --nodes 1` vs llama-server
#      --parallel 8 (prompt cache on, as by default), both driven by
#      `inferno bench prefix` (4 system prompts of ~1,000 tokens, 64 warm
#      requests from 8 clients, 32 tokens each), THREADS threads each;
#   B. shared prefixes, 2 nodes x THREADS threads, cache-aware routing on and
#      off, KV pool of CLUSTER_KV_MIB per replica (64 MiB: each node holds
#      about two of the four prompts, so where a request goes matters);
#   C. open-ended requests: 8 clients that set no max_tokens (temperature
#      0.7, end of turn ends them), `inferno up` with 2 nodes x THREADS vs
#      llama-server -t 2*THREADS --parallel 8, load.py; the most sequences
#      running at once on the cluster is sampled from /metrics.
# Prints one JSON line per run and summary tables.
#   INFERNO_BIN (default target/release/inferno), ANCHORS (../shared/anchors),
#   THREADS (1), CLUSTER_KV_MIB (64), PARTS (ABC), C_UP_ARGS (extra
#   `inferno up` arguments for part C, e.g. "--ctx-size 2048" to serve the
#   per-sequence context of llama-server's slots: 16384 / 8)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${INFERNO_BIN:-target/release/inferno}
ANCHORS=${ANCHORS:-../shared/anchors}
THREADS=${THREADS:-1}
CLUSTER_KV_MIB=${CLUSTER_KV_MIB:-64}
PARTS=${PARTS:-ABC}
PREFIX_ARGS="--system-tokens 1000 --prefixes 4 --requests 64 --concurrency 8 --max-tokens 32 --json"

MODEL=$("$BIN" pull | tail -1)
# llama.cpp is the anchor of parts A and C only (a ten-minute build).
if [[ $PARTS == *A* || $PARTS == *C* ]]; then
  LLAMA_BIN=$(bash "$ANCHORS/llamacpp/build.sh" | tail -1)
fi
# shellcheck source=bench-lib.sh
source scripts/bench-lib.sh
up() { # name, port, extra args...
  local name=$1 port=$2; shift 2
  "$BIN" up --data-dir "$work/$name" --http "127.0.0.1:$port" --model "$MODEL" \
    --threads-per-node "$THREADS" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  KEY_FILE=$work/$name/api.key # the inference key `inferno up` made
  wait_ready "http://127.0.0.1:$port/ready" "$KEY_FILE"
}
stop_last() { kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }
llama() { # port, threads
  "$LLAMA_BIN/llama-server" -m "$MODEL" -t "$2" --parallel 8 -c 16384 \
    --host 127.0.0.1 --port "$1" >"$work/llama-$1.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$1/health"
}
model_id() { # base URL, API key file: the first model the server lists
  # (load.py asks /v1/models without the key, so it is given --model)
  curl -sf -H "Authorization: Bearer $(cat "$2")" "$1/v1/models" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])'
}
emit() { # label, json
  echo "{\"run\":\"$1\",\"result\":$2}" | tee -a "$work/results.jsonl"
}
echo "load $(cut -d' ' -f1 /proc/loadavg); model $MODEL; $THREADS thread(s) per node" >&2

if [[ $PARTS == *A* ]]; then
  p=$(free_port); up prefix-1node "$p" --nodes 1 --replicas 1
  emit "A inferno 1 node" "$("$BIN" bench prefix --url "http://127.0.0.1:$p" --api-key-file "$KEY_FILE" $PREFIX_ARGS)"
  stop_last
  p=$(free_port); llama "$p" "$THREADS"
  emit "A llama-server" "$("$BIN" bench prefix --url "http://127.0.0.1:$p" $PREFIX_ARGS)"
  stop_last
fi
if [[ $PARTS == *B* ]]; then
  for mode in on off; do
    extra=(); [[ $mode == off ]] && extra=(--no-cache-aware-routing)
    p=$(free_port); up "prefix-2nodes-$mode" "$p" --nodes 2 --replicas 2 --kv-budget-mib "$CLUSTER_KV_MIB" "${extra[@]}"
    emit "B cache-aware $mode" "$("$BIN" bench prefix --url "http://127.0.0.1:$p" --api-key-file "$KEY_FILE" $PREFIX_ARGS)"
    stop_last
  done
fi
if [[ $PARTS == *C* ]]; then
  OPEN="python3 $ANCHORS/llamacpp/load.py --concurrency 8 --requests 16 --temperature 0.7 --extra {\"max_tokens\":null} --json"
  # shellcheck disable=SC2086 # C_UP_ARGS is a list of arguments
  p=$(free_port); up open-ended "$p" --nodes 2 ${C_UP_ARGS:-}
  ( peak=0; while sleep 0.5; do
      r=$(curl -sf -H "Authorization: Bearer $(cat "$KEY_FILE")" "http://127.0.0.1:$p/metrics" | awk '/^inferno_running_sequences\{/ {s+=$2} END {print s+0}') || break
      (( r > peak )) && peak=$r && echo "$peak" > "$work/peak_running"
    done ) &
  poller=$!
  emit "C inferno" "$($OPEN --url "http://127.0.0.1:$p" --api-key "$(cat "$KEY_FILE")" \
    --model "$(model_id "http://127.0.0.1:$p" "$KEY_FILE")")"
  kill "$poller" 2>/dev/null || true
  echo "{\"run\":\"C inferno peak running\",\"result\":$(cat "$work/peak_running" 2>/dev/null || echo 0)}" | tee -a "$work/results.jsonl"
  stop_last
  p=$(free_port); llama "$p" "$((2 * THREADS))"
  emit "C llama-server" "$($OPEN --url "http://127.0.0.1:$p")"
  stop_last
fi

python3 - "$work/results.jsonl" <<'PY'
import json, os, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line); rows[r["run"]] = r["result"]
def prefix_table(title, runs):
    runs = [r for r in runs if r in rows]
    if not runs: return
    print(f"\n{title}")
    print("| run | cold TTFT p50 ms | warm TTFT p50 / p99 ms | warm/cold | warm tok/s | prefix hit ratio (warm) | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        v = rows[r]; hit = v.get("prefix_hit_ratio_warm")
        print(f"| {r} | {v['cold_ttft_ms_p50']:.0f} | {v['warm_ttft_ms_p50']:.0f} / {v['warm_ttft_ms_p99']:.0f} | {v['warm_over_cold_ttft']:.3f} | {v['warm_tokens_per_s']:.1f} | {'n/a' if hit is None else f'{hit:.3f}'} | {v['errors']} |")
prefix_table("A. shared prefixes, one node", ["A inferno 1 node", "A llama-server"])
prefix_table("B. shared prefixes, 2 nodes", ["B cache-aware on", "B cache-aware off"])
if "C inferno" in rows and "C llama-server" in rows:
    a, b = rows["C inferno"], rows["C llama-server"]
    print(f"\nC. 8 clients without max_tokens (inferno up {os.environ.get('C_UP_ARGS', '')})")
    print("| server | tok/s | req/s | TTFT p50 s | failed |")
    print("|---|---|---|---|---|")
    for n, v in (("inferno", a), ("llama-server", b)):
        print(f"| {n} | {v['agg_tokens_per_s']:.1f} | {v['req_per_s']:.2f} | {v['ttft_p50_s']:.3f} | {v['failed']} |")
    print(f"ratio {a['agg_tokens_per_s'] / b['agg_tokens_per_s']:.2f}x; most sequences running at once on the cluster: {rows.get('C inferno peak running')}")
PY
