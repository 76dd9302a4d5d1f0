"""The words a job spec, an upload form and the CLI share, each defined once with a one-line
description: the API validates against these, the worker loads what they name, and the CLI's help
text is made from them (`choices` and `describe`).

Torch-free, like the rest of kdserve.service.
"""

from __future__ import annotations

# Teacher files the loader (kdserve.models.teachers.load_teacher) runs; the upload form accepts
# exactly these. A bare .safetensors file holds weights without a model: it is refused.
TEACHER_FORMATS: dict[str, str] = {
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "onnx": "an ONNX model, or a zip of an ONNX model and its external data file",
    "hf": "a zip of a Hugging Face model folder (config.json, *.safetensors, tokenizer files)",
}

# What a Hugging Face (text) teacher outputs.
TASKS: dict[str, str] = {
    "classification": "class logits",
    "embedding": "a pooled sentence vector",
}

# Dataset files the ingest reads (kdserve.service.ingest).
DATASET_FORMATS: dict[str, str] = {
    "npz": "numpy .npz with x (features) and optional y (int labels)",
    "csv": "numeric CSV, one row per sample, an optional label column",
    "jsonl": "JSON lines of texts (and optional labels), tokenised by a text teacher",
}
TEXT_DATASET_FORMATS: tuple[str, ...] = ("jsonl",)

# Precisions a published model is served and downloaded in; fp32 always exists.
PRECISIONS: dict[str, str] = {
    "fp32": "the exported student as trained",
    "int8": "int8 quantized (dynamic for MLP/transformer students, static QDQ for CNNs)",
    "fp16": "half precision, for GPU serving",
}
DEFAULT_PRECISION = "fp32"
# The extra precisions a job may ask to publish (export.quantize).
QUANTIZE: tuple[str, ...] = tuple(p for p in PRECISIONS if p != DEFAULT_PRECISION)

OPTIMIZERS: dict[str, str] = {
    "adamw": "Adam with decoupled weight decay",
    "adam": "Adam (weight decay added to the gradient)",
    "sgd": "SGD with Nesterov momentum 0.9",
}


def choices(vocab: dict[str, str] | tuple[str, ...]) -> str:
    """'a | b | c': the names, for a CLI option's help."""
    return " | ".join(vocab)


def describe(vocab: dict[str, str]) -> str:
    """'a: what a is; b: what b is': names with their descriptions, for longer help text."""
    return "; ".join(f"{name}: {text}" for name, text in vocab.items())

# What a webhook endpoint can subscribe to (POST /v1/webhooks `events`); the deliveries' `type`.
# Written by the outbox (kdserve.service.store.outbox) in the transaction that makes them true.
WEBHOOK_EVENTS: dict[str, str] = {
    **{f"job.{s}": f"a job became {s}" for s in ("queued", "running", "succeeded", "failed", "cancelled")},
    **{f"search.{s}": f"a search became {s}" for s in ("queued", "running", "succeeded", "failed", "cancelled")},
    "model.published": "a job published its model",
    "model.variant_withheld": "a requested int8/fp16 variant was not published: its accuracy gate refused it",
}
# Sent by POST /v1/webhooks/{id}/test whatever the endpoint subscribes to.
WEBHOOK_TEST_EVENT = "webhook.test"
