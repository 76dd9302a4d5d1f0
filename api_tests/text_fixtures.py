"""Tiny BERT-style text teachers and JSONL datasets, built here without any download.

A WordPiece vocabulary of a few dozen words is written to vocab.txt; teachers are transformers
BertConfig models (2 layers, hidden 32) saved as a Hugging Face folder (config.json,
model.safetensors, tokenizer files) and zipped, exactly what a user uploads. The classification
teacher is trained for a few seconds on a synthetic sentiment task (the sign of positive minus
negative words), so that its logits depend on the text and a student's accuracy means something;
the embedding teacher is left randomly initialised (its mean-pooled vectors already differ per
sentence).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "happy", "bright", "clean", "fast", "kind", "calm", "warm"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dark", "dirty", "slow", "rude", "loud", "cold"]
NEUTRAL = ["the", "a", "cat", "dog", "house", "car", "tree", "city", "day", "road", "is", "was", "very", "and",
           "this", "that", "it", "seems", "looks", "rather", "today", "river", "book", "song"]
VOCAB = SPECIALS + POSITIVE + NEGATIVE + NEUTRAL + ["##s", "##ly", "."]


def sentences(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n sentences of 4–14 words; label 1 when positive words outnumber negative ones."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        length = int(rng.integers(4, 15))
        pos, neg = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        if pos == neg:
            pos += 1
        words = list(rng.choice(NEUTRAL, length)) + list(rng.choice(POSITIVE, pos)) + list(rng.choice(NEGATIVE, neg))
        rng.shuffle(words)
        texts.append(" ".join(words) + " .")
        labels.append(int(pos > neg))
    return texts, np.asarray(labels, dtype=np.int64)


def write_tokenizer(folder: Path, vocab: list[str] = VOCAB) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(str(folder))


def bert_config(task: str, vocab_size: int = len(VOCAB), layers: int = 2, hidden: int = 32):
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=hidden * 2, max_position_embeddings=64, type_vocab_size=2)
    if task == "classification":
        cfg.num_labels = 2
        cfg.architectures = ["BertForSequenceClassification"]
    else:
        cfg.architectures = ["BertModel"]
    return cfg


def save_teacher(folder: Path, task: str, *, layers: int = 2, train_steps: int = 100, seed: int = 0,
                 vocab_size: int | None = None, safe: bool = True) -> Path:
    """A tiny BERT teacher as a Hugging Face folder. `vocab_size` other than the tokenizer's makes
    a folder whose tokenizer does not fit its model; `safe=False` saves pickled .bin weights."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    write_tokenizer(folder)
    cfg = bert_config(task, vocab_size or len(VOCAB), layers)
    model = BertForSequenceClassification(cfg) if task == "classification" else BertModel(cfg)
    if task == "classification" and train_steps:
        _train(model, folder, train_steps, seed)
    if safe:
        model.eval().save_pretrained(str(folder))
    else:  # what older transformers wrote: a pickled state dict, and no safetensors
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def _train(model, folder: Path, steps: int, seed: int) -> None:
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(folder))
    texts, labels = sentences(512, seed + 100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (32,), generator=g)
        enc = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.from_numpy(labels[idx.numpy()])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def zip_folder(folder: Path, path: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + str(f.relative_to(folder)))
    return path


def save_jsonl(path: Path, texts: list[str], labels=None, pairs: list[str] | None = None, *,
               text_key: str = "text") -> Path:
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            row = {text_key: t}
            if labels is not None and labels[i] is not None:
                row["label"] = int(labels[i])
            if pairs is not None:
                row["text_pair"] = pairs[i]
            f.write(json.dumps(row) + "\n")
    return path
