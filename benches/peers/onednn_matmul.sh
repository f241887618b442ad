#!/usr/bin/env bash
# oneDNN's matmul through its C API beside samp's kernels, at the model shapes, same host, same
# threads, taking turns (the library evaluation of issue #12; BENCHMARKS.md has the table).
#
#   benches/peers/onednn_matmul.sh [ROUNDS] [SECONDS]      # default 2 rounds of 0.5 s per rate
#
# Fetches oneDNN from PyPI (scripts/fetch_onednn.sh, plus the headers of onednn-devel-cpu-gomp)
# into target/onednn, builds
# benches/peers/onednn_matmul.c with gcc, and prints a markdown table: per shape and precision
# the best round of each. samp's INT8 rate includes quantizing the f32 input; oneDNN's s8 x s8
# does not (it is handed s8 activations), so the INT8 columns favour oneDNN.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-2}"
seconds="${2:-0.5}"
threads="${SAMP_BENCH_THREADS:-2}"
dir=target/onednn
scripts/fetch_onednn.sh "$dir"
if [ ! -f "$dir/include/oneapi/dnnl/dnnl.h" ]; then
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$dir/wheels" \
    onednn-devel-cpu-gomp==2023.2.0
  python3 -m zipfile -e "$dir"/wheels/onednn_devel_cpu_gomp-*.whl "$dir/x"
  mkdir -p "$dir/include"
  cp -a "$dir"/x/onednn_devel_cpu_gomp-*.data/data/include/. "$dir/include/"
fi
gcc -O2 -o "$dir/onednn_matmul" benches/peers/onednn_matmul.c -I"$dir/include" -L"$dir/lib" \
  -l:libdnnl.so.3 -Wl,-rpath,"$PWD/$dir/lib"
[ -x target/release/samp ] || cargo build --release
: > "$dir/onednn.jsonl"
: > "$dir/samp.jsonl"
for _ in $(seq "$rounds"); do
  OMP_NUM_THREADS="$threads" "$dir/onednn_matmul" 1024 "$seconds" >> "$dir/onednn.jsonl"
  target/release/samp kernels --detected-only --no-peaks --seconds "$seconds" \
    --threads "$threads" 2>/dev/null >> "$dir/samp.jsonl"
done
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
best = {}
for line in open(f"{d}/onednn.jsonl"):
    r = json.loads(line)
    key = (r["shape"], r["precision"], "onednn")
    best[key] = max(best.get(key, 0), r["gops"])
impl = {}
for line in open(f"{d}/onednn.jsonl"):
    r = json.loads(line)
    impl[r["precision"]] = r["impl"]
kern = {}
for doc in open(f"{d}/samp.jsonl"):
    j = json.loads(doc)
    for r in j["rates"]:
        if r["precision"] == "int8" and r.get("weight_bits") != 8:
            continue
        if "library" in r:  # samp's own kernels only (not its oneDNN path)
            continue
        key = (r["shape"], r["precision"], "samp")
        best[key] = max(best.get(key, 0), r["gops"])
        kern[r["precision"]] = r["kernel"]
shapes = sorted({k[0] for k in best}, key=lambda s: (s.split(".")[0] != "minilm", s))
print(f"oneDNN impl: " + ", ".join(f"{p} {i}" for p, i in impl.items())
      + "; samp: " + ", ".join(f"{p} {k}" for p, k in kern.items()))
print()
print("| shape | samp f32 | oneDNN f32 | ratio | samp bf16 | oneDNN bf16 | ratio | samp int8 (incl. quantize) | oneDNN s8 (no quantize) | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in shapes:
    row = [s]
    for p in ("float32", "bfloat16", "int8"):
        a, b = best.get((s, p, "samp"), 0), best.get((s, p, "onednn"), 0)
        row += [f"{a:.0f}", f"{b:.0f}", f"{a / b:.2f}×" if b else "-"]
    print("| " + " | ".join(row) + " |")
PY
