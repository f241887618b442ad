#!/usr/bin/env bash
# Two builds of samp, stage by stage: `samp bench --profile` (encoder layer 0 on the first batch
# of 32 texts) alternating BASE and NEW for ROUNDS rounds; prints the best (min) and median ms of
# the FFN stages and the whole layer for each. The host is shared and noisy: read the minima.
#
#   benches/peers/stage_ab.sh BASE_BIN NEW_BIN MODEL_DIR PLAN [ROUNDS] [TEXTS_JSONL]
#
# Put both binaries under target/ (e.g. target/ab/) so that they find oneDNN in target/onednn
# as the checkout's own binary does; SAMP_ONEDNN in the environment applies to both.
set -euo pipefail
base=$1 new=$2 model=$3 plan=$4 rounds=${5:-10}
texts=${6:-$(mktemp)}
if [ -z "${6:-}" ]; then
  head -256 "$(dirname "$0")/../../data/eval/sentiment-eval.jsonl" > "$texts"
fi
for r in $(seq "$rounds"); do
  for side in base new; do
    bin=$base; [ "$side" = new ] && bin=$new
    echo -n "$side "
    "$bin" bench --model "$model" --plan "$plan" --input "$texts" --seconds 0.3 --profile 2>/dev/null |
      python3 -c '
import json, sys
d = json.load(sys.stdin)["layer_profile"]
s = {x["stage"]: x["ms"] for x in d["stages"]}
up, down = s["ffn-up gemm + gelu"], s["ffn-down gemm + residual"]
print(up, down, up + down, d["total_ms"])'
  done
done | python3 -c '
import collections, sys
runs = collections.defaultdict(list)
for line in sys.stdin:
    side, *v = line.split()
    runs[side].append([float(x) for x in v])
best = {}
for side in ("base", "new"):
    cols = list(zip(*runs[side]))
    best[side] = [min(c) for c in cols]
    med = [sorted(c)[len(c) // 2] for c in cols]
    print(f"{side}: best ffn-up {best[side][0]:.3f} ffn-down {best[side][1]:.3f} up+down {best[side][2]:.3f} "
          f"layer {best[side][3]:.3f} ms | median up+down {med[2]:.3f} layer {med[3]:.3f}")
r = [n / b for n, b in zip(best["new"], best["base"])]
print(f"new / base (best): ffn-up {r[0]:.2f}x ffn-down {r[1]:.2f}x up+down {r[2]:.2f}x layer {r[3]:.2f}x")
'
