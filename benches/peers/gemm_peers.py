#!/usr/bin/env python3
"""GEMM table at the model shapes: samp per precision (`samp kernels`) against the peers'
kernels in the same run, same thread count, same shapes (1024 rows x MiniLM / BERT-base GEMMs):

- float32: PyTorch (MKL, `F.linear`), ONNX Runtime (MLAS, a one-MatMul graph);
- bfloat16: PyTorch (oneDNN, `F.linear` on bf16 tensors);
- int8 including quantizing the input: PyTorch dynamic INT8 (`quantize_dynamic` on one
  nn.Linear, FBGEMM/oneDNN), ONNX Runtime dynamic INT8 (`quantize_dynamic` per-channel on the
  MatMul graph: DynamicQuantizeLinear + MatMulInteger, AMX/VNNI in MLAS where the CPU has it).

Each rate is the best of repeated calls over --seconds; peers and samp take turns per shape
(--rounds), and the best round counts, since the shared machine's noise only slows things down.
Writes a markdown table (stdout, or --out) with the % of the probed peak of each precision's
best instruction on this host (AMX's tdpbusd / tdpbf16ps where it has them, else VNNI / BF16 /
FMA vectors).

    benches/peers/gemm_peers.py --samp target/release/samp [--seconds 0.5] [--out FILE]

Needs torch and onnxruntime (benches/peers/requirements.txt).
"""
import argparse, json, os, subprocess, sys, tempfile, time

THREADS = int(os.environ.get("SAMP_BENCH_THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import onnxruntime as ort  # noqa: E402

SHAPES = [
    ("minilm.qkv", 384, 1152), ("minilm.attn_out", 384, 384),
    ("minilm.ffn_up", 384, 1536), ("minilm.ffn_down", 1536, 384),
    ("bert-base.qkv", 768, 2304), ("bert-base.attn_out", 768, 768),
    ("bert-base.ffn_up", 768, 3072), ("bert-base.ffn_down", 3072, 768),
]


def rate(ops, seconds, fn):
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return ops / best / 1e9


def onnx_matmul(path, k, n, w):
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    init = numpy_helper.from_array(w.T.copy(), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [init])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


WIDENED = "bf16-on-onednn-f32"


def used_by_samp(row, rates):
    """Whether a layer of this precision would run on the kernel of this `samp kernels` rate
    (kernels/onednn.rs `prefer`): float32 on oneDNN wherever it loaded, INT8 on the faster of
    samp's kernel and oneDNN (a race), bf16 on samp's kernel unless SAMP_ONEDNN=always, or on
    oneDNN's f32 matmul over the rounded values where the host has no bf16 instruction."""
    onednn = row["kernel"].startswith("onednn")
    if row["precision"] == "float32":
        loaded = any(r["kernel"].startswith("onednn") and r["precision"] == "float32" for r in rates)
        return onednn or not loaded
    if row["precision"] == "bfloat16":
        # Without a bf16 instruction the layers run bf16 on oneDNN's f32 matmul (bf16/widened.rs).
        if any(r["kernel"] == WIDENED and r["shape"] == row["shape"] for r in rates):
            return row["kernel"] == WIDENED
        return onednn == (os.environ.get("SAMP_ONEDNN") == "always")
    return True


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def peers(m, k, n, seconds, tmp):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k), dtype=np.float32) * 0.05).astype(np.float32)
    ops = 2.0 * m * k * n
    out = {}
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    with torch.inference_mode():
        out["torch f32"] = rate(ops, seconds, lambda: torch.nn.functional.linear(tx, tw))
        bx, bw = tx.bfloat16(), tw.bfloat16()
        out["torch bf16"] = rate(ops, seconds, lambda: torch.nn.functional.linear(bx, bw))
        lin = torch.nn.Linear(k, n, bias=False)
        lin.weight.data.copy_(tw)
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        out["torch int8"] = rate(ops, seconds, lambda: q(tx))
    f = os.path.join(tmp, f"mm_{k}_{n}.onnx")
    fq = os.path.join(tmp, f"mm_{k}_{n}.int8.onnx")
    onnx_matmul(f, k, n, w)
    quantize_dynamic(f, fq, per_channel=True, weight_type=QuantType.QInt8)
    s, sq = session(f), session(fq)
    out["ort f32"] = rate(ops, seconds, lambda: s.run(None, {"x": x}))
    out["ort int8"] = rate(ops, seconds, lambda: sq.run(None, {"x": x}))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samp", default="target/release/samp")
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    best_peer, best_samp, peaks, kernels = {}, {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}: samp kernels", file=sys.stderr)
            env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
            res = json.loads(subprocess.run(
                [a.samp, "kernels", "--detected-only", "--rows", str(a.rows), "--seconds", str(a.seconds)],
                check=True, capture_output=True, text=True, env=env).stdout)
            for p, v in res["peaks_gops"].items():
                peaks[p] = max(peaks.get(p, 0), v)
            kernels = res["kernels"]
            for row in res["rates"]:
                if not used_by_samp(row, res["rates"]):
                    continue
                key = (row["shape"], row["precision"] + (f" {row['weight_bits']}-bit" if "weight_bits" in row else ""))
                best_samp[key] = max(best_samp.get(key, 0), row["gops"])
            for name, k, n in SHAPES:
                print(f"round {r + 1}/{a.rounds}: peers {name}", file=sys.stderr)
                for p, v in peers(a.rows, k, n, a.seconds, tmp).items():
                    best_peer[(name, p)] = max(best_peer.get((name, p), 0), v)
    cpu = subprocess.run("grep -m1 'model name' /proc/cpuinfo", shell=True, capture_output=True, text=True).stdout.split(":")[-1].strip()
    flags = subprocess.run("grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|amx_int8|amx_bf16' /proc/cpuinfo | sort -u | tr '\\n' ' '",
                           shell=True, capture_output=True, text=True).stdout.strip()
    # Each precision's peak is its best instruction on this host (AMX's tile products where the
    # host has them), whichever kernel samp runs.
    def best_probe(*names):
        return next(((p, peaks[p]) for p in names if peaks.get(p)), ("none", 0))
    fma_name, fma = best_probe("vfmadd231ps-zmm", "vfmadd231ps-ymm")
    int8_name, vnni = best_probe("tdpbusd", "vpdpbusd-zmm", "vpdpbusd-ymm", "vpmaddubsw-ymm")
    # Without a bf16 instruction samp widens bf16 to f32 and multiplies with FMA: that is the
    # peak of its bf16 kernel there.
    bf16_name, bpeak = best_probe("tdpbf16ps", "vdpbf16ps-zmm", "vfmadd231ps-zmm", "vfmadd231ps-ymm")
    # The width new plans get here (quant/plan.rs `preferred_weight_bits`): 8 where the 8-bit
    # weights run on the 7-bit ones' kernel (VNNI, AMX), else 7.
    detected = {k.get("weight_bits"): k["kernel"] for k in kernels
                if k["precision"] == "int8" and k.get("detected")}
    plan_bits = 8 if detected.get(8) == detected.get(7) else 7
    lines = [
        f"CPU: {cpu}; ISA flags: {flags}; {THREADS} threads; {a.rows} rows; torch {torch.__version__}, onnxruntime {ort.__version__}",
        "",
        "Probed peaks (Gop/s, all threads): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())),
        "",
        f"% of peak: float32 of {fma_name}, bfloat16 of {bf16_name}, int8 of {int8_name}.",
        "",
        "Kernels samp uses here (f32 runs on oneDNN where the library loaded, INT8 on the faster of the two per shape): " + ", ".join(f"{k['precision']}{' ' + str(k['weight_bits']) + '-bit' if 'weight_bits' in k else ''}: {k['kernel']}" for k in kernels),
        "",
        f"INT8 ratio and % of peak: samp's {plan_bits}-bit weights, the width `samp quantize` gives plans on this host"
        + (" (no VNNI: 8-bit weights run on a slower exact kernel here)." if plan_bits == 7 else "."),
        "",
        f"| shape (k→n) | samp f32 | torch f32 (MKL) | ORT f32 | samp/best f32 | % f32 peak | samp bf16 | torch bf16 (oneDNN) | samp/torch bf16 | % bf16 peak | samp int8 8-bit | samp int8 7-bit | torch int8 | ORT int8 | samp {plan_bits}-bit/best int8 | % int8 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, k, n in SHAPES:
        sf = best_samp.get((name, "float32"), 0)
        s8 = best_samp.get((name, "int8 8-bit"), 0)
        s7 = best_samp.get((name, "int8 7-bit"), 0)
        sp = s8 if plan_bits == 8 else s7
        tf, of = best_peer[(name, "torch f32")], best_peer[(name, "ort f32")]
        ti, oi = best_peer[(name, "torch int8")], best_peer[(name, "ort int8")]
        tb = best_peer[(name, "torch bf16")]
        sb = best_samp.get((name, "bfloat16"), 0)
        lines.append(
            f"| {name} ({k}→{n}) | {sf:.0f} | {tf:.0f} | {of:.0f} | {sf / max(tf, of):.2f}× | {100 * sf / fma if fma else 0:.0f}% "
            f"| {sb:.0f} | {tb:.0f} | {sb / tb:.2f}× | {100 * sb / bpeak if bpeak else 0:.0f}% | {s8:.0f} | {s7:.0f} | {ti:.0f} | {oi:.0f} | {sp / max(ti, oi):.2f}× | {100 * sp / vnni if vnni else 0:.0f}% |")
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
