"""Hostile teachers, built from scratch: what the fault tests upload and bench/security.py measures.
Each is what an attacker with one tenant key would send — TorchScript that reads or writes host
files or reaches custom code, ONNX whose external data points at host files or whose operators
need a custom library."""

from __future__ import annotations

import io
import json
import re
import select
import socket
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper


def archive(module: torch.nn.Module) -> bytes:
    """A TorchScript archive (torch.jit.save) of the module, scripted unless it already is."""
    buf = io.BytesIO()
    torch.jit.save(module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module), buf)
    return buf.getvalue()


def rewrite_code(data: bytes, old: str, new: str) -> bytes:
    """The archive with one edit in its compiled source: what a hand-crafted hostile file looks like."""
    src, out, edited = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO(), 0
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py") and old.encode() in body:
                body, edited = body.replace(old.encode(), new.encode()), edited + 1
            dst.writestr(info, body)
    assert edited, f"{old!r} is not in the archive's code"
    return out.getvalue()


class Plain(torch.nn.Module):
    """A harmless 64 → 10 teacher whose code the edits above turn hostile (`torch.relu(`)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return torch.relu(self.fc(x))


class ReadsAFile(torch.nn.Module):
    """Returns the first byte of `path` as its class count (what the review's teacher did)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        data = torch.from_file(self.path, False, 1, dtype=torch.uint8)
        return torch.zeros(x.shape[0], int(data[0]))


class WritesAFile(torch.nn.Module):
    """Maps `path` shared and writes into it: creates or overwrites a file on the host."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        planted = torch.from_file(self.path, True, 64, dtype=torch.uint8).fill_(35)
        return x[:, :10] + planted[:10].float() * 0  # used, so TorchScript keeps the call


class Saves(torch.nn.Module):
    def forward(self, x):
        torch.save(x, "planted.pt")
        return x


CUSTOM_CODE = {"ops.myns.evil(": "myns::evil", "__torch__.torch.classes.myns.Thing(": "custom C++ class",
               "getattr(torch, 'relu')(": "module as a value"}


def onnx_reading(location: str, where: str = "initializer") -> bytes:
    """A 64 → 10 ONNX model whose weight tensor says its bytes are in `location`; the tensor is an
    initializer, a Constant node's attribute, or an initializer of an If branch."""
    w = numpy_helper.from_array(np.zeros((64, 10), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(64 * 10 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])
    nodes, inits = [helper.make_node("MatMul", ["input", "w"], ["logits"])], [w]
    if where == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
        inits = []
    elif where == "subgraph":
        branch = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["y"])], "b", [],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], [w])
        flag = numpy_helper.from_array(np.array(True), "flag")
        nodes, inits = [helper.make_node("If", ["flag"], ["logits"], then_branch=branch, else_branch=branch)], [flag]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
                              [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_custom_domain(domain: str = "com.evil") -> bytes:
    graph = helper.make_graph([helper.make_node("Evil", ["input"], ["logits"], domain=domain)], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
                             ).SerializeToString()


# ---- requests -------------------------------------------------------------------------------------


def send(service, path: str, headers: dict[str, str], total: int, chunked: bool) -> tuple[int, int, dict]:
    """POST `total` bytes of body to `path` over a raw socket (chunked, or with its Content-Length),
    watching for an answer between blocks and sending no more once one came. Returns (status,
    body bytes sent, the answer's JSON)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{service.port}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items()),
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"]
    block = b" " * (256 * 1024)  # JSON whitespace: what a server that read it all would still be parsing
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", service.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the answer is still there to read
        sock.settimeout(30)
        while True:
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length and len(body) >= int(length[1]):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(head.split(b" ")[1]), sent, json.loads(body)



def many_members_zip(path: Path, n: int, declared: int | None = None) -> Path:
    """A zip of `n` empty members (about 85 bytes each on disk); `declared`: what its end record says."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{i:x}", b"")
    if declared is not None:  # a plain end record (n < 65536): its two counts, at bytes 8-11
        raw = bytearray(path.read_bytes())
        at = raw.rfind(b"PK\x05\x06")
        raw[at + 8:at + 12] = struct.pack("<HH", declared, declared)
        path.write_bytes(bytes(raw))
    return path
