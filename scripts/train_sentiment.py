#!/usr/bin/env python3
"""Train the classifier layer of samp's sentiment model and write assets/sentiment_head.json.

The model is transformers' BertForSequenceClassification on all-MiniLM-L6-v2 with its pooler
kept: only `classifier` (2 x 384 weights + 2 biases) is trained, by logistic regression on the
pooled outputs. Data: the VADER ground-truth sentences (vaderSentiment 3.3.2 sdist, MIT):
tweets, Amazon and NYT snippets for training, the movie-review snippets held out for evaluation.
Label = sign of the mean human rating; ratings with |mean| < --neutral are dropped.

Needs torch + transformers (see benches/peers/requirements.txt) and `scripts/fetch_models.sh`
to have run (models/all-MiniLM-L6-v2, data/vader). Deterministic: fixed seed, full-batch L-BFGS.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["tweets", "amazonReviewSnippets", "nytEditorialSnippets"]
HELD_OUT = "movieReviewSnippets"
LABELS = ["NEGATIVE", "POSITIVE"]


def load(vader: Path, name: str, neutral: float):
    texts, labels = [], []
    for line in (vader / f"{name}_GroundTruth.txt").read_bytes().decode("utf-8", "replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        rating = float(parts[1])
        if abs(rating) < neutral:
            continue
        texts.append(parts[2].strip())
        labels.append(1 if rating > 0 else 0)
    return texts, np.array(labels)


@torch.no_grad()
def pooled(model, tok, texts, batch=64):
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
        out.append(model(**enc).pooler_output)
        if (i // batch) % 20 == 0:
            print(f"  pooled {i + len(texts[i:i + batch])}/{len(texts)}", flush=True)
    return torch.cat(out)


def fit(x, y, l2, iters=300):
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], 2)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=iters, line_search_fn="strong_wolfe")
    yt = torch.tensor(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), yt) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def accuracy(lin, x, y):
    with torch.no_grad():
        return float((lin(x).argmax(1).numpy() == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neutral", type=float, default=0.5, help="drop ratings with |mean| below this")
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "sentiment_head.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    vader = ROOT / "data" / "vader"
    model_dir = ROOT / "models" / "all-MiniLM-L6-v2"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()

    tr_texts, tr_y = [], []
    for name in TRAIN:
        t, y = load(vader, name, a.neutral)
        tr_texts += t
        tr_y.append(y)
    tr_y = np.concatenate(tr_y)
    te_texts, te_y = load(vader, HELD_OUT, a.neutral)
    print(f"train {len(tr_texts)} sentences, held-out movie snippets {len(te_texts)}", flush=True)
    x_tr = pooled(model, tok, tr_texts)
    x_te = pooled(model, tok, te_texts)

    # Pick the L2 strength on a fixed 10% validation slice of the training data.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(tr_y))
    val, fit_idx = perm[: len(perm) // 10], perm[len(perm) // 10:]
    best = None
    for l2 in (0.0, 1e-4, 1e-3, 1e-2):
        lin = fit(x_tr[fit_idx], tr_y[fit_idx], l2)
        acc = accuracy(lin, x_tr[val], tr_y[val])
        print(f"  l2={l2:g}: validation accuracy {acc:.4f}", flush=True)
        if best is None or acc > best[1]:
            best = (l2, acc)
    lin = fit(x_tr, tr_y, best[0])
    train_acc = accuracy(lin, x_tr, tr_y)
    movie_acc = accuracy(lin, x_te, te_y)
    print(f"chosen l2={best[0]:g}; train accuracy {train_acc:.4f}; movie accuracy {movie_acc:.4f}")
    head = {
        "labels": LABELS,
        "weight": [[float(v) for v in row] for row in lin.weight.detach().numpy()],
        "bias": [float(v) for v in lin.bias.detach().numpy()],
        "trained_on": TRAIN,
        "neutral_threshold": a.neutral,
        "l2": best[0],
        "train_sentences": len(tr_texts),
        "train_accuracy": round(train_acc, 4),
        "movie_sentences": len(te_texts),
        "movie_accuracy": round(movie_acc, 4),
        "command": "python scripts/train_sentiment.py",
    }
    a.out.write_text(json.dumps(head, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
