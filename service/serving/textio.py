"""Tokenisation shared by the worker (training) and the API (serving text to a student): the
Hugging Face `tokenizers` library (Rust) and NumPy only, never torch or transformers.

A text teacher's tokenizer is stored once, as one canonical `tokenizer.json` (the fast-tokenizer
serialisation: normaliser, pre-tokeniser, model, post-processor with the [CLS]/[SEP] template).
The worker tokenises the job's texts with it and the same file ships with the student, so a text
sent to `/v2/.../infer` is cut into exactly the ids the student was trained on.

    tok = load_tokenizer(json_text)
    batch = encode(tok, ["a sentence", "another"], max_length=128)     # → Encoded (int64 arrays)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Names of the student's ONNX inputs (and of the tensors a text Split carries).
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
# The text tensors clients may send to /v2 infer instead of token ids (datatype BYTES).
TEXT_INPUT, TEXT_PAIR_INPUT = "text", "text_pair"


class TokenizerError(ValueError):
    """The tokenizer file cannot be read, or a text cannot be encoded with it."""


@dataclass
class Encoded:
    input_ids: np.ndarray       # int64 [N, L], padded with the pad id to the longest row (≤ max_length)
    attention_mask: np.ndarray  # int64 [N, L], 1 = token, 0 = padding
    token_type_ids: np.ndarray  # int64 [N, L], the segment of each token (0 = first text, 1 = the pair)

    def __len__(self) -> int:
        return len(self.input_ids)


def load_tokenizer(json_text: str):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(json_text)
    except Exception as exc:  # the Rust side raises its own exception type
        raise TokenizerError(f"tokenizer.json does not load: {str(exc).splitlines()[0][:300]}") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def pad_id(tok) -> int:
    """The padding id the tokenizer declares in its JSON, else [PAD]/<pad>, else 0."""
    for name in ("[PAD]", "<pad>", "<PAD>"):
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return 0


def sep_id(tok) -> int | None:
    for name in ("[SEP]", "</s>"):
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    return None


def encode(tok, texts: Sequence[str], max_length: int, pairs: Sequence[str] | None = None,
           chunk: int = 4096) -> Encoded:
    """Tokenise with the tokenizer's own template ([CLS] a [SEP] b [SEP] for BERT), truncate each
    row to `max_length` tokens (longest-first between a pair), pad to the longest row.

    Padding to the longest row rather than to max_length: most sentences are far shorter, and the
    trainer cuts every batch to its own longest row anyway."""
    if max_length < 2:
        raise TokenizerError("max_length must be at least 2")
    tok.enable_truncation(max_length, strategy="longest_first")
    try:
        return encode_configured(tok, texts, pairs, chunk)
    finally:
        tok.no_truncation()


def configured(json_text: str, max_length: int):
    """A tokenizer that truncates to max_length, for serving: it is configured once and then only
    read, so concurrent requests can share it."""
    tok = load_tokenizer(json_text)
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok


def encode_configured(tok, texts: Sequence[str], pairs: Sequence[str] | None = None, chunk: int = 4096) -> Encoded:
    """Tokenise with the tokenizer's current truncation, pad to the longest row."""
    if pairs is not None and len(pairs) != len(texts):
        raise TokenizerError(f"{len(texts)} texts but {len(pairs)} pairs")
    try:
        rows = []
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            batch = list(zip(part, pairs[start : start + chunk])) if pairs is not None else part
            rows.extend(tok.encode_batch(batch))
    except Exception as exc:
        raise TokenizerError(f"the tokenizer cannot encode these texts: {str(exc).splitlines()[0][:300]}") from None
    width = max((len(e.ids) for e in rows), default=1) or 1
    ids = np.full((len(rows), width), pad_id(tok), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for i, e in enumerate(rows):
        n = len(e.ids)
        ids[i, :n] = e.ids
        mask[i, :n] = 1
        types[i, :n] = e.type_ids
    return Encoded(ids, mask, types)
