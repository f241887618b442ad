#!/usr/bin/env bash
# The SAMP plans `samp serve` serves by default (plans/<model>/), made by `samp quantize` on the
# calibration and evaluation splits of scripts/fetch_models.sh, with the requirements below.
# INT8 only (--mode int8) with 7-bit weights, so that each plan runs at full speed and gives the
# same results on every CPU tier (AVX2, AVX-512 VNNI, AMX). ~2.5 minutes on 2 cores (AMX host).
# scripts/fetch_models.sh copies plans/<model>/{samp-plan.json,report.json} into models/<model>/.
# Usage: scripts/make_plans.sh (needs scripts/fetch_models.sh first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${SAMP_BIN:-target/release/samp}"
[ -x "$bin" ] || cargo build --release --locked
work=target/make-plans
rm -rf "$work"
mkdir -p "$work"
# data-split model-directory requirement
for r in "sentiment minilm-sentiment --max-drop 0.01" \
         "ner rampart-pii --max-drop 0.03" \
         "lee all-MiniLM-L6-v2 --max-drop 0.01"; do
  set -- $r
  split=$1 dir=$2; shift 2
  echo "== $dir: samp quantize $* ==" >&2
  "$bin" quantize --model "models/$dir" \
    --calib "data/eval/$split-calib.jsonl" --eval "data/eval/$split-eval.jsonl" \
    "$@" --mode int8 --weight-bits 7 --out "$work/$dir" > /dev/null
  mkdir -p "plans/$dir"
  cp "$work/$dir/samp-plan.json" "$work/$dir/report.json" "$work/$dir/report.md" "plans/$dir/"
done
echo "plans written to plans/; commit them with the host's CPU tier in plans/README.md" >&2
