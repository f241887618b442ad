#!/usr/bin/env python3
"""Probe a GPU machine for samp's CUDA backend (issue: GPU backend): driver and library versions
and sonames that cudarc will look for, and the torch baselines samp must beat on a random
BERT-base-shaped model (12 x 768, 3072 FFN, seed 0): float32 (TF32 off) and float16, batch
1 / 8 / 32 x 128 tokens. Prints a Markdown report and writes it to $OUT/gpu_probe.md.

Usage on the device: python3 scripts/gpu_probe.py
"""
import glob
import os
import platform
import subprocess
import sys
import time


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:  # noqa: BLE001 - a probe reports, never fails
        return f"({e})"


def main():
    lines = ["# GPU probe", "", f"python {platform.python_version()}", ""]
    lines += ["## nvidia-smi", "```", sh("nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv"), "```"]
    lines += ["## CUDA libraries on the loader path", "```",
              sh("ldconfig -p | grep -E 'libcuda\\.so|libnvrtc|libcublasLt|libcublas\\.so|libcudart' | sort"), "```"]
    lines += ["## pip nvidia packages", "```", sh(f"{sys.executable} -m pip list 2>/dev/null | grep -i -E 'nvidia|torch|transformers|cuda'"), "```"]
    site = sh(f"{sys.executable} -c 'import site; print(site.getsitepackages()[0])'")
    libs = sorted(glob.glob(os.path.join(site, "nvidia", "**", "lib", "lib*.so*"), recursive=True))
    lines += ["## wheel libraries (site-packages/nvidia/*/lib)", "```"] + [os.path.relpath(p, site) for p in libs
              if any(k in p for k in ("nvrtc", "cublas", "cudart"))] + ["```"]
    lines += ["## nvcc", "```", sh("nvcc --version | tail -2"), "```"]

    import torch
    from transformers import BertConfig, BertModel

    lines += ["## torch baselines: random BERT-base (seed 0), ms per batch (CUDA events, 30 runs)", "",
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}", "",
              "| batch x tokens | torch f32 (TF32 off) | torch f16 | f16 texts/s |", "|---|---:|---:|---:|"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval().cuda()
    half = BertModel(BertConfig()).eval().cuda().half()
    half.load_state_dict({k: v.half() for k, v in model.state_dict().items()})

    def bench(m, ids):
        with torch.inference_mode():
            for _ in range(5):
                m(input_ids=ids)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(30):
                m(input_ids=ids)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 30

    for b in (1, 8, 32):
        ids = torch.randint(1000, 30000, (b, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(b))
        f32, f16 = bench(model, ids), bench(half, ids)
        lines.append(f"| {b} x 128 | {f32:.3f} | {f16:.3f} | {b / f16 * 1000:.0f} |")
    with torch.inference_mode():
        ids = torch.randint(1000, 30000, (8, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        a = model(input_ids=ids).last_hidden_state.float()
        h = half(input_ids=ids).last_hidden_state.float()
        rel = ((a - h).norm() / a.norm()).item()
    lines += ["", f"torch f16 vs f32 hidden states, relative error (Frobenius): {rel:.2e}"]
    report = "\n".join(lines) + "\n"
    print(report)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_probe.md"), "w") as f:
            f.write(report)


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"probe took {time.time() - t:.1f}s")
