#!/usr/bin/env python3
"""Tiny random-weight models (fixed seed) covering what the three real models don't: RoBERTa
(position offset, dense+out_proj head), DistilBERT (its own layer names, pre_classifier, no token
types) stored as pytorch_model.bin with only vocab.txt, and a multi-label BERT classifier
(sigmoid). Each is ~100 KB; with transformers' outputs for a few texts they are committed under
tests/fixtures/ (they are test data, not models anyone would use).

Needs torch + transformers (benches/peers/requirements.txt).
"""
import json
import shutil
import string
from pathlib import Path

import torch
import transformers
from tokenizers import BertWordPieceTokenizer
from transformers import (BertConfig, BertForSequenceClassification,
                          DistilBertConfig, DistilBertForTokenClassification, RobertaConfig,
                          RobertaForSequenceClassification)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
TEXTS = ["hello world", "a b c", "The quick brown fox, 42 times!", "x", "mixed CASE and digits 123",
         "zzz " * 20, "émoji 😀 and ünïcode"]
SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]  # [PAD] = 1, as RoBERTa wants


def write_vocab(d: Path):
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIALS + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + \
        ["hello", "world", "the", "quick", "brown", "fox", "and", "times"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return len(vocab)


def tokenizer(d: Path, json_too: bool):
    # transformers 5's BertTokenizerFast(vocab_file=...) ignores the file; build it with tokenizers.
    tok = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True)
    if json_too:
        tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}) + "\n")
    return tok


def common(vocab):
    return dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=66, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)


@torch.no_grad()
def build(name, make, json_tok=True, safetensors=True):
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    vocab = write_vocab(d)
    tok = tokenizer(d, json_tok)
    torch.manual_seed(0)
    model = make(vocab).eval()
    # Random init leaves LayerNorm at 1/0 and biases at 0: perturb every tensor so each one matters.
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(d))
    if not safetensors:  # the legacy format: a torch.save'd state dict
        torch.save(model.state_dict(), d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()
    cases = []
    for t in TEXTS:
        ids = tok.encode(t).ids
        assert 1 not in ids, "the [PAD] id must not occur in real input"
        x = torch.tensor([ids])
        kwargs = {"input_ids": x, "attention_mask": torch.ones_like(x)}
        if model.config.model_type != "distilbert":
            kwargs["token_type_ids"] = torch.zeros_like(x)
        logits = model(**kwargs).logits[0]
        cases.append({"text": t, "input_ids": ids,
                      "logits": [float(f"{v:.7g}") for v in logits.flatten().tolist()]})
    (d / "golden.json").write_text(json.dumps({"transformers": transformers.__version__, "cases": cases},
                                              indent=1) + "\n")
    print(f"wrote {d} ({sum(f.stat().st_size for f in d.iterdir()) // 1024} KB)")


def main():
    build("tiny-roberta-cls", lambda v: RobertaForSequenceClassification(RobertaConfig(
        **{**common(v), "max_position_embeddings": 68}, pad_token_id=1, type_vocab_size=1, num_labels=3,
        architectures=["RobertaForSequenceClassification"])))
    build("tiny-distilbert-tag", lambda v: DistilBertForTokenClassification(DistilBertConfig(
        vocab_size=v, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=66, dropout=0.0,
        attention_dropout=0.0, id2label={0: "O", 1: "B-X", 2: "I-X", 3: "B-Y", 4: "I-Y"},
        label2id={"O": 0, "B-X": 1, "I-X": 2, "B-Y": 3, "I-Y": 4},
        architectures=["DistilBertForTokenClassification"])), json_tok=False, safetensors=False)
    build("tiny-bert-multilabel", lambda v: BertForSequenceClassification(BertConfig(
        **common(v), num_labels=4, problem_type="multi_label_classification",
        architectures=["BertForSequenceClassification"])))


if __name__ == "__main__":
    main()
