#!/usr/bin/env bash
# Engine speed per model against llama.cpp, in the same run, alternating:
# for each model and thread count, `inferno bench engine` (concurrency 1
# and 8, 128-token prompts, 64 generated tokens), `llama-bench -p 128 -n 64`
# and `llama-batched-bench -npp 128 -ntg 64 -npl 1,8` on the same file.
# Prints one JSON line per measurement and a table of ratios (ours / theirs).
#   MODELS (default: smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b),
#   THREADS (default: "1 2"), ROUNDS (default 2: medians of that many),
#   INFERNO_BIN (target/release/inferno), ANCHORS (../shared/anchors)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${INFERNO_BIN:-target/release/inferno}
ANCHORS=${ANCHORS:-../shared/anchors}
MODELS=${MODELS:-smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b}
THREADS=${THREADS:-1 2}
ROUNDS=${ROUNDS:-2}
LLAMA_BIN=$(bash "$ANCHORS/llamacpp/build.sh" | tail -1)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for name in $MODELS; do
  model=$("$BIN" pull "$name" | tail -1)
  for t in $THREADS; do
    for r in $(seq 1 "$ROUNDS"); do
      "$BIN" bench engine --model "$model" --concurrency 1,8 --prompt-tokens 128 \
        --max-tokens 64 --threads "$t" --json 2>/dev/null |
        jq -c --arg m "$name" --argjson r "$r" \
          '{model:$m, round:$r, who:"inferno", threads, concurrency, pp:.prefill_tokens_per_s, tg:.decode_tokens_per_s, rss_mb:.peak_rss_mb}' | tee -a "$out"
      "$LLAMA_BIN/llama-bench" -m "$model" -p 128 -n 64 -t "$t" -r 3 -o jsonl 2>/dev/null |
        jq -c --arg m "$name" --argjson r "$r" \
          '{model:$m, round:$r, who:"llama-bench", threads:.n_threads, concurrency:1, kind:(if .n_prompt > 0 then "pp" else "tg" end), tps:.avg_ts}' | tee -a "$out"
      "$LLAMA_BIN/llama-batched-bench" -m "$model" -c 2048 -b 2048 -ub 512 -npp 128 -ntg 64 \
        -npl 1,8 -t "$t" --output-format jsonl 2>/dev/null | grep '^{' |
        jq -c --arg m "$name" --argjson r "$r" \
          '{model:$m, round:$r, who:"llama-batched", threads:.n_threads, concurrency:.pl, pp:.speed_pp, tg:.speed_tg}' | tee -a "$out"
    done
  done
done

echo
echo "medians over $ROUNDS rounds (tok/s); ratio = ours / llama.cpp"
jq -rs '
  def med: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def r2: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
  group_by([.model, .threads]) | .[] as $g |
  ($g[0].model) as $m | ($g[0].threads) as $t |
  ([$g[] | select(.who == "inferno" and .concurrency == 1) | .pp] | med) as $opp |
  ([$g[] | select(.who == "inferno" and .concurrency == 1) | .tg] | med) as $otg |
  ([$g[] | select(.who == "inferno" and .concurrency == 8) | .tg] | med) as $otg8 |
  ([$g[] | select(.who == "inferno") | .rss_mb] | max) as $rss |
  ([$g[] | select(.who == "llama-bench" and .kind == "pp") | .tps] | med) as $lpp |
  ([$g[] | select(.who == "llama-bench" and .kind == "tg") | .tps] | med) as $ltg |
  ([$g[] | select(.who == "llama-batched" and .concurrency == 8) | .tg] | med) as $ltg8 |
  "\($m) threads=\($t): prefill c1 \($opp|r2) vs \($lpp|r2) (\(if $lpp then ($opp/$lpp|r2) else "-" end)x), " +
  "decode c1 \($otg|r2) vs \($ltg|r2) (\(if $ltg then ($otg/$ltg|r2) else "-" end)x), " +
  "decode c8 aggregate \($otg8|r2) vs \($ltg8|r2) (\(if $ltg8 then ($otg8/$ltg8|r2) else "-" end)x), ours peak RSS \($rss|r2) MB"
' "$out"
