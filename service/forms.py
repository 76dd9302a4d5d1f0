"""The multipart forms of the two uploads, POST /v1/teachers and POST /v1/datasets, as the OpenAPI
schemas of their fields: the routers document their request bodies with them (`openapi_extra`,
so /openapi.json and docs/api.md show them) and the CLI's upload commands take each option's help
from them (kdserve/cli/uploads.py). Each field is described here once.

Plain data built from kdserve.service.vocab: no FastAPI and no torch or onnx (the routers pull
those in through service/sandbox), so the SDK and the CLI may import it.
"""

from __future__ import annotations

from typing import Any

from kdserve.service.vocab import DATASET_FORMATS, TASKS, TEACHER_FORMATS

# POST /v1/teachers (service/api/teachers.py)
TEACHER_FIELDS: dict[str, dict[str, Any]] = {
    "file": {"type": "string", "format": "binary",
             "description": "TorchScript archive, ONNX file (or a zip of an ONNX file and its external data "
             "file), or a zip of a Hugging Face model folder (config.json, *.safetensors, tokenizer files)"},
    "data": {"type": "string", "format": "binary",
             "description": "onnx only: the model's external data file (e.g. model.onnx.data), under the name "
             "the model refers to it by"},
    "name": {"type": "string", "maxLength": 255},
    "format": {"type": "string", "enum": list(TEACHER_FORMATS), "description": "detected from the content when omitted"},
    "input_shape": {"type": "string", "description": "JSON list: the per-sample input shape"},
    "task": {"type": "string", "enum": list(TASKS), "description": "hf only: classification (logits) or "
             "embedding (pooled sentence vector); default: from config.json's architectures"},
}

# POST /v1/datasets (service/api/datasets.py)
DATASET_FIELDS: dict[str, dict[str, Any]] = {
    "file": {"type": "string", "format": "binary",
             "description": "npz (x, optional y), CSV with a header row, or JSONL text (one object per line)"},
    "name": {"type": "string", "maxLength": 255},
    "format": {"type": "string", "enum": list(DATASET_FORMATS)},
    "label_column": {"type": "string", "description": "CSV and JSONL: the label column. Left out: a CSV column "
                     "named label, target, class or y (the answer's details say which), JSONL's `label`; a "
                     "column named but missing is a 422 that lists the columns"},
    "text_column": {"type": "string", "default": "text", "description": "jsonl: the field holding the text"},
    "text_pair_column": {"type": "string", "default": "text_pair",
                         "description": "jsonl: the field holding the second text of a pair (when present)"},
}


def multipart_body(fields: dict[str, dict[str, Any]], required: tuple[str, ...] = ("file",)) -> dict[str, Any]:
    """An operation's `openapi_extra`: its request body is a multipart form of `fields`."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": list(required), "properties": fields}}}}}


TEACHER_FORM = multipart_body(TEACHER_FIELDS)
DATASET_FORM = multipart_body(DATASET_FIELDS)
