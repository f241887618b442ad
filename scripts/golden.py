#!/usr/bin/env python3
"""Golden outputs of the reference implementation (transformers on PyTorch, float32, eval mode)
for samp's tests. Writes small JSON files under tests/golden/; CI only reads them.

Needs torch + transformers (benches/peers/requirements.txt) and the models of
scripts/fetch_models.sh. Every text is run alone (batch of one), so padding can't leak in.
"""
import json
from pathlib import Path

import torch
from transformers import (AutoTokenizer, BertForSequenceClassification, BertForTokenClassification,
                          BertModel, pipeline)
import transformers

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OUT = ROOT / "tests" / "golden"

LONG = ("The committee reviewed the proposal in detail, weighing the costs of the new bridge "
        "against the benefits to commuters, local businesses and the environment. ") * 12

EMBED_TEXTS = [
    "hello",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, the acting was superb and the story moving.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "x",
    "?!",
    "Café au lait, s'il vous plaît — déjà vu at the naïve façade.",
    "Größere Städte haben mehr Einwohner als kleine Dörfer.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "I am so happy today 😀🎉🚀 #blessed",
    "👍",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "\u200b",
    "   ",
    "\u0000\u0001",
    "URL: https://example.com/path?q=1&r=2 and email a.b@c.org",
    "Numbers 3.14159, 2,718 and -42 and 1e10.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "repeat " * 40,
    LONG,
    "The the the the the.",
    "ALL CAPS SENTENCE FOR TESTING",
    "Mixed 中文 and English text with émojis 🤖.",
]

CLASSIFY_TEXTS = [
    "I loved this movie, the acting was superb and the story moving.",
    "A dull, tedious mess that wastes a talented cast.",
    "The food was okay, nothing special.",
    "Absolutely fantastic! Best purchase I've made all year 😍",
    "Terrible customer service. Never again.",
    "not bad at all",
    "not good at all",
    "Le film était magnifique.",
    "👎",
    "\u200b",
    LONG,
    "It's fine.",
    "What a waste of two hours.",
    "An instant classic with heart, humour and a knockout ending.",
]

CLASSIFY_PAIRS = [
    ["The movie was great.", "I enjoyed it a lot."],
    ["The service was slow.", "But the food made up for it and I would return."],
    ["Short.", LONG],
]

TAG_TEXTS = [
    "My name is John Smith and my email is john.smith@example.com.",
    "Call Maria Garcia at (555) 123-4567 or +1 415 555 0199.",
    "Send the package to 221B Baker Street, Apt 4, London, NW1 6XE.",
    "Her SSN is 123-45-6789 and her passport number is X12345678.",
    "Visit https://www.example.org/contact for details.",
    "Account 000123456789, routing number 021000021, Bank of Springfield.",
    "Dr. Élodie Dupont-Lefèvre lives at 12 rue de la Paix, Paris 75002.",
    "Driver's license D1234567 issued in California to Bob O'Neil.",
    "No personal information here, just a sentence about the weather.",
    "Contact 山田太郎 at yamada@example.jp 😀",
    "jane doe, 42 elm st, springfield, il 62704, 217-555-0134",
    "\u200b",
    "Tax ID 12-3456789 belongs to Acme Corp in Austin, TX 78701.",
]

AGGREGATIONS = ["none", "simple", "first", "average", "max"]


def r(x, nd=7):
    return [float(f"{v:.{nd}g}") for v in x]


@torch.no_grad()
def embed(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    cases = []
    for t in EMBED_TEXTS:
        full = tok(t)["input_ids"]
        enc = tok(t, truncation=True, max_length=max_len, return_tensors="pt")
        h = model(**enc).last_hidden_state[0]
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        pooled = (h * mask).sum(0) / mask.sum()
        emb = torch.nn.functional.normalize(pooled, dim=0)
        cases.append({"text": t, "input_ids": enc["input_ids"][0].tolist(),
                      "truncated": len(full) > max_len, "embedding": r(emb.tolist())})
    return {"model": "all-MiniLM-L6-v2", "max_len": max_len, "cases": cases}


@torch.no_grad()
def classify(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    cases = []
    for item in CLASSIFY_TEXTS + CLASSIFY_PAIRS:
        args = item if isinstance(item, list) else [item]
        enc = tok(*args, truncation=True, max_length=max_len, return_tensors="pt")
        full = tok(*args)["input_ids"]
        logits = model(**enc).logits[0]
        probs = logits.softmax(-1)
        cases.append({"text": args[0], "text_pair": args[1] if len(args) > 1 else None,
                      "input_ids": enc["input_ids"][0].tolist(),
                      "token_type_ids": enc["token_type_ids"][0].tolist(),
                      "truncated": len(full) > max_len,
                      "logits": r(logits.tolist()), "label": model.config.id2label[int(probs.argmax())],
                      "score": float(probs.max())})
    return {"model": "minilm-sentiment", "max_len": max_len, "cases": cases}


@torch.no_grad()
def tag(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForTokenClassification.from_pretrained(model_dir).eval()
    cases = []
    for t in TAG_TEXTS:
        enc = tok(t, return_tensors="pt")
        logits = model(**enc).logits[0]
        case = {"text": t, "input_ids": enc["input_ids"][0].tolist(),
                "token_labels": [model.config.id2label[int(i)] for i in logits.argmax(-1)],
                "logits_first_tokens": [r(row) for row in logits[:4].tolist()],
                "entities": {}}
        for agg in AGGREGATIONS:
            nlp = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy=agg,
                           device=-1)
            ents = nlp(t)
            case["entities"][agg] = [
                {"label": e.get("entity_group", e.get("entity")), "start": int(e["start"]),
                 "end": int(e["end"]), "score": float(e["score"])} for e in ents]
        cases.append(case)
    return {"model": "rampart-pii", "cases": cases}


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "command": "python scripts/golden.py"}
    for name, fn, d in [("embed_minilm", embed, "all-MiniLM-L6-v2"),
                        ("classify_sentiment", classify, "minilm-sentiment"),
                        ("tag_rampart", tag, "rampart-pii")]:
        out = fn(MODELS / d)
        out["reference"] = meta
        (OUT / f"{name}.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
        print(f"wrote tests/golden/{name}.json ({len(out['cases'])} cases)")


if __name__ == "__main__":
    main()
