#!/usr/bin/env bash
# Fuzz every target for a bounded time each (default 60 s): request decoding and validation,
# the tokenizer path, the plan / config.json / samp.toml parsers, and INT8 artifact loading.
#
# Stable Rust, cargo-fuzz with `--sanitizer none`: no nightly toolchain can be installed here,
# AddressSanitizer needs the nightly-only -Zsanitizer, and the fuzzed code is safe Rust (its
# faults are panics, overflows and out-of-bounds slices, which libFuzzer catches as crashes
# without a sanitizer; overflow checks are on in cargo-fuzz's build). The coverage
# instrumentation libFuzzer needs works on stable.
#
# Seeds: fuzz/corpus/<target> (committed, never modified here); new inputs go to a scratch copy.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails this script.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request tokenize plan_config artifact)
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none -O
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  echo "== fuzz $t for ${secs}s"
  log="$work.log"
  set +e
  cargo fuzz run -s none -O "$t" "$work" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|DONE|ERROR|panicked|SUMMARY|Test unit written' "$log" || true
  [ "$rc" -eq 0 ] || tail -40 "$log"
  rm -f "$log"
  rm -rf "$work"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz target $t failed (exit $rc); the input is in fuzz/artifacts/$t/" >&2
    exit "$rc"
  fi
done
