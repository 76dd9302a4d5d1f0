"""Method defaults for small students, re-checked (issue 15): dkd, nkd and dhkd at their registered
defaults (CIFAR-100 recipes) against variants, with the setup of bench.quality (the same teachers,
students ≥ 100× smaller, 10 % labels, 5 seeds, the service's training defaults), in-process.

    python -m bench.method_defaults   → bench/results/method_defaults.md (a few minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import machine, table
from bench.quality import SEEDS, SETUPS, fmt, load, run_one, train_teacher_file

REGIME = "10% labels"
VARIANTS = {
    "kd": [{}],
    "dkd": [{}, {"beta": 2.0}, {"beta": 1.0, "warmup": 5}, {"beta": 2.0, "temperature": 2.0}],
    "nkd": [{}, {"gamma": 1.5}, {"gamma": 1.5, "temperature": 1.0}, {"gamma": 1.0, "temperature": 2.0}],
    "dhkd": [{}, {"temperature": 4.0}, {"alpha": 0.5}, {"temperature": 4.0, "alpha": 2.0}],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/method_defaults.md")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, setup in SETUPS.items():
            xtr, ytr, _, _ = load(name)
            paths[name] = Path(tmp) / f"{name}.pt"
            train_teacher_file(setup, xtr, ytr, paths[name])
        runs = [(d, REGIME, m, s, paths[d], p) for d in SETUPS for m, ps in VARIANTS.items() for p in ps for s in SEEDS]
        with ProcessPoolExecutor(args.workers) as pool:
            results = [(run[2], repr(run[5]), r) for run, r in zip(runs, pool.map(run_one, runs, chunksize=2))]
    rows = []
    for method, variants in VARIANTS.items():
        for p in variants:
            row = [method, ", ".join(f"{k}={v}" for k, v in p.items()) or "registered defaults"]
            for d in SETUPS:
                accs = [r["accuracy"] for m, key, r in results if m == method and key == repr(p) and r["dataset"] == d]
                row.append(fmt(accs))
            rows.append(row)
    report = ["# Method defaults for small students (issue 15)", "",
              f"`python -m bench.method_defaults` on {machine()}; {(time.time() - t0) / 60:.1f} min.", "",
              "Held-out accuracy in %, mean ± std over seeds " + ", ".join(map(str, SEEDS)) + f", {REGIME} (the "
              "rest an unlabelled transfer set), the teachers and students of bench/results/quality.md "
              "(digits: MLP [512, 512] → [32]; breast_cancer: [256, 256] → [8]), every training field at the "
              "service's default.", "",
              table(["method", "params", *[f"{d}" for d in SETUPS]], rows), ""]
    Path(args.out).write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
