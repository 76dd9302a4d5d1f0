"""The torch half of the TorchScript allow-list (the other, torch-free half is
kdserve.service.sandbox.script_ops): regenerate the list from the installed torch's operator schemas,
and check a loaded ScriptModule's compiled graphs against it inside the teacher jail.
`python -m kdserve.models.script_graph` rewrites torchscript_ops.json; a unit test fails when it is stale."""

from __future__ import annotations

import json
import sys

import torch

from kdserve.service.sandbox.script_ops import NAMESPACES, OPS_FILE, STRUCTURAL, allowed_ops, denied


def generate() -> dict:
    """The allow-list from the installed torch (needs torch)."""
    names: dict[str, set[str]] = {ns: set() for ns in NAMESPACES}
    for schema in torch._C._jit_get_all_schemas():
        ns, _, name = str(schema.name).partition("::")
        if ns in names and not denied(f"{ns}::{name}"):
            names[ns].add(name)
    for kind in STRUCTURAL:
        names["prim"].add(kind.split("::")[1])
    return {"torch": torch.__version__.split("+")[0], "aten": sorted(names["aten"]), "prim": sorted(names["prim"])}


# ---- 2. the compiled-graph check (in the jail, needs torch) ------------------------------------


def _kinds(block) -> set[str]:
    found: set[str] = set()
    for node in block.nodes():
        found.add(node.kind())
        for sub in node.blocks():
            found |= _kinds(sub)
    return found


def module_op_kinds(module) -> set[str]:
    """Every node kind in every method of the module and its submodules, calls inlined."""
    kinds: set[str] = set()
    for sub in [module, *module.modules()]:
        c = getattr(sub, "_c", None)
        if c is None:
            continue
        for name in c._method_names():
            graph = c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            kinds |= _kinds(graph)
    return kinds


def check_module(module) -> str | None:
    """The first refused node kind of a loaded ScriptModule, in words, or None."""
    allowed = allowed_ops()
    for kind in sorted(module_op_kinds(module)):
        if denied(kind) or kind not in allowed:
            return f"the compiled teacher calls the operator {kind}, which is not on the allow-list"
    return None


if __name__ == "__main__":  # regenerate the allow-list from the installed torch
    OPS_FILE.write_text(json.dumps(generate(), indent=0) + "\n")
    print(f"wrote {OPS_FILE}", file=sys.stderr)
