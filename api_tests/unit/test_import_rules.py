"""The import rules (pyproject.toml's [tool.importlinter] contracts, docs/design.md) hold for every
source file, and each rule catches a deliberate violation planted in a copy of the tree
(scripts/check_imports.py lays the tree out as installed and runs import-linter on it)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("check_imports", REPO / "scripts" / "check_imports.py")
check_imports = importlib.util.module_from_spec(spec)
sys.modules["check_imports"] = check_imports
spec.loader.exec_module(check_imports)


def test_every_rule_holds_for_every_source_file():
    result = check_imports.check(capture=True)
    assert result.returncode == 0, result.stdout + result.stderr

    sources = set()
    for folder, installed in check_imports.FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [*installed.split("/"), *path.relative_to(REPO / folder).with_suffix("").parts]
            sources.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert sources == check_imports.analysed_modules(), "a source file is outside what the rules are checked on"


@pytest.mark.parametrize("plant, broken", [
    ("service/auth.py:import torch", "the API server never imports torch"),
    ("service/api/teachers.py:from kdserve.service.api import jobs", "no router imports another router"),
    ("service/ingest.py:from kdserve.worker import trainer", "the API server never imports torch"),
    ("worker/reaper.py:from kdserve.service import ingest", "the worker reads stored datasets through the store"),
    ("models/zoo.py:from kdserve.worker import trainer", "the networks and their export never import the worker"),
    ("service/store/keys.py:from kdserve.service.store import blobs", "no import cycles"),
])
def test_a_planted_violation_breaks_its_rule(plant, broken):
    result = check_imports.check([plant], capture=True)
    assert result.returncode != 0
    report = re.sub(r"\s+", " ", result.stdout)
    assert re.search(re.escape(broken) + r"[^\n]*? BROKEN", report), result.stdout
