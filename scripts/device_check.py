#!/usr/bin/env python3
"""The GPU backend's device check: one command on the lent GPU machine (no Rust there; the samp
binary travels from the build machine, see scripts/device_check.sh).

1. Probe: nvidia-smi, the CUDA libraries samp will load (driver, NVRTC, cuBLASLt) and versions.
2. Generate a random BERT-base-shaped model with torch (12 x 768, 3072 FFN, seed 0; HF format,
   bert-base-uncased vocabulary from all-MiniLM-L6-v2's tokenizer).
3. Correctness: samp on the GPU in its float path (FP16 GEMMs, FP32 residual stream), a full
   INT8 plan and a mixed plan, against torch float32 (TF32 off) and torch float16 on the same
   token ids: relative error of the last hidden states (Frobenius) and cosine of mean-pooled
   outputs; fixed 128-token sequences and natural-length real sentences (packed, no padding).
4. Speed: samp vs torch float16 and float32 at batch 1 / 8 / 32 x 128 tokens (encoder only,
   hidden states copied to the host for both), and natural-length sentences at batch 32 (the
   whole pipeline: tokenize, forward, mean pooling).

Prints one Markdown table set and writes it to $OUT/device_check.md (+ .json).
`--device cpu --layers 2` runs the same plumbing on a CPU (a dry run of this script).
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:  # noqa: BLE001 - a probe reports, never fails
        return f"({e})"


def lib_dirs():
    """Directories of NVIDIA's pip wheels holding NVRTC / cuBLASLt (what torch itself uses)."""
    dirs = set()
    for site in sys.path:
        for pat in ("libnvrtc.so.*", "libcublasLt.so.*"):
            for p in glob.glob(os.path.join(site, "nvidia", "**", pat), recursive=True):
                dirs.add(os.path.dirname(p))
    return sorted(dirs)


def write_plan(path, name, layers, modes):
    """A samp-plan/1 file; modes per layer: F (float), q (FFN only INT8), Q (all INT8)."""
    def gemm(on):
        return {"precision": "int8" if on else "float32"}
    plan = {"format": "samp-plan/1", "name": name, "activations": "dynamic", "weight_bits": 7, "layers": [
        {"qkv": gemm(m == "Q"), "attn_out": gemm(m == "Q"), "ffn_up": gemm(m in "qQ"), "ffn_down": gemm(m in "qQ")}
        for m in modes]}
    assert len(modes) == layers
    path.write_text(json.dumps(plan, indent=1))
    return path


class Samp:
    def __init__(self, binary, model, device, env):
        self.binary, self.model, self.device, self.env = binary, model, device, env

    def bench(self, texts, plan, batch, limit, seconds, tokens=None, states=None):
        cmd = [str(self.binary), "bench", "--model", str(self.model), "--input", str(texts), "--plan", str(plan),
               "--device", self.device, "--batch", str(batch), "--limit", str(limit), "--seconds", str(seconds)]
        if tokens:
            cmd += ["--tokens", str(tokens)]
        if states:
            cmd += ["--states-out", str(states)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr[-3000:]}")
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        rep["log"] = "\n".join(l for l in r.stderr.splitlines() if "WARN" in l or "ERROR" in l)[-2000:]
        return rep

    def states(self, texts, plan, batch, limit, tokens, work):
        path = work / "states.f32"
        rep = self.bench(texts, plan, batch, limit, 0, tokens=tokens, states=path)
        meta = json.loads(path.with_suffix(".json").read_text())
        h = np.fromfile(path, dtype="<f4").reshape(-1, meta["hidden"])
        return h, meta["ids"], rep


def torch_states(model, ids_list, dev, fixed):
    """Last hidden states of each sequence, concatenated [T, H] in float64 on the host."""
    outs = []
    with torch.inference_mode():
        if fixed:
            ids = torch.tensor(ids_list, device=dev)
            h = model(input_ids=ids).last_hidden_state
            outs = [h.reshape(-1, h.shape[-1])]
        else:
            for seq in ids_list:  # one at a time: no padding, the same sequences samp packs
                outs.append(model(input_ids=torch.tensor([seq], device=dev)).last_hidden_state[0])
    return torch.cat(outs).double().cpu().numpy()


def compare(a, ref, ids_list):
    rel = float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
    cos, i = [], 0
    for seq in ids_list:
        n = len(seq)
        x, y = a[i:i + n].mean(0), ref[i:i + n].mean(0)
        cos.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
        i += n
    return rel, float(np.mean(cos)), float(np.min(cos))


def torch_ms(model, ids, dev, runs, copy):
    """Mean ms per batch: CUDA-synchronised wall time (includes the host copy when `copy`)."""
    def once():
        h = model(input_ids=ids).last_hidden_state
        if copy:
            h.float().cpu()
    with torch.inference_mode():
        for _ in range(3):
            once()
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(runs):
            once()
        if dev == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / runs * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samp", type=Path, default=ROOT / ".device" / "samp")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / ".device" / "tokenizer",
                    help="directory with all-MiniLM-L6-v2's tokenizer files")
    ap.add_argument("--texts", type=Path, default=ROOT / ".device" / "texts.txt")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/samp-device-check"))
    a = ap.parse_args()
    out = Path(os.environ.get("OUT", a.work / "out"))
    out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    dev = a.device
    samp_dev = "cuda:0" if dev == "cuda" else "cpu"
    lines = ["# samp GPU backend: device check", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · python {platform.python_version()} · "
             f"torch {torch.__version__} (CUDA {torch.version.cuda})", ""]
    env = dict(os.environ, RUST_LOG="warn")
    if dev == "cuda":
        dirs = lib_dirs()
        env["SAMP_CUDA_LIB_DIR"] = ":".join(dirs)
        lines += ["## Probe", "```", sh("nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv"),
                  sh(f"{sys.executable} -m pip list 2>/dev/null | grep -i -E 'nvidia-(cublas|cuda-nvrtc|cuda-runtime)|^torch '"),
                  "SAMP_CUDA_LIB_DIR=" + env["SAMP_CUDA_LIB_DIR"], "```", ""]
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    results = {"device": dev, "correctness": [], "speed": []}

    # 2. The model.
    t0 = time.time()
    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=a.layers)  # bert-base: 768 hidden, 12 heads, 3072 FFN, vocab 30522
    model_dir = a.work / "bert-base-random"
    f32 = BertModel(cfg, add_pooling_layer=False).eval()
    if model_dir.exists():
        shutil.rmtree(model_dir)
    f32.save_pretrained(model_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (a.tokenizer / f).exists():
            shutil.copy(a.tokenizer / f, model_dir / f)
    f32 = f32.to(dev)
    f16 = BertModel(cfg, add_pooling_layer=False).eval().to(dev).half()
    f16.load_state_dict({k: v.half() for k, v in f32.state_dict().items()})
    lines.append(f"Model: random BERT-base shape, {a.layers} layers x 768, 3072 FFN, seed 0 "
                 f"(generated in {time.time() - t0:.1f}s).")
    plans = {
        "float (FP16 GEMMs)": "float32",
        "full INT8 (dynamic)": write_plan(a.work / "int8.json", "int8", a.layers, "Q" * a.layers),
        "mixed (SAMP-style)": write_plan(a.work / "mixed.json", "mixed", a.layers,
                                         ("Q" * (a.layers * 2 // 3)).ljust(a.layers, "q")),
    }
    samp = Samp(a.samp, model_dir, samp_dev, env)

    # 3. Correctness.
    lines += ["", "## Correctness: last hidden states vs torch on the same ids", "",
              "| samp plan | input | device used | rel. error vs torch f32 | vs torch f16 | pooled cosine vs f32 (mean / min) |",
              "|---|---|---|---:|---:|---:|"]
    torch_f16_vs_f32 = None
    for label, plan in plans.items():
        for inp, tokens, batch, limit in (("16 x 128 tokens", 128, 8, 16), ("32 sentences, natural", None, 32, 32)):
            h, ids, rep = samp.states(a.texts, plan, batch, limit, tokens, a.work)
            ref32 = torch_states(f32, ids, dev, tokens is not None)
            ref16 = torch_states(f16, ids, dev, tokens is not None) if dev == "cuda" else ref32
            rel32, cmean, cmin = compare(h, ref32, ids)
            rel16 = compare(h, ref16, ids)[0]
            if torch_f16_vs_f32 is None:
                torch_f16_vs_f32 = compare(ref16, ref32, ids)[0]
            lines.append(f"| {label} | {inp} | {rep['device']} | {rel32:.2e} | {rel16:.2e} | {cmean:.5f} / {cmin:.5f} |")
            results["correctness"].append(dict(plan=label, input=inp, device=rep["device"], rel_f32=rel32,
                                               rel_f16=rel16, cos_mean=cmean, cos_min=cmin, log=rep["log"]))
    lines += ["", f"torch f16 vs torch f32 on the first input: relative error {torch_f16_vs_f32:.2e}"]

    # 4. Speed.
    lines += ["", "## Speed: ms per batch (lower is better), encoder only, hidden states copied to the host", "",
              "| batch x tokens | torch f32 | torch f16 | torch f16 (GPU only) | " +
              " | ".join(f"samp {k}" for k in plans) + " | best samp vs torch f16 |", "|---|" + "---:|" * (4 + len(plans))]
    runs = 30 if dev == "cuda" else 3
    for b in (1, 8, 32):
        ids = torch.randint(1000, 30000, (b, 128), device=dev, generator=torch.Generator(dev).manual_seed(b))
        t32 = torch_ms(f32, ids, dev, runs, True)
        t16 = torch_ms(f16, ids, dev, runs, True) if dev == "cuda" else float("nan")
        t16g = torch_ms(f16, ids, dev, runs, False) if dev == "cuda" else float("nan")
        row, best = [], float("inf")
        for label, plan in plans.items():
            rep = samp.bench(a.texts, plan, b, max(4 * b, 8), a.seconds, tokens=128)
            ms = b / rep["texts_per_s"] * 1000
            best = min(best, ms)
            row.append(ms)
            results["speed"].append(dict(batch=b, tokens=128, plan=label, samp_ms=ms, device=rep["device"],
                                         torch_f32_ms=t32, torch_f16_ms=t16, torch_f16_gpu_ms=t16g))
        lines.append(f"| {b} x 128 | {t32:.3f} | {t16:.3f} | {t16g:.3f} | " + " | ".join(f"{v:.3f}" for v in row)
                     + f" | {t16 / best:.2f}x |")

    # Natural-length sentences, whole pipeline (tokenize + forward + mean pooling).
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [l.strip() for l in a.texts.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()][:256]

    def torch_pipeline(model):
        def once():
            n = 0
            with torch.inference_mode():
                for i in range(0, len(texts), 32):
                    enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt").to(dev)
                    h = model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                    ((h * m).sum(1) / m.sum(1)).float().cpu()
                    n += enc["input_ids"].shape[0]
            return n
        once()
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < a.seconds:
            n += once()
        return n / (time.perf_counter() - t)
    tp32 = torch_pipeline(f32)
    tp16 = torch_pipeline(f16) if dev == "cuda" else float("nan")
    lines += ["", f"## Natural-length sentences ({len(texts)}, batch 32, whole pipeline), texts/s (higher is better)", "",
              "| torch f32 | torch f16 | " + " | ".join(f"samp {k}" for k in plans) + " |", "|" + "---:|" * (2 + len(plans))]
    row = []
    for label, plan in plans.items():
        rep = samp.bench(a.texts, plan, 32, len(texts), a.seconds)
        row.append(rep["texts_per_s"])
        results["speed"].append(dict(batch=32, tokens="natural", plan=label, samp_texts_per_s=rep["texts_per_s"],
                                     torch_f32_texts_per_s=tp32, torch_f16_texts_per_s=tp16, device=rep["device"]))
    lines.append(f"| {tp32:.0f} | {tp16:.0f} | " + " | ".join(f"{v:.0f}" for v in row) + " |")
    # Against the targets.
    fp16 = [c for c in results["correctness"] if c["plan"].startswith("float")]
    ok_fp16 = all(c["rel_f16"] <= 1e-2 for c in fp16)
    at32 = {r["plan"]: r for r in results["speed"] if r["batch"] == 32 and r["tokens"] == 128}
    int8_ms = min(at32[k]["samp_ms"] for k in at32 if not k.startswith("float"))
    t16 = next(iter(at32.values()))["torch_f16_ms"]
    mixed_ms = at32["mixed (SAMP-style)"]["samp_ms"]
    lines += ["", "## Verdict against the targets", "",
              f"- float path vs torch float16, relative error of hidden states <= 1e-2: "
              f"{'PASS' if ok_fp16 else 'FAIL'} (max {max(c['rel_f16'] for c in fp16):.2e})",
              f"- an INT8 plan faster than torch float16 at 32 x 128: {'PASS' if int8_ms < t16 else 'FAIL'} "
              f"({int8_ms:.3f} ms vs {t16:.3f} ms)",
              f"- mixed plan at 32 x 128 within 1.5 ms (BERT-base): {'PASS' if mixed_ms <= 1.5 else 'FAIL'} ({mixed_ms:.3f} ms)"]
    logs = sorted({c["log"] for c in results["correctness"] if c["log"]})
    if logs:
        lines += ["", "samp warnings:", "```", *logs, "```"]
    lines += ["", f"Command: `scripts/device_check.sh` ({time.time() - started:.0f} s)."]
    report = "\n".join(lines) + "\n"
    print(report)
    (out / "device_check.md").write_text(report)
    (out / "device_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
