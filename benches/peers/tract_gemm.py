#!/usr/bin/env python3
"""tract-linalg's matmul kernels against samp's at the model shapes (1024 rows x MiniLM /
BERT-base GEMMs), same run, same threads: the library evaluation #12 asks for beside oneDNN's.

Builds benches/peers/tract (a program of its own; tract-linalg pinned in its Cargo.lock) into
target/tract-gemm, then takes turns per round between `samp kernels` and it; the best round
counts. Per precision, samp's rate is the kernel a layer runs here (as gemm_peers.py counts it:
f32 on oneDNN where the library loaded, INT8 the faster of samp's and oneDNN's, bf16 samp's own)
and tract's the fastest of every kernel of that precision it runs on this host (its own choice,
`MmmDispatch::preferred_kernel`, named beside it). tract's f32 kernels and its AMX-BF16 kernel
(f32 inputs rounded to bf16 as it packs them) take f32 activations; its INT8 kernels take i8,
quantized per row in the timed call (a plain loop in the bench program; the column "kernel
alone" quantizes once, outside the timing). tract's INT8 rate stops at the i32 sums (no
dequantization); samp's includes it.

    benches/peers/tract_gemm.py --samp target/release/samp [--tier native|avx512vnni|avx2]
        [--rounds 2] [--seconds 0.5] [--out FILE]

--tier stands in for a lower ISA tier on a richer host: the same core, only that tier's
instructions. tract drops the rest through TRACT_CPU_ISA, oneDNN through ONEDNN_MAX_CPU_ISA, and
samp's rate is the kernel it detects on that tier (`samp kernels` times every kernel it has):
`avx512vnni` is a Zen 4/5-like host (AVX-512 VNNI and BF16, no AMX), `avx2` an AVX2-only EPYC.

No Python packages needed beyond the standard library; cargo and a C compiler build tract.
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACT_DIR = os.path.join(ROOT, "benches", "peers", "tract")
TARGET = os.path.join(ROOT, "target", "tract-gemm")
THREADS = os.environ.get("SAMP_BENCH_THREADS", "2")


# Per tier: what tract and oneDNN are told to leave out, and samp's own kernel per precision there
# (kernels/mod.rs detection; None: samp's own kernel is whatever `samp kernels` detects here).
TIERS = {
    "native": (None, None, None),
    "avx512vnni": ("-amx-int8,-amx-bf16", "AVX512_CORE_BF16",
                   {"float32": "f32-avx512-12x32", "bfloat16": "bf16-avx512bf16-8x48",
                    "int8": "int8-avx512vnni-8x48"}),
    "avx2": ("-avx512f,-avx512vnni,-avx512fp16,-avxvnni,-amx-int8,-amx-bf16", "AVX2",
             {"float32": "f32-avx2-6x16", "int8": "int8-avx2-wide-6x16"}),
}


def on_tier(row, own):
    """Whether this `samp kernels` rate belongs to the tier: oneDNN's (capped by its variable) or
    samp's own kernel there."""
    if own is None or row["kernel"].startswith("onednn"):
        return True
    return own.get(row["precision"]) == row["kernel"]


def used_by_samp(row, rates):
    """Whether a layer of this precision runs on this `samp kernels` rate's kernel (kernels/onednn.rs
    `prefer`; the same rule as gemm_peers.py)."""
    onednn = row["kernel"].startswith("onednn")
    if row["precision"] == "float32":
        loaded = any(r["kernel"].startswith("onednn") and r["precision"] == "float32" for r in rates)
        return onednn or not loaded
    if row["precision"] == "bfloat16":
        return onednn == (os.environ.get("SAMP_ONEDNN") == "always")
    return row.get("weight_bits") == 8


def tract_precision(row):
    if row["input"].startswith("i8"):
        return "int8" if row["input"] == "i8" else "int8-kernel"
    return "bfloat16" if "Bf16" in row["packing"] else "float32"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samp", default="target/release/samp")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--tier", choices=list(TIERS), default="native")
    ap.add_argument("--out")
    a = ap.parse_args()
    tract_isa, onednn_isa, own = TIERS[a.tier]
    env = dict(os.environ)
    if tract_isa:
        env["TRACT_CPU_ISA"], env["ONEDNN_MAX_CPU_ISA"] = tract_isa, onednn_isa
    print("building benches/peers/tract (tract-linalg)", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", TARGET],
                   cwd=TRACT_DIR, check=True)
    tract_bin = os.path.join(TARGET, "release", "tract-gemm")
    samp, tract, tract_kernel, tract_own = {}, {}, {}, {}
    samp_kernel, peaks, shapes = {}, {}, {}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}: samp kernels", file=sys.stderr)
        res = json.loads(subprocess.run(
            [a.samp, "kernels", "--rows", str(a.rows), "--seconds", str(a.seconds)]
            + (["--detected-only"] if own is None else []),
            check=True, capture_output=True, text=True, env=env).stdout)
        res["rates"] = [row for row in res["rates"] if on_tier(row, own)]
        for name, gops in res.get("peaks_gops", {}).items():
            peaks[name] = max(peaks.get(name, 0), gops)
        for row in res["rates"]:
            if not used_by_samp(row, res["rates"]):
                continue
            shapes.setdefault(row["shape"], (row["k"], row["n"]))
            key = (row["shape"], row["precision"])
            if row["gops"] > samp.get(key, 0):
                samp[key], samp_kernel[key] = row["gops"], row["kernel"]
        print(f"round {r + 1}/{a.rounds}: tract-linalg", file=sys.stderr)
        out = subprocess.run([tract_bin, "--rows", str(a.rows), "--seconds", str(a.seconds),
                              "--threads", THREADS], check=True, capture_output=True, text=True,
                             env=env).stdout
        for line in out.splitlines():
            row = json.loads(line)
            key = (row["shape"], tract_precision(row))
            if row["gops"] > tract.get(key, 0):
                tract[key], tract_kernel[key] = row["gops"], row["kernel"]
            if row["preferred"] and tract_precision(row) != "bfloat16":
                tract_own[key] = row["kernel"]
    cpu = subprocess.run("grep -m1 'model name' /proc/cpuinfo", shell=True, capture_output=True, text=True).stdout.split(":")[-1].strip()
    flags = subprocess.run("grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|amx_int8|amx_bf16' /proc/cpuinfo | sort -u | tr '\\n' ' '",
                           shell=True, capture_output=True, text=True).stdout.strip()
    lines = [
        f"CPU: {cpu}; ISA flags: {flags}; tier {a.tier}"
        + (f" (TRACT_CPU_ISA={tract_isa}, ONEDNN_MAX_CPU_ISA={onednn_isa})" if tract_isa else "")
        + f"; {THREADS} threads; {a.rows} rows; tract-linalg 0.23.9; best of {a.rounds} rounds",
        "",
        "samp's kernels: " + ", ".join(sorted({f"{p} {k}" for (_, p), k in samp_kernel.items()})),
        "",
        "Probed peaks (Gop/s, all threads): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())),
        "",
        "| shape (k→n) | samp f32 | tract f32 (kernel) | samp/tract f32 | samp bf16 | tract bf16 | samp/tract bf16 | samp int8 | tract int8 (kernel) | samp/tract int8 | tract int8 kernel alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, (k, n) in shapes.items():
        cells = []
        for prec in ("float32", "bfloat16", "int8"):
            s, t = samp.get((shape, prec), 0), tract.get((shape, prec), 0)
            kern = tract_kernel.get((shape, prec), "—")
            own = tract_own.get((shape, prec))
            label = f"{t:.0f}" + (f" ({kern}{'' if own in (None, kern) else '; its choice ' + own})"
                                  if prec != "bfloat16" else "") if t else "—"
            cells += [f"{s:.0f}" if s else "—", label, f"{s / t:.2f}×" if s and t else "—"]
        cells.append(f"{tract.get((shape, 'int8-kernel'), 0):.0f}")
        lines.append(f"| {shape} ({k}→{n}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
