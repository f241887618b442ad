#!/usr/bin/env python3
"""samp end to end with and without oneDNN (kernels/onednn.rs), taking turns in one run.

    python3 benches/peers/onednn_ab.py [--rounds 3] [--seconds 2] [--plans float32,bf16,samp]
                                       [--model models/all-MiniLM-L6-v2] [--texts FILE]
                                       [--baseline OTHER_SAMP_BINARY]

With `--baseline`, the two sides are instead that binary (another commit's build) and this
checkout's target/release/samp, both with the library as they find it by default.

Each cell runs `samp bench` (batch 32) twice per round, SAMP_ONEDNN=0 then on (`always` for the
bf16 plan, whose layers use oneDNN only when asked; the order flips every round), at natural lengths and at a fixed 128 tokens (`--tokens 128`, encoder only); the
best round of each counts (the host is shared and noisy). `bf16` is the model's SAMP plan with
every GEMM set to bfloat16; `samp` is the committed plan (plans/<model>/samp-plan.json) or, for
a model without one, every GEMM INT8 with dynamic activation scales. Prints a markdown table:
tokens/s without and with oneDNN, and the ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMP = ROOT / "target" / "release" / "samp"


def plan_file(model: Path, kind: str, tmp: Path, layers: int) -> str:
    if kind == "float32":
        return "float32"
    committed = ROOT / "plans" / model.name / "samp-plan.json"
    if committed.is_file():
        plan = json.loads(committed.read_text())
    else:
        gemms = ("qkv", "attn_out", "ffn_up", "ffn_down")
        plan = {"format": "samp-plan/1", "name": "samp", "activations": "dynamic", "weight_bits": 8,
                "layers": [{g: {"precision": "int8"} for g in gemms} for _ in range(layers)]}
    if kind == "bf16":
        plan["name"] = "bf16"
        for layer in plan["layers"]:
            for g in layer.values():
                g["precision"] = "bfloat16"
                g.pop("input_scale", None)
    f = tmp / f"{model.name}-{kind}.json"
    f.write_text(json.dumps(plan))
    return str(f)


def bench(model, plan, texts, seconds, onednn, tokens=None, binary=SAMP):
    cmd = [str(binary), "bench", "--model", str(model), "--plan", plan, "--input", str(texts),
           "--seconds", str(seconds), "--batch", "32"]
    if tokens:
        cmd += ["--tokens", str(tokens)]
    env = dict(os.environ, SAMP_ONEDNN=onednn)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)["tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--texts", type=Path, help="JSON Lines texts (default: data/eval/sentiment-eval.jsonl)")
    ap.add_argument("--plans", default="float32,bf16,samp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--baseline", type=Path, help="compare this samp binary with target/release/samp")
    a = ap.parse_args()
    if not SAMP.exists():
        sys.exit("build samp first: cargo build --release")
    layers = json.loads((a.model / "config.json").read_text())["num_hidden_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = tmp / "texts.jsonl"
        src = a.texts or ROOT / "data" / "eval" / "sentiment-eval.jsonl"
        texts.write_text("".join(json.dumps({"text": json.loads(l)["text"]}) + "\n"
                                 for l in src.read_text().splitlines()[:256]))
        best = {}
        side = lambda o: ("baseline" if o == "0" else "this") if a.baseline else f"onednn={o:3}"
        for r in range(a.rounds):
            for kind in a.plans.split(","):
                plan = plan_file(a.model, kind, tmp, layers)
                for tokens in (None, 128):
                    # bf16 layers use oneDNN only when asked (kernels::onednn::prefer).
                    with_lib = "always" if kind == "bf16" else "on"
                    order = ("0", with_lib) if r % 2 == 0 else (with_lib, "0")
                    for onednn in order:
                        if a.baseline:
                            # "0" names the baseline binary's side; both use the library.
                            binary = a.baseline if onednn == "0" else SAMP
                            v = bench(a.model, plan, texts, a.seconds, with_lib, tokens, binary)
                        else:
                            v = bench(a.model, plan, texts, a.seconds, onednn, tokens)
                        key = (kind, tokens, "0" if onednn == "0" else "on")
                        best[key] = max(best.get(key, 0), v)
                        print(f"round {r + 1}: {kind:8} {'natural' if tokens is None else tokens:>7} "
                              f"{side(onednn)} {v:9.0f} tokens/s", file=sys.stderr)
    sides = (f"{a.baseline.name} (tokens/s)", "this build") if a.baseline else ("samp kernels (tokens/s)", "with oneDNN")
    print(f"| {a.model.name}: plan | lengths | {sides[0]} | {sides[1]} | ratio |")
    print("|---|---|---:|---:|---:|")
    for kind in a.plans.split(","):
        for tokens in (None, 128):
            off, on = best[(kind, tokens, "0")], best[(kind, tokens, "on")]
            print(f"| {kind} | {'natural' if tokens is None else f'fixed {tokens}'} | {off:.0f} | {on:.0f} | {on / off:.2f}× |")


if __name__ == "__main__":
    main()
