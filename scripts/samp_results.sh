#!/usr/bin/env bash
# SAMP on the three real models: `samp quantize` on the calibration + evaluation splits, then
# every plan (float32, Quant-FFN-Only, Fully-Quant, the chosen SAMP plan) scored on the held-out
# test split with `samp eval` and timed with `samp bench` (batch 32, same run). Prints a Markdown
# table (the one in README.md). Needs scripts/fetch_models.sh first. ~25 minutes on 2 cores.
# Usage: scripts/samp_results.sh [OUT_DIR] (default target/samp-results); SKIP_QUANTIZE=1 reuses
# the quantized models already in OUT_DIR and only re-scores and re-times them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-target/samp-results}"
bin="${SAMP_BIN:-target/release/samp}"
[ -x "$bin" ] || cargo build --release --locked
[ "${SKIP_QUANTIZE:-0}" = 1 ] || rm -rf "$out"
mkdir -p "$out"

# name model requirement-flags
runs=(
  "sentiment models/minilm-sentiment --max-drop 0.01"
  "ner models/rampart-pii --max-drop 0.03"
  "lee models/all-MiniLM-L6-v2 --max-drop 0.01"
)
table="$out/table.md"
echo "| model | metric (test split) | plan | layers | score | drop | texts/s | × float32 |" > "$table"
echo "|---|---|---|---|---:|---:|---:|---:|" >> "$table"
for r in "${runs[@]}"; do
  set -- $r
  name=$1 model=$2; shift 2
  q="$out/$name"
  if [ "${SKIP_QUANTIZE:-0}" = 1 ] && [ -f "$q/samp-plan.json" ]; then
    echo "== $name: reusing $q ==" >&2
  else
    echo "== $name: samp quantize $* ==" >&2
    rm -rf "$q"
    "$bin" quantize --model "$model" --calib "data/eval/$name-calib.jsonl" --eval "data/eval/$name-eval.jsonl" \
      "$@" --out "$q" > "$out/$name-quantize.json"
  fi
  float_score=""; float_tps=""
  for plan in float32 ffn-only fully-quant-static fully-quant-dynamic samp; do
    case $plan in
      float32) p=float32 ;;
      samp) p="$q/samp-plan.json" ;;
      *) p="$q/samp-plan.$plan.json" ;;
    esac
    ev=$("$bin" eval --model "$q" --plan "$p" --data "data/eval/$name-test.jsonl")
    # Throughput on the calibration texts (short sentences or documents, as the model sees them).
    be=$("$bin" bench --model "$q" --plan "$p" --input "data/eval/$name-calib.jsonl" --batch 32 --limit 256 --seconds 4)
    python3 - "$ev" "$be" "$name" "$plan" "$float_score" "$float_tps" >> "$table" <<'PY'
import json, sys
ev, be = json.loads(sys.argv[1]), json.loads(sys.argv[2])
name, plan, fs, ft = sys.argv[3:7]
score, tps = ev["value"], be["texts_per_s"]
fs = float(fs) if fs else score
ft = float(ft) if ft else tps
print(f"| {name} | {ev['metric']} | {plan} | {ev['layers']} | {score:.4f} | {fs - score:+.4f} | {tps:.0f} | {tps / ft:.2f} |")
PY
    if [ $plan = float32 ]; then
      float_score=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["value"])' "$ev")
      float_tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["texts_per_s"])' "$be")
    fi
  done
done
cat "$table"
