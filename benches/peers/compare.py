#!/usr/bin/env python3
"""One command for BENCHMARKS.md: samp against PyTorch and ONNX Runtime, in-process and served.

    python benches/peers/compare.py            # ~20 min on 2 cores; writes BENCHMARKS.md
                                               # (--no-gemm: without the GEMM kernel table)

Needs the README's set-up (scripts/fetch_models.sh, `cargo build --release`) and
`pip install -r benches/peers/requirements.txt`. Every figure in the file comes from one run.

Models: all-MiniLM-L6-v2 (embeddings), the MiniLM sentiment classifier, and a random
BERT-base-shaped encoder (12 x 768, 3072 FFN, seed 0; generated here, never committed).
Engines, 2 intra-op threads each: PyTorch float32 eager, PyTorch dynamic INT8
(torch.ao quantize_dynamic), ONNX Runtime float32 and dynamic INT8 (per-channel), both
graph-optimised; samp float32, Quant-FFN-Only, Fully-Quant (dynamic activations) and the SAMP
plan `samp quantize` picks for a stated requirement (run here); samp served over gRPC
(`samp serve` + `samp loadgen` on the same machine). Batches of 1, 8, 32, natural lengths
(tokenization included; the peers pad each batch to its longest text, samp packs without
padding) and fixed 128-token sequences (encoder only, the same ids for every engine). Engines
take turns within a cell (2 rounds, the best counts); ratios are to PyTorch float32 of the same
cell.
Quality next to speed: accuracy (sentiment, test split) or mean cosine of the pooled
embeddings to PyTorch float32 (embedding models), on the natural-length texts.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

warnings.filterwarnings("ignore")  # deprecation chatter of torch.ao / the TorchScript exporter
transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parents[2]
SAMP = ROOT / "target" / "release" / "samp"
THREADS = 2
FIXED = 128


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return r.stdout


def samp(*args):
    return sh([str(SAMP), "--threads", str(THREADS), *map(str, args)])


def movie_sentences(n):
    raw = (ROOT / "data" / "vader" / "movieReviewSnippets_GroundTruth.txt").read_bytes().decode("utf-8", "replace")
    out = [p[2].strip() for p in (l.split("\t", 2) for l in raw.splitlines()) if len(p) == 3 and p[2].strip()]
    return out[:n]


def timed(fn, batches, seconds):
    """texts/s: one warm-up batch, then batches in turn until `seconds` have passed."""
    fn(batches[0])
    n, i, start = 0, 0, time.perf_counter()
    while True:
        b = batches[i % len(batches)]
        fn(b)
        n, i = n + len(b), i + 1
        el = time.perf_counter() - start
        if el >= seconds:
            return n / el


def fixed_ids(tok, texts):
    """Each text's own tokens repeated to exactly FIXED, between its first and last special
    token: the construction `samp bench --tokens` uses."""
    out = []
    for t in texts:
        ids = tok(t, truncation=True, max_length=FIXED)["input_ids"]
        mid = ids[1:-1] or ids[:1]
        body = (mid * (FIXED // len(mid) + 1))[:FIXED - 2]
        out.append([ids[0], *body, ids[-1]])
    return np.array(out, dtype=np.int64)


class Wrapped(torch.nn.Module):
    """Keyword arguments (positional order varies by version); hidden states or logits."""

    def __init__(self, m, task):
        super().__init__()
        self.m, self.task = m, task

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.logits if self.task == "classify" else out.last_hidden_state


def load_torch(d, task):
    cls = AutoModelForSequenceClassification if task == "classify" else AutoModel
    return Wrapped(cls.from_pretrained(d).eval(), task).eval()


def peers(spec, tmp):
    """name -> callable(ids, mask, types) returning a numpy array."""
    d, task = spec["dir"], spec["task"]
    f32 = load_torch(d, task)
    q = torch.ao.quantization.quantize_dynamic(load_torch(d, task), {torch.nn.Linear}, dtype=torch.qint8)
    onnx_path, q_path = tmp / f"{spec['key']}.onnx", tmp / f"{spec['key']}-int8.onnx"
    tok = spec["tok"]
    dummy = tok(["hello world"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(load_torch(d, task), tuple(dummy[k] for k in names), str(onnx_path), input_names=names,
                          output_names=["out"], opset_version=17, dynamo=False,
                          dynamic_axes={**{k: {0: "b", 1: "s"} for k in names}, "out": {0: "b"}})
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(onnx_path), str(q_path), per_channel=True, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def t(m):
        @torch.no_grad()
        def run(ids, mask, types):
            return m(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)).numpy()
        return run

    def o(path):
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda ids, mask, types: s.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    return {"PyTorch f32": t(f32), "PyTorch INT8": t(q), "ORT f32": o(onnx_path), "ORT INT8": o(q_path)}


def pooled(h, mask):
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def quantize(spec, work, reuse):
    out = work / f"{spec['key']}-quantized"
    if reuse and (out / "samp-plan.json").is_file():
        log(f"  reusing {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        args = ["quantize", "--model", spec["dir"], "--calib", spec["calib"], "--calib-limit", spec.get("calib_limit", 256),
                "--max-drop", "0.01", "--out", out]
        if spec.get("eval"):
            args += ["--eval", spec["eval"]]
        samp(*args)
        log(f"  samp quantize: {time.time() - t:.0f}s")
    plans = {"samp f32": "float32", "samp FFN-only": out / "samp-plan.ffn-only.json",
             "samp Fully-Quant": out / "samp-plan.fully-quant-dynamic.json", "samp SAMP": out / "samp-plan.json"}
    layers = json.loads((out / "samp-plan.json").read_text())
    return out, plans, "".join(
        "Q" if all(l[g]["precision"] == "int8" for g in ("qkv", "attn_out", "ffn_up", "ffn_down")) else
        "q" if l["ffn_up"]["precision"] == "int8" else "F" for l in layers["layers"])


def quality(spec, outputs):
    """Accuracy (labelled classification) or mean cosine to PyTorch f32's pooled embeddings."""
    if spec["task"] == "classify":
        return float(np.mean([p == g for p, g in zip(outputs, spec["labels"])]))
    ref = spec["reference"]
    return float((outputs * ref).sum(1).mean())


def samp_outputs(spec, model_dir, plan, tmp):
    f = tmp / "inputs.jsonl"
    f.write_text("".join(json.dumps(t) + "\n" for t in spec["texts"]))
    cmd = "classify" if spec["task"] == "classify" else "embed"
    out = samp(cmd, "--model", model_dir, "--plan", plan, "--input", f)
    rows = [json.loads(l) for l in out.splitlines()]
    if cmd == "classify":
        return [r["label"] for r in rows]
    v = np.array([r["embedding"] for r in rows])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def serve_rows(spec, model_dir, tmp, seconds):
    """samp serve + samp loadgen on the SAMP plan: (label, loadgen report)."""
    proc = subprocess.Popen([str(SAMP), "--threads", str(THREADS), "--log-format", "json", "serve", "--listen",
                             "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--http-listen", "off",
                             "--model", f"m={model_dir}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in proc.stderr:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            f = v.get("fields", v)
            if "grpc" in f:
                addr = f["grpc"]
                break
        if not addr:
            raise RuntimeError("samp serve did not report its address")
        threading_drain(proc)
        data = tmp / "serve.txt"
        data.write_text("\n".join(spec["texts"]) + "\n")
        rpc = "classify" if spec["task"] == "classify" else "embed"
        rows = []
        for label, per_req, conc in (("gRPC, 32 texts/request, 2 in flight", 32, 2),
                                     ("gRPC, 1 text/request, 64 in flight", 1, 64)):
            rep = json.loads(sh([str(SAMP), "loadgen", "--addr", f"http://{addr}", "--rpc", rpc, "--model", "m",
                                 "--data", data, "--inputs-per-request", str(per_req), "-c", str(conc),
                                 "-z", str(max(seconds * 2, 3)), "--json"]))
            rows.append((label, rep))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def threading_drain(proc):
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()


def criterion(seconds):
    """Median throughputs of the criterion benches, by benchmark id."""
    out = {}
    for bench, flt in (("gemm", "int8_vs_f32"), ("pipeline", "")):
        args = ["cargo", "bench", "--locked", "--bench", bench, "--"]
        if flt:
            args.append(flt)
        args += ["--warm-up-time", "0.5", "--measurement-time", str(seconds)]
        text = sh(args, cwd=ROOT)
        name = None
        for line in text.splitlines():
            if line and not line[0].isspace():
                name = line.split()[0]
            if "thrpt:" in line and "%" not in line and name:
                v = line.split("[", 1)[1].split()
                out[name] = (float(v[2]), v[3])
    return out


def gemm_table(rounds, tmp):
    """gemm_peers.py's table in this run: samp's kernel per precision against the peers' at the
    model shapes, with the % of each precision's probed instruction peak."""
    out = tmp / "gemm.md"
    log("GEMM kernels at the model shapes (gemm_peers.py)")
    sh([sys.executable, str(ROOT / "benches" / "peers" / "gemm_peers.py"), "--samp", str(SAMP),
        "--rounds", str(rounds), "--seconds", "0.5", "--out", str(out)],
       env={**os.environ, "SAMP_BENCH_THREADS": str(THREADS)})
    return ["## GEMM kernels at the model shapes", "",
            f"`python benches/peers/gemm_peers.py --rounds {rounds} --seconds 0.5`, in this run: per "
            "precision the kernel a samp layer runs (f32 on oneDNN where the library loaded, INT8 the "
            "faster of samp's and oneDNN's, bf16 samp's own) against PyTorch and ONNX Runtime, 1,024 rows, "
            f"{THREADS} threads, Gop/s; samp's INT8 includes quantizing the f32 input and its bf16 "
            "rounding it, PyTorch's bf16 is handed bf16 tensors.", "", out.read_text().strip()]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if re.search(rf"\b{f}\b", flags))
    rev = sh(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).strip()
    rustc = sh(["rustc", "--version"]).strip()
    return (f"{cpu}, {os.cpu_count()} cores ({isa}); {THREADS} threads per engine. samp {rev} ({rustc}), "
            f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {ort.__version__}, "
            f"Python {platform.python_version()}.")


def bert_base(work):
    d = work / "bert-base-random"
    if not (d / "model.safetensors").is_file():
        torch.manual_seed(0)
        BertModel(BertConfig(), add_pooling_layer=False).eval().save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(ROOT / "models" / "all-MiniLM-L6-v2" / f, d / f)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--seconds", type=float, default=1.5, help="measurement time per engine and cell")
    ap.add_argument("--rounds", type=int, default=2, help="turns per cell; the best counts")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "bench-all")
    ap.add_argument("--reuse", action="store_true", help="reuse quantized models already in --work")
    ap.add_argument("--models", default="minilm,sentiment,bert-base")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM kernel table (gemm_peers.py, ~4 min)")
    a = ap.parse_args()
    if not SAMP.exists():
        sys.exit("build samp first: cargo build --release")
    torch.set_num_threads(THREADS)
    started = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    movie = movie_sentences(256)
    sent = [json.loads(l) for l in (ROOT / "data" / "eval" / "sentiment-test.jsonl").read_text().splitlines()][:256]
    calib = tmp / "movie-calib.txt"
    calib.write_text("\n".join(movie_sentences(512)[256:]) + "\n")
    specs = {
        "minilm": dict(key="minilm", title="all-MiniLM-L6-v2 (sentence embeddings)", dir=ROOT / "models" / "all-MiniLM-L6-v2",
                       task="embed", texts=movie, n_fixed=64, calib=calib,
                       requirement="mean cosine to float32 embeddings ≥ 0.99 (calibration texts)"),
        "sentiment": dict(key="sentiment", title="MiniLM sentiment classifier", dir=ROOT / "models" / "minilm-sentiment",
                          task="classify", texts=[e["text"] for e in sent], labels=[e["label"] for e in sent], n_fixed=64,
                          calib=ROOT / "data" / "eval" / "sentiment-calib.jsonl",
                          eval=ROOT / "data" / "eval" / "sentiment-eval.jsonl",
                          requirement="accuracy drop ≤ 1 point on the eval split (+ 2 s.e. margin)"),
        "bert-base": dict(key="bert-base", title="BERT-base shape, random weights (12 × 768, 3072 FFN, seed 0)",
                          dir=None, task="embed", texts=movie[:64], n_fixed=32, calib=calib, calib_limit=64,
                          requirement="mean cosine to float32 embeddings ≥ 0.99 (calibration texts)"),
    }
    batches = [int(b) for b in a.batches.split(",")]
    sections, summary = [], []
    for key in a.models.split(","):
        spec = specs[key]
        if spec["dir"] is None:
            spec["dir"] = bert_base(a.work)
        log(f"== {spec['title']}")
        tok = spec["tok"] = AutoTokenizer.from_pretrained(spec["dir"])
        qdir, plans, samp_layers = quantize(spec, a.work, a.reuse)
        engines = peers(spec, tmp)
        texts = spec["texts"]

        def natural(fn, post):
            def run(batch):
                enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
                ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
                return post(fn(ids, mask, np.zeros_like(ids)), mask)
            return run
        post = (lambda o, m: o.argmax(-1)) if spec["task"] == "classify" else pooled
        id2label = None
        if spec["task"] == "classify":
            id2label = {int(k): v for k, v in json.loads((spec["dir"] / "config.json").read_text())["id2label"].items()}
        # Quality on the natural-length texts.
        outs = {}
        for name, fn in engines.items():
            o = np.concatenate([natural(fn, post)(texts[i:i + 32]) for i in range(0, len(texts), 32)])
            outs[name] = [id2label[int(x)] for x in o] if id2label else o
        if spec["task"] == "embed":
            spec["reference"] = outs["PyTorch f32"]
        qual = {n: quality(spec, o) for n, o in outs.items()}
        for name, plan in plans.items():
            qual[name] = quality(spec, samp_outputs(spec, qdir, plan, tmp))
        qname = "accuracy" if spec["task"] == "classify" else "mean cosine to PyTorch f32"
        # Speed.
        ids_fixed = fixed_ids(tok, texts[:spec["n_fixed"]])
        texts_file = tmp / f"{key}.txt"
        texts_file.write_text("\n".join(texts) + "\n")
        cells = {}
        for length in ("natural", "fixed"):
            for bs in batches:
                # Engines take turns, `rounds` times, each for seconds / rounds; the best round counts
                # (a neighbour's load on this shared machine only ever slows a round down).
                row = {}
                per = a.seconds / a.rounds
                for _ in range(a.rounds):
                    for name, fn in engines.items():
                        if length == "natural":
                            v = timed(natural(fn, post), [texts[i:i + bs] for i in range(0, len(texts), bs)], per)
                        else:
                            mask = np.ones((bs, FIXED), dtype=np.int64)
                            bb = [ids_fixed[i:i + bs] for i in range(0, len(ids_fixed), bs)]
                            v = timed(lambda b: fn(b, mask[:len(b)], np.zeros_like(b)), bb, per)
                        row[name] = max(row.get(name, 0.0), v)
                    for name, plan in plans.items():
                        args = ["bench", "--model", qdir, "--plan", plan, "--input", texts_file, "--batch", bs,
                                "--seconds", per]
                        if length == "fixed":
                            args += ["--tokens", FIXED, "--limit", spec["n_fixed"]]
                        row[name] = max(row.get(name, 0.0), json.loads(samp(*args))["texts_per_s"])
                cells[(length, bs)] = row
                log(f"  {length} batch {bs}: " + ", ".join(f"{n} {v:.0f}" for n, v in row.items()))
        prof = {}
        for name in ("samp f32", "samp Fully-Quant"):
            rep = json.loads(samp("bench", "--model", qdir, "--plan", plans[name], "--input", texts_file, "--batch", 32,
                                  "--limit", 32, "--seconds", 0.1, "--profile"))
            prof[name] = rep["layer_profile"]
        served = serve_rows(spec, qdir, tmp, a.seconds)
        names = list(engines) + list(plans)
        lines = [f"## {spec['title']}", "",
                 f"SAMP plan `{samp_layers}` (F float, q FFN INT8, Q all INT8), chosen by `samp quantize` for: "
                 f"{spec['requirement']}. Texts: {len(texts)} "
                 + ("sentiment test-split sentences" if key == "sentiment" else "movie-review sentences")
                 + f"; fixed-length rows use {spec['n_fixed']} of them, each made exactly {FIXED} tokens.", "",
                 "| length | batch | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for (length, bs), row in cells.items():
            base = row["PyTorch f32"]
            lines.append(f"| {length} | {bs} | " + " | ".join(
                f"{row[n]:.1f} ({row[n] / base:.2f}x)" if n != "PyTorch f32" else f"{row[n]:.1f}" for n in names) + " |")
        lines.append(f"| {qname} | | " + " | ".join(f"{qual[n]:.4f}" for n in names) + " |")
        lines += ["", "texts/s (× PyTorch f32 in the same cell).", "",
                  "Served (SAMP plan, `samp serve` + `samp loadgen` on the same 2 cores, natural lengths):", "",
                  f"| load | texts/s | vs in-process batch {max(batches)} | p50 ms | p99 ms | statuses |", "|---|---:|---:|---:|---:|---|"]
        inproc = cells[("natural", max(batches))]["samp SAMP"]
        for label, rep in served:
            lines.append(f"| {label} | {rep['texts_per_s']:.1f} | {rep['texts_per_s'] / inproc:.0%} | "
                         f"{rep['latency_ms']['p50']:.1f} | {rep['latency_ms']['p99']:.1f} | "
                         + ", ".join(f"{k} {v}" for k, v in rep["status"].items()) + " |")
        p32, p8 = prof["samp f32"], prof["samp Fully-Quant"]
        lines += ["", f"One encoder layer, stage by stage (`samp bench --profile`, layer 0, batch of 32 texts = "
                  f"{p8['batch_tokens']} tokens, mean of 20 runs):", "",
                  "| stage | float32 ms | Fully-Quant ms (share) |", "|---|---:|---:|"]
        for s32, s8 in zip(p32["stages"], p8["stages"]):
            lines.append(f"| {s8['stage']} | {s32['ms']:.2f} | {s8['ms']:.2f} ({s8['share']:.0%}) |")
        gemm = sum(s["share"] for s in p8["stages"] if "gemm" in s["stage"])
        lines.append(f"| total | {p32['total_ms']:.2f} | {p8['total_ms']:.2f} (GEMMs {gemm:.0%}) |")
        sections.append("\n".join(lines))
        b32 = cells[("natural", max(batches))]
        summary.append((spec["title"], b32["samp SAMP"] / b32["PyTorch f32"], b32["samp SAMP"] / b32["ORT INT8"],
                        max(r["texts_per_s"] for _, r in served) / inproc))
    log("== criterion benches")
    gemm = [] if a.no_gemm else gemm_table(a.rounds, tmp)
    crit = criterion(max(a.seconds, 1.0))
    elapsed = time.time() - started
    head = ["# Benchmarks", "",
            "Generated by one command — every figure below comes from this run:", "", "```sh",
            "python benches/peers/compare.py   # after the README's set-up and "
            "pip install -r benches/peers/requirements.txt", "```", "",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed / 60:.1f} min. Machine: {machine()}",
            "", "This machine is shared and noisy: compare ratios within a table, not absolute numbers across runs. "
            f"Within a cell the engines take turns, {a.rounds} rounds of {a.seconds / a.rounds:.2g} s each, and each "
            "engine's best round counts (a neighbour's load only ever slows a round down). Natural-length rows include tokenization for every "
            "engine; PyTorch and ONNX Runtime pad each batch to its longest text, samp packs without padding. "
            "Fixed-length rows time the encoder alone on the same 128-token ids for every engine.", "",
            f"## Against the targets (natural lengths, batch {max(batches)})", "",
            "| model | SAMP plan × PyTorch f32 (target ≥ 6×) | SAMP plan × ORT INT8 (target ≥ 2×) | served ÷ in-process (target ≥ 90%) |",
            "|---|---:|---:|---:|"]
    for title, vs_pt, vs_ort, srv in summary:
        head.append(f"| {title} | {vs_pt:.2f}x | {vs_ort:.2f}x | {srv:.0%} |")
    crit_lines = ["## Criterion benches (hot parts)", "",
                  f"`cargo bench --bench gemm -- int8_vs_f32` and `cargo bench --bench pipeline`, "
                  f"{max(a.seconds, 1.0)} s per bench, median. GEMMs: 1,024 rows at the models' shapes, 2 threads, "
                  "weights packed once, G = 10⁹ multiply-adds × 2 per second; `+quantize` includes quantizing "
                  "the f32 input.", "",
                  "| GEMM rows × k × n | f32 | int8 | int8 + quantize | int8 / f32 |", "|---|---:|---:|---:|---:|"]
    shapes = sorted({k.rsplit("/", 1)[1] for k in crit if k.startswith("gemm_int8_vs_f32/")})
    for sh_ in shapes:
        g = lambda kind: crit.get(f"gemm_int8_vs_f32/{kind}/{sh_}", (float("nan"), ""))[0]
        crit_lines.append(f"| {sh_} | {g('f32'):.0f} | {g('int8'):.0f} | {g('int8+quantize'):.0f} | "
                          f"{g('int8') / g('f32'):.2f}x |")
    crit_lines += ["", "| pipeline bench | median throughput |", "|---|---:|"]
    crit_lines += [f"| {k} | {v:.3g} {u} |" for k, (v, u) in sorted(crit.items()) if not k.startswith("gemm")]
    crit_lines += ["", "`tokenize`: texts/s (256 movie sentences); `pack`: tokens/s into a padding-free batch; "
                   "`batching_policy/admit`: admission decisions/s."]
    doc = "\n".join(head) + "\n\n" + "\n\n".join(sections + ["\n".join(gemm)] * bool(gemm)) + "\n\n" \
        + "\n".join(crit_lines) + "\n"
    a.out.write_text(doc)
    log(doc)
    log(f"wrote {a.out} in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
