"""What an exported student takes and gives, described once (as Optimum's `OnnxConfig` does):
input names, dtypes and shapes with their dynamic axes, how to make sample inputs for export and
latency, how to feed a validation set in batches, and how to compare outputs with the PyTorch
reference. models/export.py runs one export → parity → variants path for every spec; a new kind of
student input is a new spec, not a new chain.

    spec = tensor_input([1, 28, 28], width=10)
    spec = text_input(output="sentence_embedding", width=384, task="embedding", vocab_size=30522,
                      max_positions=512, sequence_length=24)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from kdserve.service.model_card import TensorSpec
from kdserve.service.serving.textio import ATTENTION_MASK, INPUT_IDS

INPUT_NAME, LOGITS = "input", "logits"
# The output of an embedding student. Not "embedding": on BERT-like graphs the exporter already
# has values named after the embedding modules, and a clash renames the graph output.
EMBEDDING_OUTPUT = "sentence_embedding"

_NUMPY = {"FP32": np.float32, "INT64": np.int64}
_TORCH = {"FP32": torch.float32, "INT64": torch.long}

Inputs = Mapping[str, np.ndarray]  # a set of samples: input name → array, rows along axis 0


@dataclass(frozen=True)
class InputSpec:
    """One kind of student input.

      inputs          the ONNX inputs (name, datatype, shape with -1 for a dynamic axis; axis 0 is
                      the batch, axis 1 of a two-dimensional token input the sequence)
      output          the ONNX output every check compares (the card's `output`)
      width           that output's width
      task            "classification" (outputs compared by argmax) or "embedding" (mean cosine)
      batch_size      rows per onnxruntime call when running a validation set
      trim_by         an input whose row sums are row lengths (an attention mask): each batch is cut
                      to its longest row, as the trainer does
      vocab_size      token inputs: sample ids are drawn below it
      max_positions   token inputs: the longest sequence the export admits
      sequence_length token inputs: the length latency is measured at (the card's sequence_length)
      int8            a fixed int8 method (models/export.quantize_int8) or None: chosen per
                      architecture (export.int8_method)
    """

    kind: str
    inputs: tuple[TensorSpec, ...]
    output: str
    width: int
    task: str = "classification"
    batch_size: int = 256
    trim_by: str | None = None
    vocab_size: int | None = None
    max_positions: int | None = None
    sequence_length: int | None = None
    int8: str | None = None

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def output_spec(self) -> TensorSpec:
        return TensorSpec(name=self.output, shape=[-1, self.width], datatype="FP32")

    # -- export --------------------------------------------------------------------------------

    def _concrete(self, spec: TensorSpec, batch: int, length: int) -> list[int]:
        return [batch if axis == 0 else (length if n < 0 else n) for axis, n in enumerate(spec.shape)]

    def example(self) -> tuple[torch.Tensor, ...]:
        """Inputs the exporter traces with (batch 2, sequence 8)."""
        return tuple((torch.ones if i.name == ATTENTION_MASK else torch.zeros)(
            self._concrete(i, 2, 8), dtype=_TORCH[i.datatype]) for i in self.inputs)

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        seq = torch.export.Dim("sequence", min=1, max=max(2, self.max_positions or 2))
        return tuple({axis: batch if axis == 0 else seq for axis, n in enumerate(i.shape) if n < 0}
                     for i in self.inputs)

    # -- feeding -------------------------------------------------------------------------------

    def as_inputs(self, data: np.ndarray | Inputs) -> dict[str, np.ndarray]:
        """Samples as input name → array (a bare array is the only input's), in each input's dtype."""
        named = dict(data) if isinstance(data, Mapping) else {self.inputs[0].name: data}
        return {i.name: np.ascontiguousarray(named[i.name], _NUMPY[i.datatype]) for i in self.inputs}

    def batches(self, data: Inputs, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most batch_size rows, each cut to its longest row when trim_by is set."""
        size = batch_size or self.batch_size
        rows = len(next(iter(data.values())))
        for start in range(0, rows, size):
            feed = {n: a[start : start + size] for n, a in data.items()}
            if self.trim_by is not None:
                width = max(int(feed[self.trim_by].sum(1).max()), 1)
                feed = {n: np.ascontiguousarray(a[:, :width]) for n, a in feed.items()}
            yield feed

    def sample_feed(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of `batch` rows (sequence_length tokens) for timing a session."""
        rng = np.random.default_rng(seed)
        feed = {}
        for i in self.inputs:
            shape = self._concrete(i, batch, self.sequence_length or 1)
            if i.datatype == "FP32":
                feed[i.name] = rng.standard_normal(shape).astype(np.float32)
            elif i.name == ATTENTION_MASK:
                feed[i.name] = np.ones(shape, np.int64)
            else:
                feed[i.name] = rng.integers(1, max(2, self.vocab_size or 2), shape).astype(np.int64)
        return feed

    # -- comparing -----------------------------------------------------------------------------

    def agreement(self, got: np.ndarray, ref: np.ndarray) -> float:
        """How far the outputs agree: argmax agreement, or for embeddings the mean cosine."""
        if not len(got):
            return 1.0
        if self.task == "embedding":
            return mean_cosine(got, ref)
        return float(np.mean(got.argmax(1) == ref.argmax(1)))

    def accuracy(self, outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
        """Accuracy on the labelled rows (label ≥ 0); None for embeddings or without labels."""
        if self.task == "embedding" or labels is None or not (labels >= 0).any():
            return None
        labelled = labels >= 0
        return float(np.mean(outputs.argmax(1)[labelled] == labels[labelled]))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(1)
    den = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)
    return float(np.mean(num / den)) if len(a) else 1.0


def tensor_input(shape: list[int], width: int) -> InputSpec:
    """A float32 input of one sample shape (a dynamic batch): the zoo's tabular and image students."""
    return InputSpec(kind="tensor", inputs=(TensorSpec(name=INPUT_NAME, shape=[-1, *shape], datatype="FP32"),),
                     output=LOGITS, width=width)


def text_input(*, output: str, width: int, task: str, vocab_size: int, max_positions: int,
               sequence_length: int) -> InputSpec:
    """Token ids and attention mask, batch and sequence dynamic: the text students. int8 quantizes
    the token-embedding tables too (most of a small text student's bytes)."""
    tokens = [-1, -1]
    return InputSpec(kind="text", inputs=(TensorSpec(name=INPUT_IDS, shape=tokens, datatype="INT64"),
                                          TensorSpec(name=ATTENTION_MASK, shape=tokens, datatype="INT64")),
                     output=output, width=width, task=task, batch_size=64, trim_by=ATTENTION_MASK,
                     vocab_size=vocab_size, max_positions=max_positions, sequence_length=sequence_length,
                     int8="dynamic_tokens")
