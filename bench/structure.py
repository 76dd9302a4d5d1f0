"""The figures issue 14 ("one package, one path per job, rules the machine checks") names.

    python -m bench.structure [--out bench/results/structure.md]

- `make unit`'s tests with nothing to reach: run in a private network namespace (`unshare -rn`:
  no network at all, loopback down), so Redis and PostgreSQL are as good as stopped; wall time.
- the import rules: scripts/check_imports.py (import-linter over the installed layout), wall time
  and verdict; how many modules its graph holds.
- functions over 80 lines in kdserve/, service/, worker/, models/.
The serving benchmark (`python -m bench.serving`) and the whole suite's time are run on their own;
their figures are copied into the table by hand, with their dates.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("kdserve", "service", "worker", "models")


def unit_suite() -> tuple[float, str]:
    """Wall seconds and pytest's last line for api_tests/unit with no network reachable."""
    if shutil.which("unshare") is None:
        raise SystemExit("needs unshare (util-linux) and user namespaces")
    start = time.perf_counter()
    out = subprocess.run(["unshare", "-rn", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "api_tests/unit"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, out.stdout.strip().splitlines()[-1]


def import_rules() -> tuple[float, str, int]:
    sys.path.insert(0, str(REPO / "scripts"))
    import check_imports

    start = time.perf_counter()
    result = check_imports.check(capture=True)
    wall = time.perf_counter() - start
    verdict = re.search(r"Contracts: .*", result.stdout).group(0)
    return wall, verdict, len(check_imports.analysed_modules())


def long_functions(limit: int = 80) -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    unit_wall, unit_line = unit_suite()
    rules_wall, verdict, modules = import_rules()
    long = long_functions()
    rows = [("`make unit`'s tests under `unshare -rn` (nothing reachable)", f"{unit_wall:.1f} s wall: {unit_line}"),
            ("import rules (scripts/check_imports.py)", f"{rules_wall:.1f} s: {verdict}; {modules} modules in the graph"),
            ("functions over 80 lines in kdserve/, service/, worker/, models/", str(len(long)) + (
                f" ({', '.join(long)})" if long else ""))]
    text = "\n".join([f"Machine: {machine()}. Reproduce: `python -m bench.structure`.", "",
                      "| measure | result |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
