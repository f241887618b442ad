#!/usr/bin/env python3
"""Calibration / evaluation / test splits for `samp quantize` and `samp eval`, from the data sets
scripts/fetch_models.sh put under data/ (standard library only; deterministic).

- sentiment (models/minilm-sentiment): VADER's movie-review snippets, the ones the classifier
  was never trained on; label POSITIVE when the mean human rating is > 0, else NEGATIVE.
  calib 256 texts, eval 1000, test 2000 (disjoint).
- ner (models/rampart-pii): no gold entities ship for it, so the metric is fidelity to the float
  model; texts are VADER's NYT editorial and Amazon snippets. calib 256 tweets, eval 1000,
  test 1000.
- lee (models/all-MiniLM-L6-v2): the Lee document-similarity pairs from gensim's test data,
  Spearman of cosine vs the human score. Documents 0-24 and their pairs are the eval split,
  documents 25-49 the test split, so the test pairs share no document with the search; calib is
  256 NYT sentences.

Writes data/eval/{sentiment,ner,lee}-{calib,eval,test}.jsonl.
"""
import json
import random
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
data = root / "data"
out = data / "eval"


def vader(name):
    rows = []
    raw = (data / "vader" / f"{name}_GroundTruth.txt").read_bytes().decode("utf-8", "replace")
    for line in raw.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append((float(parts[1]), parts[2].strip()))
    return rows


def write(name, rows):
    with open(out / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261129)

    movie = vader("movieReviewSnippets")
    rng.shuffle(movie)
    lab = lambda r: {"text": r[1], "label": "POSITIVE" if r[0] > 0 else "NEGATIVE"}
    write("sentiment-calib.jsonl", [r[1] for r in movie[:256]])
    write("sentiment-eval.jsonl", [lab(r) for r in movie[256:1256]])
    write("sentiment-test.jsonl", [lab(r) for r in movie[1256:3256]])

    tweets = vader("tweets")
    rng.shuffle(tweets)
    docs = vader("nytEditorialSnippets") + vader("amazonReviewSnippets")
    rng.shuffle(docs)
    write("ner-calib.jsonl", [r[1] for r in tweets[:256]])
    write("ner-eval.jsonl", [r[1] for r in docs[:1000]])
    write("ner-test.jsonl", [r[1] for r in docs[1000:2000]])

    lee = [l.strip() for l in (data / "lee" / "lee.cor").read_text("utf-8", "replace").splitlines() if l.strip()]
    sims = [[float(v) for v in l.split()] for l in (data / "lee" / "similarities0-1.txt").read_text().splitlines() if l.strip()]
    assert len(lee) == 50 and len(sims) == 50, (len(lee), len(sims))
    def pairs(lo, hi):
        return [{"text": lee[i], "text_pair": lee[j], "score": sims[i][j]} for i in range(lo, hi) for j in range(i + 1, hi)]
    write("lee-calib.jsonl", [r[1] for r in docs[2000:2256]])
    write("lee-eval.jsonl", pairs(0, 25))
    write("lee-test.jsonl", pairs(25, 50))
    for p in sorted(out.glob("*.jsonl")):
        print(f"  {p.relative_to(root)}: {sum(1 for _ in open(p, encoding='utf-8'))} lines")


if __name__ == "__main__":
    sys.exit(main())
