#!/usr/bin/env bash
# Offline checks of the deployment files (called by scripts/test.sh, so by CI):
#  1. yamllint over deploy/;
#  2. every Kubernetes manifest against the Kubernetes 1.37 schemas (kubernetes-validate, strict);
#  3. the Dockerfile's dependency stage outside docker: its stub sources satisfy Cargo.toml and
#     compile (cargo check, reusing the target dir of the lint step);
#  4. deploy/check_drift.py: env vars, flags, ports, config, ghz and dashboard against the binary.
# Needs the release binary (cargo build --release) and python3 with pip (PyPI).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ ! -x .venv-deploy/bin/python ]; then
  python3 -m venv .venv-deploy
fi
.venv-deploy/bin/pip install -q --disable-pip-version-check -r deploy/requirements-check.txt

echo "check_deploy: yamllint"
.venv-deploy/bin/yamllint -s -c deploy/.yamllint.yaml deploy/

echo "check_deploy: kubernetes-validate --strict"
manifests=$(ls deploy/kubernetes/*.yaml | grep -v kustomization.yaml)
.venv-deploy/bin/kubernetes-validate --strict --quiet $manifests
# Every manifest the kustomization lists exists and was validated above.
.venv-deploy/bin/python - <<'PY'
import yaml, pathlib, sys
k = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
missing = [r for r in k["resources"] if not (pathlib.Path("deploy/kubernetes") / r).is_file()]
sys.exit(f"kustomization lists missing files: {missing}" if missing else 0)
PY

echo "check_deploy: Dockerfile dependency stage (stub sources, cargo check)"
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
cp Cargo.toml Cargo.lock build.rs "$stub/"
cp -r proto "$stub/"
scripts/docker/stub_sources.sh "$stub"
(cd "$stub" && CARGO_TARGET_DIR="$root/target" cargo check --locked -q)

echo "check_deploy: drift between deploy/ and the binary"
.venv-deploy/bin/python deploy/check_drift.py target/release/samp
