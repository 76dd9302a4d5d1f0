"""What a job will cost its worker, estimated at pre-flight from the spec alone (the API has no
torch), so that a job too large for the workers is refused with a 422 naming the parameter to
lower instead of taking a worker down with it.

The estimate counts what dominates a worker's memory:
- the student's parameters, four times (weights, gradients and Adam's two moments);
- the activations one batch keeps for the backward pass (batch_size × the widths the layers write);
- the training data in memory (features as float32, or text as three int64 token arrays of
  rows × max_length), and the teacher's cached outputs (rows × classes);
- the teacher's own weights.

The parameter counts follow models/zoo.py's builders layer by layer (exactly, for the tensor
students; api_tests/unit/test_budgets.py checks them against the real modules) and are the input
to the single-file ONNX limit too: a student whose weights do not fit one ONNX file is refused
here rather than published without them. The per-process memory limit the workers set
(KDSERVE_WORKER_MAX_MEMORY_BYTES) is the backstop for what an estimate misses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

# the most weights one ONNX file holds (service/sandbox/model_files.py says why): past it a student is refused
from kdserve.service.sandbox.model_files import ONNX_SINGLE_FILE_BYTES  # noqa: F401  (kdserve.service.api.jobs reads it here)
from kdserve.service.spec.architectures import ArchitectureError, image_shape_for

FLOAT = 4  # bytes of a float32
TRAINING_COPIES = 4  # weights, gradients, two Adam moments
TOKEN_ARRAYS = 3  # input_ids, attention_mask, token_type_ids, int64 each


@dataclass
class Shapes:
    """What the estimate needs to know besides the student's params."""
    input_shape: list[int]  # one sample's features (numeric datasets)
    width: int  # the student's output width (classes, or the teacher's embedding width)
    rows: int  # training + validation rows
    batch_size: int
    max_length: int = 0  # text: tokens per sample
    teacher_parameters: int = 0
    teacher_details: dict[str, Any] = field(default_factory=dict)  # text teachers: vocab, layers, hidden…


@dataclass
class Estimate:
    parameters: int
    memory: dict[str, int]  # bytes by part: training_state, activations, data, teacher

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory.values())


# The parameter to lower when a part of the estimate is what breaks the budget.
PARAM_OF_PART = {"training_state": "student.params", "activations": "training.batch_size", "data": "dataset_id",
                 "tokens": "text.max_length", "teacher": "teacher_id"}


def image_shape(shape: list[int], explicit: list[int] | None) -> list[int] | None:
    """The image [C, H, W] a CNN or patch student views the input as, or None where the builder refuses."""
    try:
        return image_shape_for(list(shape), explicit)
    except ArchitectureError:
        return None


def _mlp(p: dict, x: Shapes) -> tuple[int, int]:
    w = math.prod(x.input_shape)
    params, acts = 0, w
    for h in p["hidden_sizes"]:
        params += w * h + h + (2 * h if p.get("batch_norm") else 0)
        acts += 4 * h  # linear, norm, activation, dropout outputs
        w = h
    return params + w * x.width + x.width, acts + x.width


def _cnn(p: dict, x: Shapes) -> tuple[int, int] | None:
    img = image_shape(x.input_shape, p.get("image_shape"))
    if img is None:
        return None
    (c, h, w), k = img, p["kernel_size"]
    params = acts = 0
    for out in p["channels"]:
        params += c * out * k * k + out + 2 * out  # conv + batch norm
        acts += 3 * out * h * w  # conv, norm, relu
        if min(h, w) >= 4:
            h, w = h // 2, w // 2
            acts += out * h * w
        c = out
    return params + c * x.width + x.width, acts + c + x.width


def _encoder(layers: int, hidden: int, ff: int, heads: int, tokens: int) -> tuple[int, int]:
    """Parameters and per-sample activations of `layers` transformer encoder layers."""
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * ff + ff + hidden + 4 * hidden
    acts = tokens * (10 * hidden + 2 * ff) + 2 * heads * tokens * tokens  # projections, norms, scores, softmax
    return layers * per_layer, layers * acts


def _patch_transformer(p: dict, x: Shapes) -> tuple[int, int] | None:
    dim, ps = p["dim"], p["patch_size"]
    if len(x.input_shape) == 1 and p.get("image_shape") is None:
        tokens, token_width = -(-x.input_shape[0] // ps), ps
    else:
        img = image_shape(x.input_shape, p.get("image_shape"))
        if img is None or img[1] % ps or img[2] % ps:
            return None
        tokens, token_width = (img[1] // ps) * (img[2] // ps), img[0] * ps * ps
    enc_params, enc_acts = _encoder(p["depth"], dim, max(1, int(dim * p["mlp_ratio"])), p["heads"], tokens)
    params = token_width * dim + dim + tokens * dim + enc_params + 2 * dim + dim * x.width + x.width
    return params, enc_acts + 2 * tokens * dim


def _transformer(p: dict, x: Shapes) -> tuple[int, int]:
    d = x.teacher_details
    hidden = p["hidden"]
    vocab = p.get("vocab_size") or int(d.get("vocab_size") or 0)
    positions = p.get("max_positions") or min(int(d.get("max_positions") or 512), 512)
    enc_params, enc_acts = _encoder(p["layers"], hidden, p.get("intermediate") or 4 * hidden, p["heads"], x.max_length)
    params = (vocab + positions + 2) * hidden + 2 * hidden + enc_params + hidden * hidden + hidden
    return params + hidden * x.width + x.width, enc_acts


def _layer_dropped(p: dict, x: Shapes) -> tuple[int, int]:
    """A copy of part of the teacher: never more parameters than the teacher (plus its head)."""
    d = x.teacher_details
    depth, teacher_hidden = int(d.get("num_layers") or 1), int(d.get("hidden_size") or 0)
    kept = len(p["layers"]) if p.get("layers") else max(1, depth // (p.get("every") or 2))
    hidden = p.get("hidden_size") or teacher_hidden
    _, acts = _encoder(kept, hidden, 4 * teacher_hidden, max(1, teacher_hidden // 64), x.max_length)
    return x.teacher_parameters + hidden * x.width + x.width, acts


SIZERS: dict[str, Callable[[dict, Shapes], tuple[int, int] | None]] = {
    "mlp": _mlp, "cnn": _cnn, "patch_transformer": _patch_transformer, "transformer": _transformer,
    "layer_dropped": _layer_dropped,
}


def estimate(architecture: str, params: dict, x: Shapes) -> Estimate | None:
    """The job's estimate; None for an architecture this module does not know, or params its
    builder refuses anyway (the worker then fails the job with the builder's message)."""
    sizer = SIZERS.get(architecture)
    sized = sizer(params, x) if sizer else None
    if sized is None:
        return None
    parameters, acts_per_sample = sized
    text = x.max_length > 0
    data = x.rows * x.width * FLOAT  # the teacher's cached outputs
    memory = {"training_state": parameters * FLOAT * TRAINING_COPIES,
              "activations": x.batch_size * acts_per_sample * FLOAT,
              "teacher": x.teacher_parameters * FLOAT}
    if text:
        memory["tokens"] = x.rows * x.max_length * 8 * TOKEN_ARRAYS
        memory["data"] = data
    else:
        memory["data"] = data + x.rows * math.prod(x.input_shape) * FLOAT
    return Estimate(parameters, memory)


WORKER_MEMORY_SHARE = 0.8  # of the machine's memory, for all of `kdserve up`'s workers together


def worker_memory_limit(max_bytes: int | None, workers: int = 1) -> int:
    """RLIMIT_DATA for one worker process: KDSERVE_WORKER_MAX_MEMORY_BYTES, or unset, its share of
    80% of the machine's memory (0: no limit). RLIMIT_DATA, not RLIMIT_AS: it counts the memory a
    process writes (heap, anonymous mappings), not address space a CUDA driver only reserves."""
    if max_bytes is not None:
        return max_bytes
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(physical * WORKER_MEMORY_SHARE) // max(1, workers)
