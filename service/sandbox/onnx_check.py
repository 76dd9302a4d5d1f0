"""Refuse an ONNX teacher that would reach outside itself, before onnxruntime sees it.

Two ways an ONNX file points outside its own bytes:

- **External data.** Any TensorProto — an initializer, a sparse initializer's values or indices, a
  Constant node's attribute, a tensor inside a subgraph (If/Loop/Scan bodies), a local function's
  body, a training-info graph — may say `data_location: EXTERNAL` with a `location` that the
  runtime opens relative to the model's folder (`location = "api_key"`, `../../etc/passwd`, an
  absolute path). Every such tensor must name one of the data files uploaded with the model, by
  its plain file name, within that file's size.
- **Operator domains.** A node in a domain the runtime does not implement itself makes it look
  for a custom-op library. Only the ONNX domains, onnxruntime's built-in `com.microsoft`, and the
  model's own local functions are accepted.

Needs the `onnx` package (the worker and a torch-enabled API have it; the jail always does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from kdserve.service.sandbox.model_files import ONNX_MODEL_MEMBER, plain_file_name
from kdserve.service.sandbox.sniff import ModelFileError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"}


def _graph_tensors(graph, where: str) -> Iterator[tuple[str, object]]:
    for t in graph.initializer:
        yield f"{where}initializer {t.name!r}", t
    for st in graph.sparse_initializer:
        yield f"{where}sparse initializer {st.values.name!r}", st.values
        yield f"{where}sparse initializer {st.values.name!r} (indices)", st.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node, where: str) -> Iterator[tuple[str, object]]:
    label = f"{where}node {node.name or node.op_type!r} attribute"
    for attr in node.attribute:
        if attr.HasField("t"):
            yield f"{label} {attr.name!r}", attr.t
        for t in attr.tensors:
            yield f"{label} {attr.name!r}", t
        if attr.HasField("sparse_tensor"):
            yield f"{label} {attr.name!r}", attr.sparse_tensor.values
            yield f"{label} {attr.name!r} (indices)", attr.sparse_tensor.indices
        for st in attr.sparse_tensors:
            yield f"{label} {attr.name!r}", st.values
            yield f"{label} {attr.name!r} (indices)", st.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g, f"{where}subgraph {attr.name!r}: ")
        for g in attr.graphs:
            yield from _graph_tensors(g, f"{where}subgraph {attr.name!r}: ")


def all_tensors(model) -> Iterator[tuple[str, object]]:
    """Every TensorProto in the model, anywhere, with words saying where it is."""
    yield from _graph_tensors(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node, f"function {fn.name!r}: ")
    for i, info in enumerate(model.training_info):
        yield from _graph_tensors(info.initialization, f"training info {i} initialization: ")
        yield from _graph_tensors(info.algorithm, f"training info {i} algorithm: ")


def _all_nodes(model) -> Iterator:
    def graph_nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from graph_nodes(attr.g)
                for g in attr.graphs:
                    yield from graph_nodes(g)

    yield from graph_nodes(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield node
    for info in model.training_info:
        yield from graph_nodes(info.initialization)
        yield from graph_nodes(info.algorithm)


def check_external_data(model, data_files: dict[str, int]) -> None:
    """Every external tensor names an uploaded data file ({name: size}) and stays inside it."""
    from onnx import TensorProto

    for where, tensor in all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not plain_file_name(location) or location not in data_files:
            uploaded = ", ".join(sorted(data_files)) or "none"
            raise ModelFileError(
                "unsafe_file", f"the ONNX {where} keeps its data in {location!r}, which is not a data file uploaded "
                f"with the model (uploaded: {uploaded}); refused without loading. Export with "
                "external_data=False, or upload the data file beside the model under that exact name")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise ModelFileError("unsafe_file", f"the ONNX {where} has a malformed external-data offset or length")
        size = data_files[location]
        if offset < 0 or offset > size or (length >= 0 and offset + length > size):
            raise ModelFileError("unsafe_file", f"the ONNX {where} reads bytes {offset}..{offset + max(length, 0)} of "
                                 f"{location!r}, which has {size} bytes")


def check_domains(model) -> None:
    local = {fn.domain for fn in model.functions}
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS and opset.domain not in local:
            raise ModelFileError("unsafe_file", f"the ONNX model imports the operator domain {opset.domain!r}, which "
                                 "would need a custom-op library; only standard ONNX operators are accepted")
    for node in _all_nodes(model):
        if node.domain not in STANDARD_DOMAINS and node.domain not in local:
            raise ModelFileError("unsafe_file", f"the ONNX operator {node.domain}::{node.op_type} is from a "
                                 "non-standard domain, which would need a custom-op library; refused without loading")


def check_model(model, data_files: dict[str, int]) -> None:
    check_external_data(model, data_files)
    check_domains(model)


def load_checked(path: Path):
    """(ModelProto without its external data, the .onnx file) of an uploaded model as the jail
    sees it — a single file, or a folder with model.onnx and its data files — after every check."""
    import onnx

    folder = path if path.is_dir() else None
    model_file = folder / ONNX_MODEL_MEMBER if folder else path
    data = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != ONNX_MODEL_MEMBER} if folder else {}
    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:
        raise ModelFileError("unsupported_format", f"not a valid ONNX model: {(str(exc).splitlines() or ['?'])[0][:300]}")
    check_model(proto, data)
    return proto, model_file
