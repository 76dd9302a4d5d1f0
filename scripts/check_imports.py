"""Check the import rules (pyproject.toml's [tool.importlinter] contracts) against the source tree.

    python scripts/check_imports.py            # exit 0 when every contract is kept
    python scripts/check_imports.py --plant "service/auth.py:import torch"   # show a rule catch one

import-linter reads a package from its folder on disk. kdserve is one package spread over four
folders (kdserve/, service/, worker/, models/, joined by pyproject's package-dir), which an
editable install joins at import time only; so the check lays the tree out as it is installed —
kdserve/service, kdserve/worker, kdserve/models — in a temporary folder (a copy of the .py files)
and lints that. `--plant FILE:LINE` appends LINE to FILE in the copy first (the unit test uses it
to prove each rule fails when broken).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"kdserve": "kdserve", "service": "kdserve/service", "worker": "kdserve/worker", "models": "kdserve/models"}

RUN = ("import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports; "
       "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True, no_logo=True))")


def installed_layout(into: Path, plants: list[str]) -> Path:
    """The package as installed, .py files only, under `into`; returns the folder to put on sys.path."""
    for src, dst in FOLDERS.items():
        for path in (REPO / src).rglob("*.py"):
            if "__pycache__" not in path.parts:
                target = into / dst / path.relative_to(REPO / src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    for plant in plants:
        rel, _, line = plant.partition(":")
        top, _, rest = rel.partition("/")
        with open(into / FOLDERS[top] / rest, "a") as f:
            f.write("\n" + line + "\n")
    return into


def check(plants: list[str] = (), capture: bool = False) -> subprocess.CompletedProcess:
    """Run import-linter in a child (so the editable install's kdserve is not the one it reads)."""
    with tempfile.TemporaryDirectory(prefix="kdserve-imports-") as tmp:
        root = installed_layout(Path(tmp), list(plants))
        return subprocess.run([sys.executable, "-I", "-c", RUN, str(root), str(REPO / "pyproject.toml")],
                              cwd=tmp, capture_output=capture, text=True, timeout=300)


MODULES = ("import sys, json; sys.path.insert(0, sys.argv[1]); import grimp; "
           "print(json.dumps(sorted(grimp.build_graph('kdserve', cache_dir=None).modules)))")


def analysed_modules() -> set[str]:
    """The kdserve modules import-linter's graph holds (every one the contracts are checked on)."""
    with tempfile.TemporaryDirectory(prefix="kdserve-imports-") as tmp:
        root = installed_layout(Path(tmp), [])
        out = subprocess.run([sys.executable, "-I", "-c", MODULES, str(root)], cwd=tmp, capture_output=True,
                             text=True, timeout=300, check=True)
    return {m for m in json.loads(out.stdout) if m == "kdserve" or m.startswith("kdserve.")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plant", action="append", default=[], metavar="FILE:LINE")
    return check(parser.parse_args().plant).returncode


if __name__ == "__main__":
    sys.exit(main())
