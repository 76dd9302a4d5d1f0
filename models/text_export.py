"""ONNX export, parity and variants of text students (input_ids + attention_mask → one output).

models/export.py handles students with one float input; a text student differs in its inputs
(two int64 tensors whose sequence length is as dynamic as the batch), in how it is fed for
parity and latency (batches cut to their longest row, as the trainer does), and in what it ships:
the tokenizer files go beside the ONNX file, in a zip per precision.

    export_text_onnx(predictor, out / "model.onnx", opset=18, output_name="sentence_embedding")
    parity = check_text_parity(out / "model.onnx", reference, ids, mask)
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdserve.models import export as tensor_export
from kdserve.service.serving.textio import ATTENTION_MASK, INPUT_IDS

log = logging.getLogger("kdserve.export")

# The output of an embedding student. Not "embedding": on BERT-like graphs the exporter already
# has values named after the embedding modules, and a clash renames the graph output.
EMBEDDING_OUTPUT = "sentence_embedding"
LOGITS_OUTPUT = tensor_export.OUTPUT_NAME
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed member timestamps: the same files always give the same zip bytes


def export_text_onnx(model: torch.nn.Module, path: Path, opset: int, output_name: str, max_positions: int = 512) -> int:
    """Write `model(input_ids, attention_mask)` as ONNX with dynamic batch and sequence dimensions;
    returns the opset written (see kdserve.models.export.export_onnx)."""
    model = model.eval().cpu()
    example = (torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    seq = torch.export.Dim("sequence", min=1, max=max(2, max_positions))
    with tensor_export._quiet_exporters():
        torch.onnx.export(model, example, str(path), input_names=[INPUT_IDS, ATTENTION_MASK],
                          output_names=[output_name], dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                          opset_version=opset, dynamo=True, external_data=False, optimize=True)
    return tensor_export.model_opset(path)


def trimmed_batches(ids: np.ndarray, mask: np.ndarray, batch_size: int):
    """(start, ids, mask) chunks, each cut to its longest row."""
    for start in range(0, len(ids), batch_size):
        m = mask[start : start + batch_size]
        width = max(int(m.sum(1).max()), 1)
        yield start, np.ascontiguousarray(ids[start : start + batch_size, :width]), np.ascontiguousarray(m[:, :width])


def run_text_onnx(session, ids: np.ndarray, mask: np.ndarray, batch_size: int = 64) -> np.ndarray:
    name = session.get_outputs()[0].name
    parts = [session.run([name], {INPUT_IDS: i, ATTENTION_MASK: m})[0] for _, i, m in trimmed_batches(ids, mask, batch_size)]
    return np.concatenate(parts)


@dataclass
class TextParity:
    max_abs_diff: float
    max_rel_diff: float
    agreement: float  # argmax agreement (classification) or mean cosine (embeddings) with the reference
    outputs: np.ndarray


def compare(got: np.ndarray, ref: np.ndarray, task: str) -> TextParity:
    max_abs, max_rel = tensor_export.output_diff(got, ref)
    if task == "embedding":
        agree = mean_cosine(got, ref)
    else:
        agree = float(np.mean(got.argmax(1) == ref.argmax(1))) if len(got) else 1.0
    return TextParity(max_abs, max_rel, agree, got)


def check_text_parity(path: Path, reference: np.ndarray, ids: np.ndarray, mask: np.ndarray, task: str) -> TextParity:
    return compare(run_text_onnx(tensor_export.ort_session(path), ids, mask), reference, task)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(1)
    den = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)
    return float(np.mean(num / den)) if len(a) else 1.0


def text_latency_ms(path: Path, seq_len: int, batch: int = 1, *, vocab_size: int = 1000, session=None,
                    repeats: int = 200, budget_s: float = 2.0) -> float:
    """Median onnxruntime wall time of one call on [batch, seq_len] tokens (see kdserve.models.export.latency_ms)."""
    session = session or tensor_export.ort_session(path)
    rng = np.random.default_rng(0)
    feed = {INPUT_IDS: rng.integers(1, max(2, vocab_size), (batch, seq_len)).astype(np.int64),
            ATTENTION_MASK: np.ones((batch, seq_len), dtype=np.int64)}
    return tensor_export.time_session(session, feed, repeats, budget_s, warmup=3)


# ---- variants ----------------------------------------------------------------------------------


def quantize_text_int8(fp32_path: Path, out_path: Path) -> str:
    """Dynamic int8: the weights of every MatMul with a constant weight, and the token-embedding
    tables (Gather), in int8; activations quantized per batch at run time. The embedding table is
    most of a small text student's bytes, which is why Gather is quantized too."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), tensor_export._quiet_quantizer():
        warnings.simplefilter("ignore")
        quantize_dynamic(fp32_path, out_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
                         per_channel=False, reduce_range=False, extra_options={"MatMulConstBOnly": True})
    return "dynamic int8 (MatMulInteger with int8 weights, int8 token-embedding tables, per-batch uint8 activations)"


@dataclass
class TextVariant:
    precision: str
    published: bool
    reason: str
    path: Path | None = None
    artifact: dict = field(default_factory=dict)


def build_text_variants(fp32_path: Path, precisions: list[str], *, ids: np.ndarray, mask: np.ndarray,
                        reference: np.ndarray, labels: np.ndarray | None, task: str, max_drop: float,
                        seq_len: int, vocab_size: int, out_dir: Path) -> list[TextVariant]:
    """Make, measure and gate int8/fp16 variants of an exported text student on the validation set.

    Gate: classification → accuracy (labelled rows) or argmax agreement with fp32 may drop by at
    most `max_drop`; embeddings → the mean cosine to the fp32 outputs must stay ≥ 1 − max_drop.
    A variant that cannot be built is reported, never fatal."""
    results = []
    for precision in dict.fromkeys(p for p in precisions if p != "fp32"):
        path = out_dir / f"model.{precision}.onnx"
        try:
            if precision == "int8":
                how = quantize_text_int8(fp32_path, path)
            elif precision == "fp16":
                how = tensor_export.convert_fp16(fp32_path, path)
            else:
                raise ValueError(f"unknown precision {precision!r}")
            session = tensor_export.ort_session(path)
            got = run_text_onnx(session, ids, mask)
            parity = compare(got, reference, task)
            art = artifact_fields(path, precision, parity, got, labels, task, seq_len, vocab_size, session)
            art["quantization"] = how
            if task == "embedding":
                drop, what = 1.0 - parity.agreement, f"mean cosine {parity.agreement:.4f} to the fp32 outputs"
            elif labels is not None and (labels >= 0).any():
                fp32_acc = float(np.mean(reference.argmax(1)[labels >= 0] == labels[labels >= 0]))
                art["accuracy_delta"] = round(art["accuracy"] - fp32_acc, 6)
                drop, what = -art["accuracy_delta"], f"accuracy {art['accuracy']:.4f} vs fp32 {fp32_acc:.4f}"
            else:
                drop, what = 1.0 - parity.agreement, f"argmax agreement {parity.agreement:.4f} with fp32"
            ok = drop <= max_drop + 1e-9
            reason = (f"{precision} {'within' if ok else 'outside'} the budget: {what} (max_accuracy_drop "
                      f"{max_drop:g})")
            results.append(TextVariant(precision, ok, reason, path, art))
        except Exception as exc:  # one variant failing must not fail the job
            log.warning("%s variant of %s failed: %s", precision, fp32_path, exc, exc_info=True)
            results.append(TextVariant(precision, False, f"the {precision} variant could not be built or run: "
                                       f"{type(exc).__name__}: {exc}"))
    return results


def artifact_fields(path: Path, precision: str, parity: TextParity, outputs: np.ndarray, labels: np.ndarray | None,
                    task: str, seq_len: int, vocab_size: int, session=None) -> dict:
    """The model card's artifact entry for one ONNX file of a text student."""
    accuracy = None
    if task == "classification" and labels is not None and (labels >= 0).any():
        accuracy = float(np.mean(outputs.argmax(1)[labels >= 0] == labels[labels >= 0]))
    session = session or tensor_export.ort_session(path)
    return {
        "format": "onnx", "precision": precision, "size_bytes": path.stat().st_size,
        "sha256": tensor_export.sha256_file(path), "max_abs_diff": parity.max_abs_diff,
        "max_rel_diff": parity.max_rel_diff,
        "argmax_agreement": parity.agreement if task == "classification" else None,
        "mean_cosine": parity.agreement if task == "embedding" else None,
        "accuracy": accuracy,
        "latency_ms_batch1": round(text_latency_ms(path, seq_len, 1, vocab_size=vocab_size, session=session), 5),
        "latency_ms_batch64": round(text_latency_ms(path, seq_len, 64, vocab_size=vocab_size, session=session,
                                                    repeats=30), 5),
        "sequence_length": seq_len, "opset": tensor_export.model_opset(path),
    }


# ---- what ships beside the model ----------------------------------------------------------------


def tokenizer_bundle(tokenizer_json: str, files: dict[str, bytes], info: dict) -> dict[str, bytes]:
    """The tokenizer files a client needs: the canonical tokenizer.json, the original tokenizer
    files of the teacher folder, and kdserve_text.json (max_length, input and output names, task)."""
    bundle = {"tokenizer.json": tokenizer_json.encode("utf-8"), **files}
    bundle["kdserve_text.json"] = json.dumps(info, indent=2, sort_keys=True).encode("utf-8")
    return bundle


def write_zip(path: Path, onnx_path: Path, tokenizer: dict[str, bytes]) -> None:
    """model.onnx + tokenizer/… in a zip whose bytes depend only on its contents."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("model.onnx", ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(onnx_path, "rb") as f:
            zf.writestr(info, f.read())
        for name in sorted(tokenizer):
            member = zipfile.ZipInfo(f"tokenizer/{name}", ZIP_DATE)
            member.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(member, tokenizer[name])
