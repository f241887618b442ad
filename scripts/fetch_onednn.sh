#!/usr/bin/env bash
# Fetch oneDNN (PyPI onednn-cpu-gomp 2023.2.0 = oneDNN 3.2, GNU OpenMP build) for samp's run-time
# loaded GEMM path (src/kernels/onednn.rs):
#
#   scripts/fetch_onednn.sh [DIR]     # default target/onednn; the library lands in DIR/lib
#
# samp finds DIR/lib/libdnnl.so.3 by itself when DIR is target/onednn (beside its binary's
# target/ folder); elsewhere point SAMP_ONEDNN at the file. The library needs libgomp.so.1 (gcc's
# OpenMP runtime; Debian: libgomp1). Without it samp runs on its own kernels. Safe to run again.
# The newer PyPI builds (2024+) need Intel's SYCL/TBB runtimes, hence this version.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/onednn}"
lib="$dir/lib/libdnnl.so.3"
if [ -f "$lib" ]; then
  echo "fetch_onednn: $lib present"
  exit 0
fi
mkdir -p "$dir/wheels" "$dir/lib"
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$dir/wheels" onednn-cpu-gomp==2023.2.0
python3 - "$dir/wheels" "$lib" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/onednn_cpu_gomp-2023.2.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/lib/libdnnl.so.3"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$lib.part" "$lib"
rm -rf "$dir/wheels"/onednn_cpu_gomp-*.whl
echo "fetch_onednn: $lib (oneDNN 3.2)"
