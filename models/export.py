"""ONNX export of a trained student, the parity check that gates it, and its int8/fp16 variants:
one path for every kind of student input, described by an InputSpec (models/input_spec.py).

Follows Optimum's exporter: export, then run the file in onnxruntime on real inputs and compare
with the PyTorch reference output by output. Unlike Optimum, a variant that drifts is never shipped
with a warning: every variant is measured on the job's validation set (max abs/relative difference
per output, argmax agreement, task accuracy, accuracy delta vs fp32, latency at batch 1 and 64) and
`build_variants` says, for each, whether it may be published and why.

    spec = tensor_input([64], width=10)          # or text_input(...) for input_ids + attention_mask
    opset = export_student(student, spec, out / "model.onnx", opset=17)
    parity = check_parity(out / "model.onnx", reference, val_x, spec)
    results = build_variants(out / "model.onnx", ["int8", "fp16"], spec=spec, calib_x=..., val_x=..., ...)
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import warnings
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

from kdserve.models.input_spec import EMBEDDING_OUTPUT, INPUT_NAME, LOGITS, InputSpec, Inputs, tensor_input  # noqa: F401
from kdserve.service.sandbox.model_files import ONNX_SINGLE_FILE_BYTES, sha256_file  # noqa: F401  (sha256_file: re-exported)

OUTPUT_NAME = LOGITS
PRECISIONS = ("fp32", "int8", "fp16")

# protobuf refuses to serialise a message over 2 GiB; stay well below it so the graph itself
# (nodes, names, shapes) still fits next to the weights in one file. The API refuses larger students
# at pre-flight (service/budgets.py), and the worker never publishes an artifact of several files.
EXTERNAL_DATA_THRESHOLD_BYTES = ONNX_SINGLE_FILE_BYTES

# How int8 is made for the zoo's students: weights-only dynamic quantization where the work is
# MatMul/Gemm (activation ranges are measured per batch at run time: no calibration needed, and
# transformers' activations have outliers a static range clips), static QDQ with calibration where
# the work is convolution (ConvInteger of dynamic quantization is slower than fp32 on CPUs; QDQ
# Conv runs as QLinearConv). An architecture not listed here is decided from its graph.
INT8_METHOD_BY_KIND = {"mlp": "dynamic", "patch_transformer": "dynamic", "cnn": "static_qdq"}
CALIBRATION_SAMPLES = 256

log = logging.getLogger("kdserve.export")


# ---- export -------------------------------------------------------------------------------------


def parameter_bytes(model: torch.nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]))


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters print progress to stdout and log tracebacks for a failed opset down-conversion
    (which they survive by keeping their native opset; export_student reports the opset it got)."""
    names = ("torch.onnx", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for n in names:
                logging.getLogger(n).setLevel(logging.CRITICAL)
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def export_student(model: torch.nn.Module, spec: InputSpec, path: Path, opset: int = 17) -> int:
    """Write `model` (in eval mode, on the CPU) as ONNX with the spec's inputs, output and dynamic
    axes (the batch; a token input's sequence too).

    One self-contained file while the parameters stay under EXTERNAL_DATA_THRESHOLD_BYTES (a
    client downloads one file); beyond that the weights go to an external-data file next to it
    (`<name>.data`), since one protobuf cannot exceed 2 GiB.

    Returns the opset actually written. The dynamo exporter emits its native opset (18) and then
    converts down to `opset`; when a model's ops have no down-conversion the file keeps opset 18,
    and the caller should report what it got rather than what was asked for.
    """
    model = model.eval().cpu()
    external = parameter_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
    with _quiet_exporters():
        torch.onnx.export(
            model, spec.example(), str(path), input_names=spec.names, output_names=[spec.output],
            dynamic_shapes=spec.dynamic_shapes(), opset_version=opset, dynamo=True, external_data=external,
            optimize=True,
        )
    return model_opset(path)


def rename_io(path: Path, renames: dict[str, str]) -> None:
    """Rename the graph's inputs and outputs in place (old name → new), e.g. to a teacher's tensor
    names so that a client written for the teacher works unchanged. An internal value that
    already bears a new name is renamed out of the way first (internal names are arbitrary)."""
    import onnx

    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    ends = {v.name for v in [*graph.input, *graph.output]}
    values = {v for node in graph.node for v in [*node.input, *node.output]} | {t.name for t in graph.initializer}
    moved = {}
    for new in renames.values():
        if new in values and new not in ends:
            moved[new] = next(f"{new}__{i}" for i in range(1, 1 << 20) if f"{new}__{i}" not in values)
    names = {**moved, **renames}
    for node in graph.node:
        node.input[:] = [names.get(v, v) for v in node.input]
        node.output[:] = [names.get(v, v) for v in node.output]
    for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        v.name = names.get(v.name, v.name)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def model_opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def model_files(path: Path) -> list[Path]:
    """The .onnx file and every external-data file it references (usually just the .onnx)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    extra = {entry.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    return [Path(path), *sorted(Path(path).parent / name for name in extra)]


# ---- running and comparing ----------------------------------------------------------------------


@dataclass
class Parity:
    max_abs_diff: float
    max_rel_diff: float
    agreement: float  # argmax agreement, or for embeddings the mean cosine, with the reference
    outputs: np.ndarray  # onnxruntime's outputs


def ort_session(path: Path, device: str = "cpu", threads: int = 0):
    """An onnxruntime session; CUDA first when asked for and installed (onnxruntime-gpu). Whether
    CUDA was actually taken is `session.get_providers()[0]`, not the available list: a CUDA build
    without a usable GPU or driver silently falls back to the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


def run_onnx(session, data: np.ndarray | Inputs, spec: InputSpec | None = None, outputs: list[str] | None = None):
    """Run the samples through the session in the spec's batches (a bare array: the tensor spec
    of its sample shape). With `outputs`, a dict name → array; without, the spec's output."""
    spec = spec or tensor_input(list(np.shape(data)[1:]), 0)
    names = outputs or [spec.output]
    chunks = [session.run(names, feed) for feed in spec.batches(spec.as_inputs(data))]
    joined = {n: np.concatenate([c[k] for c in chunks]) for k, n in enumerate(names)}
    return joined if outputs else joined[spec.output]


def output_diff(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs diff, max relative diff). The relative diff of an element is |got − ref| over |ref|,
    with |ref| floored at 1e-3 of the output's largest magnitude: a logit near zero would otherwise
    make any rounding look like an infinite relative error."""
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    if diff.size == 0:
        return 0.0, 0.0
    scale = max(float(np.abs(ref).max()), 1e-12)
    rel = diff / np.maximum(np.abs(ref), 1e-3 * scale)
    return float(diff.max()), float(rel.max())


def check_parity(onnx_path: Path, reference: np.ndarray, data: np.ndarray | Inputs,
                 spec: InputSpec | None = None) -> Parity:
    """Compare onnxruntime's outputs on the samples with the PyTorch reference outputs for them."""
    spec = spec or tensor_input(list(np.shape(data)[1:]), 0)
    got = run_onnx(ort_session(onnx_path), data, spec)
    max_abs, max_rel = output_diff(got, reference)
    return Parity(max_abs, max_rel, spec.agreement(got, reference), got)


def latency_ms(onnx_path: Path, spec: InputSpec | list[int], batch: int = 1, repeats: int = 200, *,
               device: str = "cpu", session=None, budget_s: float = 2.0) -> float:
    """Median wall time of one onnxruntime call at this batch size, in milliseconds, on the spec's
    sample inputs (a list: the sample shape of a tensor input).

    Runs `repeats` timed calls after a warm-up, or fewer when `budget_s` runs out first (at least
    5): a large model at batch 64 must not hold a job for minutes to be timed. Pass `session` to
    time a session already created (e.g. one that took the CUDA provider)."""
    spec = spec if isinstance(spec, InputSpec) else tensor_input(list(spec), 0)
    session = session or ort_session(onnx_path, device)
    return time_session(session, spec.sample_feed(batch), repeats, budget_s)


def time_session(session, feed: dict[str, np.ndarray], repeats: int, budget_s: float, warmup: int = 5) -> float:
    """Median ms of `session.run` on `feed` (first output), as median_ms times it."""
    out = [session.get_outputs()[0].name]
    return median_ms(lambda: session.run(out, feed), repeats, budget_s, warmup)


def versions() -> dict[str, str]:
    """What makes and checks the files (the card's `versions`)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime as ort

    try:
        own = version("kdserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "unknown"
    return {"kdserve": own, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "python": platform.python_version()}


def median_ms(call: Callable[[], Any], repeats: int, budget_s: float, warmup: int = 5) -> float:
    """Median wall time of `call()` in ms: `repeats` timed calls after `warmup`, or fewer (at
    least 5) once `budget_s` is spent."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


# ---- variants -----------------------------------------------------------------------------------


def int8_method(kind: str, fp32_path: Path | None = None) -> Literal["dynamic", "static_qdq"]:
    """How to make the int8 variant of a student of architecture `kind` (see INT8_METHOD_BY_KIND);
    an architecture not listed is decided from its graph: any convolution → static QDQ."""
    if kind in INT8_METHOD_BY_KIND:
        return INT8_METHOD_BY_KIND[kind]  # type: ignore[return-value]
    if fp32_path is None:
        return "dynamic"
    import onnx

    ops = {n.op_type for n in onnx.load(str(fp32_path), load_external_data=False).graph.node}
    return "static_qdq" if ops & {"Conv", "ConvTranspose"} else "dynamic"


def _gemm_to_matmul(model) -> int:
    """Rewrite Gemm nodes with a constant weight as MatMul (+ Add) in place; returns how many.

    The exporter writes nn.Linear on a 2-D input as Gemm, and onnxruntime's dynamic quantizer only
    quantizes MatMul (it has no integer Gemm): without this an MLP's int8 file would be fp32."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, replaced, changed = [], set(), 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        replaced.add(weight.name)
        w_name = f"{node.input[1]}__matmul_{changed}"
        matrix = np.ascontiguousarray(w.T if attrs.get("transB", 0) else w)
        model.graph.initializer.append(numpy_helper.from_array(matrix, w_name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}__matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product], name=f"{node.name}_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Drop the original (untransposed) weights no node reads any more.
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name not in replaced or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return changed


def _needs_external_data(model) -> bool:
    return sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD_BYTES


def _save(model, path: Path) -> None:
    import onnx

    external = _needs_external_data(model)
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}.data" if external else None)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an array of training samples."""

    def __init__(self, x: np.ndarray, batch: int = 32):
        self.batches = [x[i : i + batch] for i in range(0, len(x), batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {INPUT_NAME: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def calibration_subset(x: np.ndarray, n: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    if len(x) <= n:
        return np.ascontiguousarray(x, np.float32)
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return np.ascontiguousarray(x[idx], np.float32)


def quantize_int8(fp32_path: Path, out_path: Path, method: str, calib_x: np.ndarray | None = None) -> str:
    """Write the int8 variant of fp32_path; returns the quantization it used, for the card.

    `dynamic`: int8 weights of every MatMul with a constant weight (Gemm rewritten first), uint8
    activations quantized per batch at run time. `static_qdq`: QuantizeLinear/DequantizeLinear pairs
    around every quantizable op, activation ranges (MinMax) from `calib_x` — training samples, never
    the validation set the variant is then judged on — weights per channel. `dynamic_tokens` (text
    students): `dynamic` without the Gemm rewrite, and the token-embedding tables (Gather) in int8
    too — the embedding table is most of a small text student's bytes.

    Weights use the full int8 range (reduce_range off): with VNNI (AVX512-VNNI / AVX-VNNI, ARM dot
    product) there is no saturation; on older x86 the u8×s8 kernels may saturate, which the accuracy
    gate measures on the worker's CPU."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    model = onnx.load(str(fp32_path))
    external = _needs_external_data(model)
    tmp = out_path.with_name(out_path.stem + ".prep.onnx")
    try:
        with warnings.catch_warnings(), _quiet_quantizer():
            warnings.simplefilter("ignore")
            if method == "dynamic_tokens":
                quantize_dynamic(fp32_path, out_path, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gather"], per_channel=False, reduce_range=False,
                                 use_external_data_format=external, extra_options={"MatMulConstBOnly": True})
                return ("dynamic int8 (MatMulInteger with int8 weights, int8 token-embedding tables, per-batch "
                        "uint8 activations)")
            if method == "dynamic":
                rewritten = _gemm_to_matmul(model)
                _save(model, tmp)
                quantize_dynamic(tmp, out_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 per_channel=False, reduce_range=False, use_external_data_format=external,
                                 extra_options={"MatMulConstBOnly": True})
                return (f"dynamic int8 (MatMulInteger, int8 weights, per-batch uint8 activations; "
                        f"{rewritten} Gemm → MatMul)")
            if method == "static_qdq":
                if calib_x is None or len(calib_x) == 0:
                    raise ValueError("static quantization needs calibration samples (calib_x is empty)")
                calib = calibration_subset(calib_x)
                quantize_static(fp32_path, out_path, _Calibration(calib), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=False, calibrate_method=CalibrationMethod.MinMax,
                                use_external_data_format=external)
                return (f"static int8 QDQ (per-channel int8 weights, uint8 activations, MinMax calibration on "
                        f"{len(calib)} training samples)")
            raise ValueError(f"unknown int8 method {method!r}; use 'dynamic', 'dynamic_tokens' or 'static_qdq'")
    finally:
        for p in (tmp, tmp.with_name(tmp.name + ".data")):
            p.unlink(missing_ok=True)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice through the root logger ("consider pre-processing")."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def convert_fp16(fp32_path: Path, out_path: Path) -> str:
    """Write the fp16 variant: weights and compute in float16, with Cast nodes at the graph's edges
    so the input and output stay float32 (clients keep sending FP32; JSON has no FP16 form).

    Uses the float16 converter onnxruntime ships (a maintained copy of onnxconverter-common's), with
    its default op block list (ops without fp16 kernels stay fp32). fp16 is for GPU serving: on a
    CPU, onnxruntime inserts casts around ops that lack fp16 kernels and it is usually slower."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings(), _quiet_quantizer():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=_needs_external_data(model))
    _save(half, out_path)
    return "fp16 (float16 weights and compute, float32 input/output via Cast)"


@dataclass
class OutputDiff:
    name: str
    max_abs_diff: float
    max_rel_diff: float


@dataclass
class VariantResult:
    """One precision of the student, measured on the validation set.

    The fields but `path`, `files`, `published`, `reason` and `logits` are the model card's
    artifact fields: `artifact()` returns them as a dict (add the blob key when storing the file)."""

    precision: str
    published: bool
    reason: str
    path: Path | None = None
    files: list[Path] = field(default_factory=list)
    quantization: str | None = None
    opset: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    outputs: list[OutputDiff] = field(default_factory=list)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    argmax_agreement: float | None = None
    mean_cosine: float | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None
    latency_ms_batch1: float | None = None
    latency_ms_batch64: float | None = None
    cuda_latency_ms_batch1: float | None = None
    cuda_latency_ms_batch64: float | None = None
    providers: list[str] = field(default_factory=list)
    sequence_length: int | None = None
    logits: np.ndarray | None = field(default=None, repr=False)

    def artifact(self) -> dict[str, Any]:
        def r(v: float | None, digits: int | None = None) -> float | None:
            v = finite_or_none(v)
            return v if v is None or digits is None else round(float(v), digits)

        return {
            "format": "onnx", "precision": self.precision, "size_bytes": self.size_bytes, "sha256": self.sha256,
            "max_abs_diff": r(self.max_abs_diff), "max_rel_diff": r(self.max_rel_diff),
            "argmax_agreement": r(self.argmax_agreement), "accuracy": r(self.accuracy),
            "accuracy_delta": r(self.accuracy_delta, 6), "latency_ms_batch1": r(self.latency_ms_batch1, 5),
            "latency_ms_batch64": r(self.latency_ms_batch64, 5),
            "cuda_latency_ms_batch1": r(self.cuda_latency_ms_batch1, 5),
            "cuda_latency_ms_batch64": r(self.cuda_latency_ms_batch64, 5),
            "quantization": self.quantization, "providers": list(self.providers), "opset": self.opset,
            "outputs": [{"name": o.name, "max_abs_diff": r(o.max_abs_diff), "max_rel_diff": r(o.max_rel_diff)}
                        for o in self.outputs],
            "mean_cosine": r(self.mean_cosine), "sequence_length": self.sequence_length,
        }


def finite_or_none(v: float | None) -> float | None:
    """JSON has no NaN/Infinity (and the API refuses to emit them): a non-finite number — an fp16
    overflow, say — goes on the card as null."""
    return None if v is None or not math.isfinite(v) else float(v)


def validate_variant(path: Path, precision: str, *, spec: InputSpec | None = None, val_x: np.ndarray | Inputs,
                     val_y: np.ndarray | None, reference_logits: np.ndarray | Mapping[str, np.ndarray],
                     fp32_accuracy: float | None, quantization: str | None = None,
                     latency: bool = True) -> VariantResult:
    """Measure one ONNX file against the PyTorch reference on the validation set (not gated:
    `published` is False and `reason` empty until build_variants decides).

    reference_logits: the PyTorch student's outputs on val_x, an array (the spec's output) or a
    dict output name → array. Every output the file has a reference for gets its own diff;
    agreement (argmax, or mean cosine for embeddings) and accuracy are computed on the spec's output."""
    spec = spec or tensor_input(list(np.shape(val_x)[1:]), 0)
    references = dict(reference_logits) if isinstance(reference_logits, Mapping) else {spec.output: reference_logits}
    data = spec.as_inputs(val_x)
    session = ort_session(path)
    names = [o.name for o in session.get_outputs() if o.name in references]
    if spec.output not in names:
        raise ValueError(f"{path.name} has no output named {spec.output!r}")
    got = run_onnx(session, data, spec, outputs=names)
    diffs = [OutputDiff(n, *output_diff(got[n], np.asarray(references[n]))) for n in names]
    logits, ref = got[spec.output], np.asarray(references[spec.output])
    y = None if val_y is None else np.asarray(val_y, np.int64)
    accuracy = spec.accuracy(logits, y)
    if fp32_accuracy is None:
        fp32_accuracy = spec.accuracy(ref, y)
    agreement = spec.agreement(logits, ref)
    embedding = spec.task == "embedding"
    files = model_files(path)
    result = VariantResult(
        precision=precision, published=False, reason="", path=path, files=files, quantization=quantization,
        opset=model_opset(path), size_bytes=sum(f.stat().st_size for f in files), sha256=sha256_file(path),
        outputs=diffs, max_abs_diff=max(d.max_abs_diff for d in diffs), max_rel_diff=max(d.max_rel_diff for d in diffs),
        argmax_agreement=None if embedding else agreement, mean_cosine=agreement if embedding else None,
        accuracy=accuracy, sequence_length=spec.sequence_length,
        accuracy_delta=None if accuracy is None or fp32_accuracy is None else accuracy - fp32_accuracy,
        logits=logits, providers=list(session.get_providers()[:1]),
    )
    if latency:
        _measure_latency(result, path, spec, session)
    return result


def _measure_latency(result: VariantResult, path: Path, spec: InputSpec, session) -> None:
    """CPU latency at batch 1 and 64; CUDA's too when a session really runs there."""
    result.latency_ms_batch1 = latency_ms(path, spec, 1, session=session)
    result.latency_ms_batch64 = latency_ms(path, spec, 64, session=session)
    cuda = ort_session(path, "cuda")
    if cuda.get_providers()[0] == "CUDAExecutionProvider":
        result.cuda_latency_ms_batch1 = latency_ms(path, spec, 1, session=cuda)
        result.cuda_latency_ms_batch64 = latency_ms(path, spec, 64, session=cuda)
        result.providers.append("CUDAExecutionProvider")


def _points(fraction: float) -> str:
    return f"{fraction * 100:.2f} point{'s' if abs(fraction * 100 - 1) > 1e-9 else ''}"


def gate(result: VariantResult, max_accuracy_drop: float, parity_tolerance: float | None = None) -> VariantResult:
    """Decide `published` and `reason` for a measured variant.

    fp32 is gated on parity (max abs diff ≤ parity_tolerance, when given). int8/fp16 are gated on
    accuracy: labelled data → the drop vs fp32 must be ≤ max_accuracy_drop (a fraction: 0.01 = one
    point). Unlabelled data has no accuracy, so the gate uses 1 − argmax agreement with the fp32
    reference, which bounds the accuracy the variant can lose. Embeddings have neither: the mean
    cosine to the fp32 outputs must stay ≥ 1 − max_accuracy_drop."""
    if result.precision == "fp32":
        if parity_tolerance is not None and not (result.max_abs_diff or 0.0) <= parity_tolerance:
            result.published, result.reason = False, (
                f"fp32 differs from PyTorch by up to {result.max_abs_diff:.3g} (max abs logit difference), over the "
                f"parity tolerance {parity_tolerance:g}")
        else:
            result.published, result.reason = True, f"parity ok: max abs diff {result.max_abs_diff:.3g}"
        return result
    if result.mean_cosine is not None:
        drop, what = 1.0 - result.mean_cosine, f"mean cosine {result.mean_cosine:.4f} to the fp32 outputs"
    elif result.accuracy_delta is not None:
        drop, what = -result.accuracy_delta, (f"accuracy {result.accuracy:.4f} vs fp32 "
                                             f"{result.accuracy - result.accuracy_delta:.4f}")
    else:
        drop, what = 1.0 - (result.argmax_agreement or 0.0), (
            f"no labels: {result.argmax_agreement:.4f} argmax agreement with fp32 bounds the loss")
    if drop > max_accuracy_drop + 1e-9:
        result.published, result.reason = False, (
            f"{result.precision} loses {_points(drop)} of accuracy ({what}); max_accuracy_drop is "
            f"{_points(max_accuracy_drop)}")
    else:
        result.published, result.reason = True, (
            f"{result.precision} within the accuracy budget: {what} (drop {_points(drop if drop > 0 else 0.0)} ≤ "
            f"{_points(max_accuracy_drop)})")
    return result


def build_variants(fp32_path: Path, precisions: list[str], *, spec: InputSpec | None = None,
                   calib_x: np.ndarray | None, val_x: np.ndarray | Inputs, val_y: np.ndarray | None, reference_logits: np.ndarray | Mapping[str, np.ndarray],
                   fp32_accuracy: float | None, max_accuracy_drop: float, kind: str, out_dir: Path,
                   parity_tolerance: float | None = None, latency: bool = True) -> list[VariantResult]:
    """Build, measure and gate each requested precision of an exported student. The entry point of
    the pipeline's quantizing stage.

    Arguments
      fp32_path         the exported fp32 ONNX file (export_student), already through the parity gate.
      precisions        e.g. ["int8", "fp16"] (ExportSpec.quantize); "fp32" may be included to get
                        the fp32 file measured the same way (its card fields) — it is not rewritten.
                        Duplicates are ignored; an unknown name raises ValueError (a caller bug:
                        the request schema only admits these).
      spec              the student's InputSpec; None: a tensor input of val_x's sample shape.
      calib_x           training samples (float32, [N, *input_shape]) for static int8 calibration;
                        at most CALIBRATION_SAMPLES are used. Only static QDQ needs it.
      val_x, val_y      the validation set every variant is judged on (an array, or input name →
                        array for a spec of several inputs); val_y int64 with −1 for an
                        unlabelled row (None = all unlabelled).
      reference_logits  the PyTorch student's logits on val_x (or a dict output name → array).
      fp32_accuracy     accuracy of the fp32 artifact on val_x/val_y, the baseline of
                        accuracy_delta; None → computed from reference_logits on the labelled rows.
      max_accuracy_drop ExportSpec.max_accuracy_drop, a fraction (0.01 = 1 point).
      kind              the student's architecture name; picks the int8 method (int8_method) unless
                        the spec fixes one.
      out_dir           where variant files are written, as `model.<precision>.onnx`.
      parity_tolerance  when given, fp32 is gated on max abs diff ≤ it (the pipeline's verifying
                        stage normally does this already).
      latency           measure latency (False skips it: for tests that only need numbers).

    Returns one VariantResult per distinct precision, in the order asked. Never raises for a
    variant that cannot be built or run: it comes back with published=False and the error in
    `reason`. For each result:
      published   True → store `files` and put `artifact()` (plus its blob key) on the card.
                  False → do not publish; `reason` is the sentence for the job's warning event.
      reason      why, in words, with the numbers (accuracy vs fp32, the budget).
      artifact()  card fields: size_bytes, sha256, max_abs_diff, max_rel_diff, per-output diffs,
                  argmax_agreement, accuracy, accuracy_delta, latency_ms_batch1/64 (CPU),
                  cuda_latency_ms_batch1/64 (only when a session really ran on CUDA), providers,
                  quantization (which method, in words), opset; embeddings: mean_cosine in place of
                  argmax_agreement; token inputs: sequence_length (the length latency was timed at).
      logits      the variant's logits on val_x (for events or further checks; not for the card).
    """
    spec = spec or tensor_input(list(np.shape(val_x)[1:]), 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[VariantResult] = []
    for precision in dict.fromkeys(precisions):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
        path = Path(fp32_path) if precision == "fp32" else out_dir / f"model.{precision}.onnx"
        try:
            if precision == "int8":
                quantization = quantize_int8(fp32_path, path, spec.int8 or int8_method(kind, fp32_path), calib_x)
            elif precision == "fp16":
                quantization = convert_fp16(fp32_path, path)
            else:
                quantization = "none (fp32)"
            result = validate_variant(path, precision, spec=spec, val_x=val_x, val_y=val_y, reference_logits=reference_logits,
                                      fp32_accuracy=fp32_accuracy, quantization=quantization, latency=latency)
        except Exception as exc:  # one variant failing must not fail the job: report it, publish the rest
            log.warning("%s variant of %s failed: %s", precision, fp32_path, exc, exc_info=True)
            results.append(VariantResult(precision=precision, published=False,
                                         reason=f"the {precision} variant could not be built or run: "
                                                f"{type(exc).__name__}: {exc}"))
            continue
        results.append(gate(result, max_accuracy_drop, parity_tolerance))
    return results


# ---- what ships beside a text student ----------------------------------------------------------

ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed member timestamps: the same files always give the same zip bytes


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
