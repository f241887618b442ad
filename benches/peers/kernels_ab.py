#!/usr/bin/env python3
"""samp's GEMM kernels in two builds, taking turns: `samp kernels` of a baseline binary (another
commit's build) against this checkout's, per shape and kernel.

    python3 benches/peers/kernels_ab.py BASELINE_SAMP [--rounds 8] [--seconds 0.3]
                                        [--shape bert-base] [--precision int8] [--candidate BIN]

Each round runs `samp kernels --detected-only --no-peaks` once with each binary (the order flips
every round) and pairs the two rates of every (shape, kernel). On a shared VM whose speed drifts
by tens of percent within minutes only such pairs compare: the table gives each side's median
rate, the median of the paired ratios (candidate ÷ baseline) and in how many rounds the candidate
was faster. Kernels the code under test did not touch (oneDNN's, where it loads) are the control:
their ratios show the run's noise.

With `--bench ARGS...` (last), each turn is `samp bench ARGS` instead and the table compares its
texts/s: the same pairing end to end, e.g. `--bench --model DIR --plan P --input texts.txt
--batch 32 --tokens 128 --limit 64 --seconds 3`.

A baseline binary copied out of target/ finds oneDNN only where `onednn/lib` lies beside one of
its parent directories (or with SAMP_ONEDNN=path); without it its oneDNN rows are missing, and
with `--bench` it would run its layers without oneDNN against a candidate with it. So where
SAMP_ONEDNN is unset and this checkout has the library, both sides are given this checkout's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rates(binary: str, extra: list[str], precision: str) -> dict[tuple[str, str], float]:
    out = subprocess.run(
        [binary, "kernels", "--detected-only", "--no-peaks", *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return {
        (r["shape"], r["kernel"]): r["gops"]
        for r in report["rates"]
        if precision in ("all", r["precision"])
    }


def throughput(binary: str, bench: list[str]) -> dict[tuple[str, str], float]:
    out = subprocess.run(
        [binary, "bench", *bench], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return {(report["model"], "samp bench, texts/s"): report["texts_per_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline", help="the other build's samp binary")
    ap.add_argument("--candidate", default=str(ROOT / "target" / "release" / "samp"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.3, help="per kernel and shape")
    ap.add_argument("--shape", help="only shapes whose name contains this")
    ap.add_argument("--rows", type=int, help="rows of the activations (`samp kernels`: 1024)")
    ap.add_argument("--precision", default="int8", help="int8, float32, bfloat16 or all")
    ap.add_argument(
        "--bench", nargs=argparse.REMAINDER, help="time `samp bench` with these arguments instead"
    )
    args = ap.parse_args()
    lib = ROOT / "target" / "onednn" / "lib" / "libdnnl.so.3"
    if "SAMP_ONEDNN" not in os.environ and lib.exists():
        os.environ["SAMP_ONEDNN"] = str(lib)
        print(f"SAMP_ONEDNN={lib} for both sides", file=sys.stderr)
    extra = ["--seconds", str(args.seconds)]
    if args.shape:
        extra += ["--shape", args.shape]
    if args.rows:
        extra += ["--rows", str(args.rows)]
    sides = {"baseline": args.baseline, "candidate": args.candidate}
    seen: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(args.rounds):
        order = ["baseline", "candidate"] if r % 2 == 0 else ["candidate", "baseline"]
        got = {
            side: throughput(sides[side], args.bench)
            if args.bench
            else rates(sides[side], extra, args.precision)
            for side in order
        }
        for key in got["baseline"].keys() & got["candidate"].keys():
            for side in sides:
                seen[key][side].append(got[side][key])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    unit = "texts/s" if args.bench else "Gop/s"
    print(f"| shape | kernel | baseline {unit} | candidate {unit} | candidate ÷ baseline | faster |")
    print("|---|---|---:|---:|---:|---:|")
    for (shape, kernel), v in sorted(seen.items()):
        base, cand = v["baseline"], v["candidate"]
        ratios = [c / b for b, c in zip(base, cand)]
        print(
            f"| {shape} | {kernel} | {statistics.median(base):.1f} | "
            f"{statistics.median(cand):.1f} | {statistics.median(ratios):.3f}× | "
            f"{sum(x > 1 for x in ratios)}/{len(ratios)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
