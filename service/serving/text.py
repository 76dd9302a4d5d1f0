"""Serving text students: texts in (Open Inference Protocol BYTES tensors, or plain strings for
/v1 predict), token ids out, tokenised in the API process with the student's own tokenizer.

Uses the `tokenizers` library (Rust) through kdserve.service.serving.textio: no torch, no transformers. The
tokenizer is the one the student was trained with (the canonical tokenizer.json the worker stored
beside the model), truncating at the job's max_length, so a served text becomes exactly the ids a
training text did.

    tokenizers = TextTokenizers()
    feeds = text_feeds(tokenizers.get(blobs, model_id, card), texts, pairs, max_chars)   # {input_ids, attention_mask}

Tokenising takes time in proportion to the characters: the routes run it in a worker thread (the
`tokenizers` library releases the GIL while it encodes), and a request has a budget of characters
(KDSERVE_MAX_REQUEST_TEXT_CHARS) besides its row limit (KDSERVE_MAX_REQUEST_ROWS, checked by the
routes before this module sees the texts).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from kdserve.service.model_card import ModelCard
from kdserve.service.serving import textio
from kdserve.service.errors import ApiError

MAX_TEXT_CHARS = 200_000  # one text (the same bound as a dataset's)


class TextInputError(ValueError):
    """A text input the model cannot take; the message says what is wrong (a 400 on /v2, 422 on /v1)."""


def tokenizer_key(model_id: str) -> str:
    """Where the worker stores a text student's canonical tokenizer in the blob store."""
    return f"models/{model_id}/tokenizer/tokenizer.json"


class TextTokenizers:
    """Configured tokenizers of served text models, least recently used dropped first."""

    def __init__(self, max_models: int = 64):
        self.max_models = max_models
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, blobs, model_id: str, card: ModelCard):
        with self._lock:
            tok = self._items.get(model_id)
            if tok is not None:
                self._items.move_to_end(model_id)
                return tok
        try:
            json_text = blobs.get_bytes(tokenizer_key(model_id)).decode("utf-8")
        except FileNotFoundError:
            raise TextInputError(f"model {model_id}'s tokenizer is gone from the blob store") from None
        tok = textio.configured(json_text, card.text.max_length)
        with self._lock:
            self._items[model_id] = tok
            while len(self._items) > self.max_models:
                self._items.popitem(last=False)
        return tok

    def cached(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._items

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)


def strings(data: Any, label: str) -> list[str]:
    """A BYTES tensor's values as Python strings: a flat list (or [N, 1] nested list) of strings."""
    if isinstance(data, np.ndarray):  # numbers packed by a parsing child (service/bodies.py): refused below
        data = data.tolist()
    if isinstance(data, list) and data and all(isinstance(d, list) and len(d) == 1 for d in data):
        data = [d[0] for d in data]
    if not isinstance(data, list) or not data:
        raise TextInputError(f"{label}: BYTES data must be a non-empty list of strings")
    for i, v in enumerate(data):
        if not isinstance(v, str):
            raise TextInputError(f"{label}: element {i} is {type(v).__name__}, not a string")
        if len(v) > MAX_TEXT_CHARS:
            raise TextInputError(f"{label}: element {i} has {len(v)} characters; the limit is {MAX_TEXT_CHARS}")
    return data


def text_feeds(tok, texts: list[str], pairs: list[str] | None, max_chars: int) -> dict[str, np.ndarray]:
    """The student's two int64 inputs for these texts (and second texts of pairs); 413 past the
    request's character budget `max_chars`."""
    if pairs is not None and len(pairs) != len(texts):
        raise TextInputError(f"{len(texts)} texts but {len(pairs)} text pairs: send one second text per text")
    chars = sum(map(len, texts)) + sum(map(len, pairs or ()))
    if chars > max_chars:
        raise ApiError(413, "payload_too_large", f"the request has {chars} characters of text; the limit is "
                       f"{max_chars} per request (KDSERVE_MAX_REQUEST_TEXT_CHARS): split it", "inputs")
    try:
        enc = textio.encode_configured(tok, texts, pairs)
    except textio.TokenizerError as exc:
        raise TextInputError(str(exc)) from None
    return {textio.INPUT_IDS: enc.input_ids, textio.ATTENTION_MASK: enc.attention_mask}


def text_inputs_metadata(card: ModelCard) -> list[dict]:
    """What /v2 metadata lists for a text student: the BYTES inputs it accepts besides its token ids."""
    out = [{"name": textio.TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    if card.text.text_pairs:
        out.append({"name": textio.TEXT_PAIR_INPUT, "datatype": "BYTES", "shape": [-1]})
    return out + [spec.model_dump() for spec in card.model_inputs]


def v2_text_feeds(tok, inputs: list, pairs_allowed: bool, max_chars: int) -> dict[str, np.ndarray]:
    """An Open Inference Protocol request's BYTES tensors (`text`, optionally `text_pair`; objects
    with name, datatype, shape and data) → the student's token inputs. What /v2 infer calls for a
    text student when a request sends BYTES instead of token ids."""
    by_name: dict[str, list[str]] = {}
    for t in inputs:
        if t.datatype != "BYTES" or t.name not in (textio.TEXT_INPUT, textio.TEXT_PAIR_INPUT):
            raise TextInputError(f"input {t.name!r} ({t.datatype}): a text request sends BYTES tensors named "
                                 f"{textio.TEXT_INPUT!r} (and {textio.TEXT_PAIR_INPUT!r} for pairs), or token ids "
                                 f"({textio.INPUT_IDS}, {textio.ATTENTION_MASK}) as INT64")
        if t.name in by_name:
            raise TextInputError(f"input {t.name!r} is given twice")
        values = strings(t.data, f"input {t.name!r}")
        if list(t.shape) not in ([len(values)], [len(values), 1]):
            raise TextInputError(f"input {t.name!r}: shape {list(t.shape)} does not match its {len(values)} strings")
        by_name[t.name] = values
    if textio.TEXT_INPUT not in by_name:
        raise TextInputError(f"missing input {textio.TEXT_INPUT!r} (BYTES)")
    if textio.TEXT_PAIR_INPUT in by_name and not pairs_allowed:
        raise TextInputError("this model was trained on single texts; send no text_pair")
    return text_feeds(tok, by_name[textio.TEXT_INPUT], by_name.get(textio.TEXT_PAIR_INPUT), max_chars)
