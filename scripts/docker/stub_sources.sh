#!/bin/sh
# Empty sources for every target of Cargo.toml, so that the Dockerfile's dependency stage can
# build (and cache) all dependencies before the real sources are copied in. CI runs it too
# (scripts/docker/check.sh), so the stage cannot silently break when a target is added.
# Usage: scripts/docker/stub_sources.sh DIR   (DIR holds Cargo.toml)
set -eu
dir="${1:-.}"
mkdir -p "$dir/src" "$dir/benches"
echo "// stub for the dependency stage" > "$dir/src/lib.rs"
echo "fn main() {}" > "$dir/src/main.rs"
# Every [[bench]] (harness = false) needs a file with a main.
for b in $(sed -n '/^\[\[bench\]\]/,/^$/s/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml"); do
  echo "fn main() {}" > "$dir/benches/$b.rs"
done
