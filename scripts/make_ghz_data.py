#!/usr/bin/env python3
"""Request files for the ghz load tests (deploy/ghz/data/*.json), from real sentences of the
VADER data set (MIT licence; scripts/fetch_models.sh puts it under data/vader). Each file is a
JSON array of request messages; ghz sends them in turn. Deterministic; the output is committed
so ghz runs need no fetch. Run: python3 scripts/make_ghz_data.py
"""
import json
import random
from pathlib import Path

root = Path(__file__).resolve().parent.parent
out = root / "deploy" / "ghz" / "data"


def sentences(name, n, rng):
    raw = (root / "data" / "vader" / f"{name}_GroundTruth.txt").read_bytes().decode("utf-8", "replace")
    rows = [l.split("\t", 2)[2].strip() for l in raw.splitlines() if l.count("\t") >= 2]
    rows = [r for r in rows if 3 <= len(r.split()) <= 60]
    rng.shuffle(rows)
    return rows[:n]


def batches(texts, rng, max_inputs):
    """Requests of 1..max_inputs texts each (real traffic mixes single texts and small batches)."""
    i, out = 0, []
    while i < len(texts):
        k = rng.randint(1, max_inputs)
        out.append(texts[i:i + k])
        i += k
    return out


def main():
    rng = random.Random(5)
    out.mkdir(parents=True, exist_ok=True)
    embed = [{"texts": b} for b in batches(sentences("nytEditorialSnippets", 160, rng), rng, 4)]
    movie = sentences("movieReviewSnippets", 160, rng)
    classify = [{"inputs": [{"text": t} for t in b]} for b in batches(movie, rng, 4)]
    tag = [{"texts": b} for b in batches(sentences("tweets", 160, rng), rng, 4)]
    for name, reqs in [("embed", embed), ("classify", classify), ("tag", tag)]:
        (out / f"{name}.json").write_text(json.dumps(reqs, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{out.relative_to(root)}/{name}.json: {len(reqs)} requests")


if __name__ == "__main__":
    main()
