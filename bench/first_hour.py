"""The first hour with your own model, scripted: a new user's files, uploaded as they come.

    python -m bench.first_hour [--out bench/results/first_hour.md]

A user has trained classifiers of their own (here: scikit-learn's bundled wine, breast_cancer,
digits and iris, each a PyTorch MLP trained on the raw features that standardises them itself)
and saved them the ways PyTorch and pandas save things by default: `torch.onnx.export` (weights
in a side file, a batch fixed at 1), `torch.jit.trace` of a model ending in softmax or kept in
float64, `torch.jit.script`; `DataFrame.to_csv` with its index, string class names, `np.savez`
with scikit-learn's `X`/`y` or without names. Each artifact is uploaded unchanged through the SDK
against a real service (`kdserve up` in a temporary folder, one worker); then one job per task
names only the teacher and the dataset (every other field left at its default) and the
downloaded student is scored on a held-out quarter that neither the teacher nor the service saw.

Reported: how many artifacts were accepted without hand edits (target: all), what the service
said it adapted, each student's held-out accuracy beside its teacher's, and the wall time from
`kdserve up` to the first downloaded student (the venv set-up of `make run` not counted).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.common import machine, table
from kdserve.client import Client
from kdserve.client.errors import KdserveError
from testkit.service import Service

SEED = 0


class UserNet(nn.Module):
    """What a user trains: raw features in, its own standardisation, logits out."""

    def __init__(self, x: torch.Tensor, classes: int, hidden: int = 128):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp_min(1e-6))
        self.net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class OneRow(nn.Module):
    """A forward written for one sample: exported, the graph runs at batch 1 only."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.reshape(1, -1))


@dataclass
class Task:
    name: str
    frame: object  # the pandas frame, label column `target` last
    train: object
    test: object
    classes: list
    model: UserNet | None = None
    teacher_acc: float = 0.0

    def xy(self, part) -> tuple[np.ndarray, np.ndarray]:
        x = part.drop(columns="target").to_numpy().astype(np.float32)
        return x, np.array([self.classes.index(c) for c in part["target"]])


def load_task(name: str, string_labels: bool) -> Task:
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    data = getattr(skd, f"load_{name}")(as_frame=True)
    frame = data.frame.copy()
    if string_labels:
        frame["target"] = [str(data.target_names[i]) for i in data.target]
    classes = sorted(set(frame["target"]))  # the ids the service gives class names (sorted), and ints as they are
    train, test = train_test_split(frame, test_size=0.25, stratify=frame["target"], random_state=SEED)
    return Task(name, frame, train, test, classes)


def train_teacher(task: Task) -> None:
    x, y = task.xy(task.train)
    torch.manual_seed(SEED)
    model = UserNet(torch.from_numpy(x), len(task.classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(400):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    task.model = model.eval()
    xs, ys = task.xy(task.test)
    with torch.no_grad():
        task.teacher_acc = float((model(torch.from_numpy(xs)).argmax(1).numpy() == ys).mean())


def save_artifacts(tasks: dict[str, Task], d: Path) -> tuple[list[dict], list[dict]]:
    """(teachers, datasets): each {"label", "how", "path", "extra" (SDK kwargs), "task"}."""
    wine, bc, digits, iris = (tasks[n] for n in ("wine", "breast_cancer", "digits", "iris"))
    one = lambda t: torch.zeros(1, t.frame.shape[1] - 1)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wine.model, (one(wine),), d / "wine.onnx")  # torch's defaults
        with zipfile.ZipFile(d / "wine_onnx.zip", "w") as z:
            z.write(d / "wine.onnx", "wine.onnx")
            z.write(d / "wine.onnx.data", "wine.onnx.data")
        torch.onnx.export(bc.model, (one(bc),), d / "breast_cancer.onnx", external_data=False)
        torch.onnx.export(OneRow(iris.model), (one(iris),), d / "iris_one_row.onnx", external_data=False)
        torch.jit.trace(nn.Sequential(bc.model, nn.Softmax(-1)), one(bc)).save(str(d / "breast_cancer_softmax.pt"))
        double = UserNet(torch.zeros(2, 64), 10)
        double.load_state_dict(digits.model.state_dict())
        torch.jit.trace(double.double().eval(), one(digits).double()).save(str(d / "digits_float64.pt"))
        torch.jit.script(iris.model).save(str(d / "iris_scripted.pt"))
    teachers = [
        dict(label="wine.onnx + wine.onnx.data", how="torch.onnx.export(model, (x,), 'wine.onnx'): torch's defaults",
             path=d / "wine.onnx", extra={"data": d / "wine.onnx.data"}, task="wine"),
        dict(label="wine_onnx.zip", how="the same two files, zipped", path=d / "wine_onnx.zip", extra={}, task="wine"),
        dict(label="breast_cancer.onnx", how="torch.onnx.export(..., external_data=False): batch fixed at 1",
             path=d / "breast_cancer.onnx", extra={}, task="breast_cancer"),
        dict(label="breast_cancer_softmax.pt", how="torch.jit.trace of the model + nn.Softmax",
             path=d / "breast_cancer_softmax.pt", extra={}, task="breast_cancer"),
        dict(label="digits_float64.pt", how="torch.jit.trace of model.double()", path=d / "digits_float64.pt",
             extra={}, task="digits"),
        dict(label="iris_one_row.onnx", how="a forward that reshapes to (1, -1), exported at batch 1",
             path=d / "iris_one_row.onnx", extra={}, task="iris"),
        dict(label="iris_scripted.pt", how="torch.jit.script(model)", path=d / "iris_scripted.pt", extra={},
             task="iris"),
    ]
    wine.train.to_csv(d / "wine.csv")  # index written, `target` last, class names as labels
    bc.train.to_csv(d / "breast_cancer.csv", index=False)
    bc.train.to_csv(d / "breast_cancer_indexed.csv")
    x, y = digits.xy(digits.train)
    np.savez(d / "digits.npz", X=x.astype(np.float64), y=y)  # scikit-learn's names, numpy's float64
    x, y = iris.xy(iris.train)
    np.savez(d / "iris.npz", x, y)  # no names: arr_0, arr_1
    datasets = [
        dict(label="wine.csv", how="DataFrame.to_csv(): index column, `target` last, class names",
             path=d / "wine.csv", extra={}, task="wine"),
        dict(label="breast_cancer.csv", how="DataFrame.to_csv(index=False), `target` last (0/1)",
             path=d / "breast_cancer.csv", extra={}, task="breast_cancer"),
        dict(label="breast_cancer_indexed.csv", how="DataFrame.to_csv() with its index",
             path=d / "breast_cancer_indexed.csv", extra={}, task="breast_cancer"),
        dict(label="digits.npz", how="np.savez(f, X=X, y=y), float64 features", path=d / "digits.npz", extra={},
             task="digits"),
        dict(label="iris.npz", how="np.savez(f, X, y): no array names", path=d / "iris.npz", extra={}, task="iris"),
    ]
    return teachers, datasets


JOBS = [("wine", "wine.onnx + wine.onnx.data", "wine.csv"),
        ("breast_cancer", "breast_cancer_softmax.pt", "breast_cancer_indexed.csv"),
        ("breast_cancer", "breast_cancer.onnx", "breast_cancer.csv"),
        ("digits", "digits_float64.pt", "digits.npz"),
        ("iris", "iris_one_row.onnx", "iris.npz")]


def said(out) -> str:
    details = out.details or {}
    parts = list((details.get("adaptations") or {}).values()) + list(details.get("messages") or [])
    return "; ".join(p.split(" (")[0] for p in parts) or "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/first_hour.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tasks = {n: load_task(n, string_labels=(n == "wine")) for n in ("wine", "breast_cancer", "digits", "iris")}
    for t in tasks.values():
        train_teacher(t)
    work = Path(tempfile.mkdtemp(prefix="kd-first-hour-"))
    teachers, datasets = save_artifacts(tasks, work)

    t0 = time.perf_counter()
    with Service(work / "svc") as svc, Client(svc.base_url, svc.api_key) as kd:
        up_s = time.perf_counter() - t0
        rows, ids, first_student_s = [], {}, None
        for kind, items in (("teacher", teachers), ("dataset", datasets)):
            for a in items:
                try:
                    out = (kd.teachers if kind == "teacher" else kd.datasets).create(a["path"], **a["extra"])
                    ids[a["label"]] = out.id
                    rows.append([kind, f"`{a['label']}`", a["how"], "yes", said(out)])
                except KdserveError as exc:
                    rows.append([kind, f"`{a['label']}`", a["how"], f"no: {exc.code}", exc.message])
        job_rows = []
        for task_name, teacher, dataset in JOBS:
            task = tasks[task_name]
            if teacher not in ids or dataset not in ids:
                job_rows.append([task_name, teacher, dataset, task.teacher_acc, "not run: upload refused", "", "", "", ""])
                continue
            started = time.perf_counter()
            job = kd.jobs.create(teacher_id=ids[teacher], dataset_id=ids[dataset])
            job = kd.jobs.wait(job.id)
            took = time.perf_counter() - started
            if job.status != "succeeded":
                job_rows.append([task_name, teacher, dataset, task.teacher_acc, f"{job.status}: {job.error}", "", "", "",
                                 ""])
                continue
            path = work / f"{job.model_id}.onnx"
            kd.models.download(job.model_id, path)
            if first_student_s is None:
                first_student_s = time.perf_counter() - t0
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            xs, ys = task.xy(task.test)
            acc = float((session.run(None, {session.get_inputs()[0].name: xs})[0].argmax(1) == ys).mean())
            card = kd.models.get(job.model_id)
            warns = ", ".join(w.code for w in job.warnings or []) or "–"
            shape = card.student["params"].get("hidden_sizes") or card.student["params"].get("channels")
            fast = card.speedup or {}
            job_rows.append([task_name, f"`{teacher}`", f"`{dataset}`", round(task.teacher_acc, 3), round(acc, 3),
                             f"{card.student['architecture']} {shape}, {card.num_parameters:,} "
                             f"(teacher {card.teacher_num_parameters:,})",
                             f"{fast.get('batch1', '–')}× / {fast.get('batch64', '–')}×", f"{took:.0f} s", warns])

    accepted = sum(1 for r in rows if r[3] == "yes")
    report = [
        "# First hour: a new user's own files, uploaded as they come",
        "",
        f"`python -m bench.first_hour` on {machine()}.",
        "",
        "Each teacher is a PyTorch MLP a user trained on the raw features (it standardises them itself), "
        "saved the way PyTorch does by default; each dataset is written the way pandas and numpy do by "
        "default. Nothing was edited by hand before upload. Jobs name only `teacher_id` and `dataset_id`; "
        "accuracy is on a held-out quarter of each dataset that neither the teacher, nor the upload, saw.",
        "",
        f"**Accepted without hand edits: {accepted} of {len(rows)}.** `kdserve up` answered after {up_s:.0f} s; "
        f"the first student was downloaded {first_student_s or float('nan'):.0f} s after `kdserve up` started "
        "(the one-off venv set-up of `make run` not counted).",
        "",
        "## Uploads",
        "",
        table(["kind", "file", "how it was made", "accepted", "what the service said it did"], rows),
        "",
        "## Default jobs (teacher and dataset only)",
        "",
        table(["task", "teacher", "dataset", "teacher held-out acc", "student held-out acc", "student (picked)",
               "speed-up at batch 1 / 64", "job wall time", "warnings"], job_rows),
        "",
        "Speed-up: the card's teacher latency (its own runtime, torch or onnxruntime, in its jail) over the fp32 "
        "student's onnxruntime latency. These teachers are small MLPs too, so the gain is mostly in size; a "
        "row-by-row teacher is timed at batch 64 one row at a time.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))


if __name__ == "__main__":
    main()
