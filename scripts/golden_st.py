#!/usr/bin/env python3
"""Golden sentence embeddings of sentence-transformers' own `SentenceTransformer.encode` on
models/all-MiniLM-L6-v2 (float32, CPU), for the Python client's compatibility test
(tests/python/test_python_client.py). Writes tests/golden/st_encode_minilm.json; CI only reads it.

Needs `pip install sentence-transformers` and the models of scripts/fetch_models.sh.
"""
import json
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
LONG = ("The committee reviewed the proposal in detail, weighing the costs of the new bridge "
        "against the benefits to commuters, local businesses and the environment. ") * 12
TEXTS = [
    "hello",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, the acting was superb and the story moving.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "Café, naïve, résumé: accents and ümlauts.",
    "東京は日本の首都です。",
    "?!",
    LONG,
]


def main():
    torch.manual_seed(0)
    model = SentenceTransformer(str(ROOT / "models" / "all-MiniLM-L6-v2"), device="cpu")
    out = {
        "source": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}: "
                  "SentenceTransformer('models/all-MiniLM-L6-v2').encode(texts, batch_size=4)",
        "max_seq_length": model.max_seq_length,
        "texts": TEXTS,
        "embeddings": [[round(float(v), 7) for v in row] for row in model.encode(TEXTS, batch_size=4)],
        "normalized": [[round(float(v), 7) for v in row]
                       for row in model.encode(TEXTS, batch_size=4, normalize_embeddings=True)],
    }
    path = ROOT / "tests" / "golden" / "st_encode_minilm.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path} ({len(TEXTS)} texts, max_seq_length {model.max_seq_length})")


if __name__ == "__main__":
    main()
