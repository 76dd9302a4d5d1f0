"""Which operators a TorchScript teacher may call: an allow-list, checked twice.

A TorchScript archive is a program: its `code/` folder is Python-syntax source that torch compiles
on load, and any registered operator compiles — `aten::from_file` reads (or, shared, writes) any
file, `aten::save` writes one, `torch.ops.<ns>` reaches custom kernels and `torch.classes` custom
C++ objects. So before a teacher runs:

1. `scan_archive` (standard library only: the API runs it on upload, before the probe): every
   `code/**.py` file is parsed with `ast` and every dotted name rooted at `torch`, `ops` or `math`
   must name an allowed operator; `torch.classes`, custom op namespaces, bare uses of `torch`/`ops`
   and denied method names are refused, naming the operator.
2. `kdserve.models.script_graph.check_module` (inside the jail, after torch loaded the archive and before it runs a batch):
   every method of every submodule is inlined and every graph node's kind must be allowed — the
   compiler's own view, so nothing the source scan could misread gets through.

The allow-list (`torchscript_ops.json`) is every `aten::`/`prim::` operator of the pinned torch
minus `DENIED`, plus the structural `prim::` nodes (constants, control flow, containers) that have
no schema; `python -m kdserve.models.script_graph` regenerates it, and a unit test fails when it is stale.
"""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from pathlib import Path

OPS_FILE = Path(__file__).with_name("torchscript_ops.json")
NAMESPACES = ("aten", "prim")

# Operators that touch files, raw storage, other processes or the CUDA runtime's global state,
# or that run Python: never allowed, whatever torch registers.
DENIED = {
    "aten::from_file", "aten::save", "aten::set", "aten::set_", "aten::set_data", "aten::record_stream",
    "aten::_cufft_set_plan_cache_max_size", "aten::wait", "prim::PythonOp", "prim::IgnoredPythonOp",
    "prim::rpc_async", "prim::rpc_remote", "prim::rpc_sync", "prim::awaitable", "prim::awaitable_nowait",
    "prim::awaitable_wait", "prim::fork", "aten::fork", "prim::forkClosure", "prim::Print", "aten::_print",
}
DENIED_PATTERN = re.compile(r"^(aten|prim)::_test_")
# Graph nodes without a schema that every scripted model is made of.
STRUCTURAL = {
    "prim::Constant", "prim::GetAttr", "prim::SetAttr", "prim::If", "prim::Loop", "prim::Return", "prim::Param",
    "prim::ListConstruct", "prim::ListUnpack", "prim::TupleConstruct", "prim::TupleUnpack", "prim::TupleIndex",
    "prim::TupleSlice", "prim::DictConstruct", "prim::CallFunction", "prim::CallMethod", "prim::Uninitialized",
    "prim::unchecked_cast", "prim::isinstance", "prim::TypeCheck", "prim::CreateObject", "prim::Enter",
    "prim::Exit", "prim::EnumName", "prim::EnumValue", "prim::AutogradZero", "prim::ConstantChunk",
    "prim::Closure", "prim::Store", "prim::Load", "prim::Drop", "prim::ModuleContainerIndex",
    "prim::unchecked_unwrap_optional", "prim::BroadcastSizes", "prim::ChunkSizes", "prim::MMTreeReduce",
    "prim::ListIndex",
}
# Bare names TorchScript's printer uses for builtins; method names refused on any object.
DENIED_METHODS = {"from_file", "set_", "set_data", "record_stream", "save"}


def denied(kind: str) -> bool:
    return kind in DENIED or bool(DENIED_PATTERN.match(kind))


@lru_cache(maxsize=None)
def allowed_ops() -> frozenset[str]:
    """`ns::name` of every allowed operator (overloads share one entry)."""
    data = json.loads(OPS_FILE.read_text())
    return frozenset(f"{ns}::{name}" for ns in NAMESPACES for name in data[ns])


# ---- 1. the source scan (no torch) --------------------------------------------------------------


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _op_of(parts: list[str]) -> str | None:
    """The operator a dotted name refers to, `!reason` when it is refused outright, None when it
    is not an operator reference (a local, a module attribute, a type)."""
    root, rest = parts[0], parts[1:]
    if root == "torch" and rest[:1] == ["ops"]:
        rest = rest[1:]
        root = "ops"
    if root == "ops":
        if len(rest) < 2:
            return "!a bare reference to torch.ops"
        return f"{rest[0]}::{rest[1]}"
    if root == "torch":
        if not rest:
            return "!a bare reference to the torch module"
        if rest[0] == "classes":
            return f"!torch.classes.{'.'.join(rest[1:])} (a custom C++ class)"
        return f"aten::{rest[0]}"
    if root == "__torch__" and "classes" in rest:
        return f"!{'.'.join(parts)} (a custom C++ class)"
    if root == "math" and rest:
        return f"aten::{rest[0]}"
    return None


def scan_source(source: str, where: str) -> str | None:
    """What is refused in one `code/` file, in words, or None."""
    try:
        tree = ast.parse(source, filename=where)
    except (SyntaxError, ValueError) as exc:
        return f"{where} is not valid TorchScript source ({exc.__class__.__name__})"
    allowed = allowed_ops()
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts = _dotted(node)
            if parts is None:
                if node.attr in DENIED_METHODS:
                    return f"{where} calls the method {node.attr!r}"
                continue
            op = _op_of(parts)
            if op is None:
                if parts[-1] in DENIED_METHODS and parts[0] != "__torch__":
                    return f"{where} calls the method {parts[-1]!r}"
            elif op.startswith("!"):
                return f"{where} uses {op[1:]}"
            elif denied(op) or op not in allowed:
                return f"{where} calls the operator {op}, which is not on the allow-list"
        elif isinstance(node, ast.Name) and id(node) not in inner and node.id in ("torch", "ops"):
            return f"{where} uses the {node.id!r} module as a value"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and any(isinstance(a, ast.Constant) and a.value in DENIED_METHODS | {"ops", "classes"} for a in node.args)):
            return f"{where} looks up a denied name with {node.func.id}()"
    return None


def scan_archive(sources: dict[str, str]) -> str | None:
    """The first refusal over every `code/` file of an archive ({member name: source}), or None."""
    for name, source in sorted(sources.items()):
        problem = scan_source(source, name)
        if problem:
            return problem
    return None
