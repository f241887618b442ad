#!/usr/bin/env python3
"""Float32 throughput of all-MiniLM-L6-v2 in samp vs PyTorch eager vs ONNX Runtime, side by side.

The same real sentences (VADER movie-review snippets, data/vader) go through every engine at
batch 1, 8 and 32, each with 2 intra-op threads; tokenization is included for every engine.
PyTorch and ONNX Runtime pad each batch to its longest text (what they need); samp packs the
batch without padding. Engines are interleaved per batch size, so machine noise hits them alike;
ratios are to PyTorch float32 from the same run. Fidelity: mean cosine of each engine's
embeddings to PyTorch's.

Usage: python benches/peers/compare.py [--texts 256] [--seconds 3] [--out FILE.md]
Needs: benches/peers/requirements.txt, scripts/fetch_models.sh, `cargo build --release`.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import AutoTokenizer, BertModel

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
THREADS = 2
MAX_LEN = 256


def sentences(n):
    raw = (ROOT / "data" / "vader" / "movieReviewSnippets_GroundTruth.txt").read_bytes().decode("utf-8", "replace")
    out = []
    for line in raw.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            out.append(parts[2].strip())
        if len(out) == n:
            break
    return out


def mean_pool(h, mask):
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(fn, batches, seconds):
    for b in batches:  # warm-up pass
        fn(b)
    n, start = 0, time.perf_counter()
    while True:
        for b in batches:
            fn(b)
            n += len(b)
        el = time.perf_counter() - start
        if el >= seconds:
            return n / el


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--samp-plans", type=Path,
                    help="a `samp quantize --model models/all-MiniLM-L6-v2 ... --out DIR` directory: adds samp rows "
                         "for its Fully-Quant (static, dynamic) and chosen plans")
    ap.add_argument("--int8-peers", action="store_true",
                    help="add PyTorch dynamic INT8 (quantize_dynamic) and ONNX Runtime dynamic INT8 (per-channel)")
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    texts = sentences(a.texts)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = BertModel.from_pretrained(MODEL).eval()

    # ONNX export of the same weights, graph-optimised at session creation.
    tmp = Path(tempfile.mkdtemp())
    onnx_path = tmp / "minilm.onnx"
    dummy = tok(["hello world"], return_tensors="pt")

    class Wrapped(torch.nn.Module):  # keyword arguments: BertModel's positional order varies by version
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    with torch.no_grad():
        # Export a separate instance: exporting can leave the module in another state.
        export_model = BertModel.from_pretrained(MODEL).eval()
        torch.onnx.export(Wrapped(export_model), (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
                          str(onnx_path), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "b", 1: "s"} for k in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]})
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    engines = {}
    if a.int8_peers:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        q_path = tmp / "minilm-int8.onnx"
        quantize_dynamic(str(onnx_path), str(q_path), per_channel=True, weight_type=QuantType.QInt8)
        sess_q = ort.InferenceSession(str(q_path), so, providers=["CPUExecutionProvider"])
        model_q = torch.ao.quantization.quantize_dynamic(BertModel.from_pretrained(MODEL).eval(),
                                                         {torch.nn.Linear}, dtype=torch.qint8)

    @torch.no_grad()
    def run_torch(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        h = model(**enc).last_hidden_state
        return mean_pool(h.numpy(), enc["attention_mask"].numpy())

    def run_ort(batch, session=None):
        enc = tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
        h = (session or sess).run(None, {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]})[0]
        return mean_pool(h, enc["attention_mask"])

    if a.int8_peers:
        @torch.no_grad()
        def run_torch_q(batch):
            enc = tok(batch, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            return mean_pool(model_q(**enc).last_hidden_state.numpy(), enc["attention_mask"].numpy())
        engines["PyTorch dynamic INT8"] = run_torch_q
        engines["ONNX Runtime INT8"] = lambda b: run_ort(b, sess_q)
    plans = {}
    if a.samp_plans:
        for name, f in [("samp Fully-Quant static", "samp-plan.fully-quant-static.json"),
                        ("samp Fully-Quant dynamic", "samp-plan.fully-quant-dynamic.json"),
                        ("samp SAMP plan", "samp-plan.json")]:
            if (a.samp_plans / f).is_file():
                plans[name] = a.samp_plans / f

    samp_bin = ROOT / "target" / "release" / "samp"
    if not samp_bin.exists():
        sys.exit("build samp first: cargo build --release")
    texts_file = tmp / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n")

    def run_samp_bench(batch, plan="float32"):
        model_dir = a.samp_plans if plan != "float32" else MODEL
        out = subprocess.run([str(samp_bin), "--threads", str(THREADS), "bench", "--model", str(model_dir),
                              "--plan", str(plan), "--input", str(texts_file), "--batch", str(batch),
                              "--seconds", str(a.seconds)],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def samp_embed(plan="float32"):
        model_dir = a.samp_plans if plan != "float32" else MODEL
        out = subprocess.run([str(samp_bin), "--threads", str(THREADS), "embed", "--model", str(model_dir),
                              "--plan", str(plan), "--input", str(jsonl)], check=True, capture_output=True,
                             text=True).stdout
        return np.array([json.loads(l)["embedding"] for l in out.splitlines()])

    # Fidelity to PyTorch on the same texts.
    ref = np.concatenate([run_torch(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    ort_emb = np.concatenate([run_ort(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    jsonl = tmp / "texts.jsonl"
    jsonl.write_text("".join(json.dumps(t) + "\n" for t in texts))
    samp_emb = samp_embed()
    cos = lambda x: float((x * ref).sum(1).mean())
    fidelity = {"pytorch": 1.0, "onnxruntime": cos(ort_emb), "samp": cos(samp_emb)}
    for name, fn in engines.items():
        fidelity[name] = cos(np.concatenate([fn(texts[i:i + 32]) for i in range(0, len(texts), 32)]))
    for name, plan in plans.items():
        fidelity[name] = cos(samp_embed(plan))

    rows = []
    for bs in [int(b) for b in a.batches.split(",")]:
        batches = [texts[i:i + bs] for i in range(0, len(texts), bs)]
        t_torch = timed(run_torch, batches, a.seconds)
        t_ort = timed(run_ort, batches, a.seconds)
        s = run_samp_bench(bs)
        extra = {name: timed(fn, batches, a.seconds) for name, fn in engines.items()}
        extra.update({name: run_samp_bench(bs, plan)["texts_per_s"] for name, plan in plans.items()})
        rows.append({"batch": bs, "pytorch": t_torch, "onnxruntime": t_ort, "samp": s["texts_per_s"],
                     "mean_tokens": s["mean_tokens"], "extra": extra})
        print(f"batch {bs:>2}: pytorch {t_torch:7.1f}  onnxruntime {t_ort:7.1f}  samp {s['texts_per_s']:7.1f} texts/s",
              flush=True)

    lines = [
        "| batch | PyTorch f32 (texts/s) | ONNX Runtime f32 | samp f32 | samp / PyTorch | samp / ORT |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['pytorch']:.0f} | {r['onnxruntime']:.0f} | {r['samp']:.0f} | "
                     f"{r['samp'] / r['pytorch']:.2f}x | {r['samp'] / r['onnxruntime']:.2f}x |")
    lines.append("")
    lines.append(f"Mean cosine to PyTorch f32 embeddings: ONNX Runtime {fidelity['onnxruntime']:.6f}, "
                 f"samp {fidelity['samp']:.6f}. {len(texts)} movie-review sentences, "
                 f"{rows[0]['mean_tokens']:.1f} tokens on average (special tokens included).")
    lines.append("")
    lines.append(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                 f"{THREADS} threads per engine. torch {torch.__version__}, transformers {transformers.__version__}, "
                 f"onnxruntime {ort.__version__}, Python {platform.python_version()}.")
    if engines or plans:
        names = list(engines) + list(plans)
        lines.append("")
        lines.append("| batch | " + " | ".join(f"{n} (texts/s, × PyTorch f32)" for n in names) + " |")
        lines.append("|---:|" + "---:|" * len(names))
        for r in rows:
            lines.append(f"| {r['batch']} | " + " | ".join(
                f"{r['extra'][n]:.0f} ({r['extra'][n] / r['pytorch']:.2f}x)" for n in names) + " |")
        lines.append("")
        lines.append("Mean cosine to PyTorch f32 embeddings: " + ", ".join(f"{n} {fidelity[n]:.4f}" for n in names) + ".")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
