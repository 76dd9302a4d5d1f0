"""The checks that run on an uploaded teacher's bytes before anything of it runs: the TorchScript
operator allow-list (source scan and compiled-graph walk) and the ONNX external-data and domain
rules. Every hostile file is built here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kdserve.models import script_graph
from kdserve.service.sandbox import script_ops
from kdserve.service.sandbox.onnx_check import check_model
from kdserve.service.sandbox.sniff import ModelFileError, sniff
from testkit.hostile import Saves, archive, rewrite_code


def sources(data: bytes) -> dict[str, str]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return {n: zf.read(n).decode() for n in zf.namelist() if "/code/" in n and n.endswith(".py")}


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 32)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.enc(self.proj(x.view(x.shape[0], -1, 8))).mean(1))


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.gru = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.GRU(16, 16, batch_first=True)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.lstm(x.view(x.shape[0], -1, 8))
        h, _ = self.gru(h)
        return self.fc(h[:, -1])


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(3)])
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.out = torch.nn.Linear(64 + 4 * 64, 4)

    def forward(self, x):
        outs: List[torch.Tensor] = []
        for block in self.blocks:
            x = torch.nn.functional.gelu(block(x)) + x
            outs.append(x)
        best: Optional[torch.Tensor] = None
        if bool(x.sum() > 0):
            best = x
        h = torch.stack(outs).mean(0) if best is None else best
        img = self.conv(h.view(-1, 1, 8, 8)).flatten(1)
        return {"logits": self.out(torch.cat([h, img], 1)), "hidden": h}


class ReadsAFile(torch.nn.Module):
    def forward(self, x):
        return x + torch.from_file("/etc/hostname", False, 4, dtype=torch.uint8).float().sum()


@pytest.mark.parametrize("make", [Encoder, Recurrent, Branchy], ids=["transformer", "lstm_gru", "branches"])
def test_ordinary_teachers_pass_both_checks(make):
    scripted = archive(make().eval())
    traced = archive(torch.jit.trace(make().eval(), torch.randn(2, 64), strict=False, check_trace=False))
    for data in (scripted, traced):
        assert script_ops.scan_archive(sources(data)) is None
        assert script_graph.check_module(torch.jit.load(io.BytesIO(data))) is None


@pytest.mark.parametrize("module,op", [(ReadsAFile(), "aten::from_file"), (Saves(), "aten::save")])
def test_file_operators_are_refused_by_both_checks(tmp_path, module, op):
    data = archive(module)
    assert op in script_ops.scan_archive(sources(data))
    assert op in script_graph.check_module(torch.jit.load(io.BytesIO(data)))
    path = tmp_path / "t.pt"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as err:
        sniff(path)
    assert err.value.code == "unsafe_file" and op in err.value.message


@pytest.mark.parametrize("new,named", [
    ("ops.myns.evil(", "myns::evil"),                              # a custom operator library
    ("torch.ops.quantized.linear_dynamic(", "quantized::linear_dynamic"),  # not on the list either
    ("__torch__.torch.classes.myns.Thing(", "custom C++ class"),
    ("torch.classes.myns.Thing(", "custom C++ class"),
    ("getattr(torch, 'relu')(", "module as a value"),
    ("torch.from_file(", "aten::from_file"),
])
def test_hand_edited_archives_are_refused_by_the_source_scan(tmp_path, new, named):
    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x)

    data = rewrite_code(archive(Plain()), "torch.relu(", new)
    path = tmp_path / "t.pt"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as err:
        sniff(path)
    assert err.value.code == "unsafe_file" and named in err.value.message, err.value.message


def test_the_allow_list_matches_the_installed_torch():
    """torchscript_ops.json is generated from the pinned torch (`python -m kdserve.models.script_graph`)."""
    committed = {k: v for k, v in __import__("json").loads(script_ops.OPS_FILE.read_text()).items()}
    assert committed == script_graph.generate(), "stale: run `python -m kdserve.models.script_graph`"
    assert "from_file" not in committed["aten"] and "linear" in committed["aten"]


# ---- ONNX ---------------------------------------------------------------------------------------


def external(name: str, location: str, offset: int = 0, length: int = 16) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def model_with(*, initializer=None, node_attr=None, subgraph=None, function=None, sparse=None,
               domain: str = "") -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], ["y"], domain=domain)]
    inits = [initializer] if initializer is not None else []
    if node_attr is not None:
        nodes.append(helper.make_node("Constant", [], ["c"], value=node_attr))
    if subgraph is not None:
        nodes.append(helper.make_node("If", ["cond"], ["z"], then_branch=subgraph, else_branch=subgraph))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
    if sparse is not None:
        graph.sparse_initializer.append(sparse)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if function is not None:
        model.functions.append(function)
    return model


def sub(tensor: TensorProto) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node("Identity", [tensor.name], ["z"])], "sub", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])], [tensor])


@pytest.mark.parametrize("location", ["api_key", "../../api_key", "/etc/passwd", "blobs/x", ".", ""])
@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph", "function", "sparse"])
def test_onnx_external_data_outside_the_upload_is_refused(location, where):
    t = external("w", location)
    kwargs = {"initializer": {"initializer": t}, "constant": {"node_attr": t}, "subgraph": {"subgraph": sub(t)},
              "function": {"function": helper.make_function(
                  "local", "f", ["a"], ["b"], [helper.make_node("Constant", [], ["b"], value=t)],
                  [helper.make_opsetid("", 17)])},
              "sparse": {"sparse": helper.make_sparse_tensor(t, numpy_helper.from_array(np.array([0], np.int64), "i"),
                                                             [4])}}[where]
    with pytest.raises(ModelFileError) as err:
        check_model(model_with(**kwargs), {"model.onnx.data": 64})
    assert err.value.code == "unsafe_file" and "not a data file uploaded" in err.value.message


def test_onnx_external_data_in_its_own_file_is_accepted_within_bounds():
    check_model(model_with(initializer=external("w", "model.onnx.data", 16, 16)), {"model.onnx.data": 64})
    with pytest.raises(ModelFileError, match="which has 64 bytes"):
        check_model(model_with(initializer=external("w", "model.onnx.data", 60, 16)), {"model.onnx.data": 64})


def test_onnx_custom_domains_are_refused():
    with pytest.raises(ModelFileError, match="non-standard domain|operator domain"):
        check_model(model_with(domain="com.evil.ops"), {})
    check_model(model_with(domain="com.microsoft"), {})  # onnxruntime's own contrib operators


def test_a_zip_of_an_onnx_model_and_its_data_is_sniffed_as_onnx(tmp_path):
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("wine.onnx", b"\x08\x07")
        zf.writestr("wine.onnx.data", b"\0" * 16)
    assert sniff(Path(path)).format == "onnx"
