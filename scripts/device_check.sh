#!/usr/bin/env bash
# The GPU backend's device check (issue #7), in two halves:
#   scripts/device_check.sh prepare   on the build machine: strips the release binary, the lib
#                                     test binary and the gemm bench into .device/ with the
#                                     tokenizer files and 512 real sentences (~20 MB)
#   scripts/device_check.sh [ARGS]    on the GPU machine (device tool: carry [".device"]); ARGS go
#                                     to scripts/device_check.py. Writes under $OUT. ~5 minutes.
# A CPU dry run of the second half: scripts/device_check.sh --device cpu --layers 2 --seconds 0.5
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  cargo build --release --locked
  artifacts() { python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in sys.argv[1:]:
        print(m["executable"])' "$@"; }
  lib=$(cargo test --release --locked --lib --no-run --message-format=json 2>/dev/null | artifacts samp | tail -1)
  gemm=$(cargo bench --locked --bench gemm --no-run --message-format=json 2>/dev/null | artifacts gemm | tail -1)
  rm -rf .device && mkdir -p .device/tokenizer
  strip -o .device/samp target/release/samp
  strip -o .device/samp-lib-tests "$lib"
  strip -o .device/gemm-bench "$gemm"
  cp models/all-MiniLM-L6-v2/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .device/tokenizer/
  cut -f3 data/vader/movieReviewSnippets_GroundTruth.txt | grep -v '^$' | head -512 > .device/texts.txt
  du -sh .device
  exit 0
fi
[ -x .device/samp ] || { echo "no .device/samp: run 'scripts/device_check.sh prepare' on the build machine and carry .device" >&2; exit 2; }
OUT=${OUT:-/tmp/samp-device-check/out}
export OUT
mkdir -p "$OUT"
# The host CPU's INT8 kernels (issue #3: VNNI paths never ran on the build machine): each kernel
# the CPU supports against the portable one, then their GEMM throughput.
{
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo)"
  echo "VNNI flags: $(grep -o -E 'avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  timeout 120 .device/samp-lib-tests kernels::int8 2>&1 | tail -20
  timeout 180 .device/gemm-bench --bench int8_vs_f32 --warm-up-time 1 --measurement-time 2 2>&1 | grep -A1 -E "^gemm_int8_vs_f32/" | grep -v -- "^--" | head -40
} > "$OUT/cpu_int8_kernels.txt" 2>&1 || true
python3 scripts/device_check.py "$@"
