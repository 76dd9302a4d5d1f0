"""What a user who is not a distillation expert gets (issue 15): the default job vs the best of a
manual grid vs a hand-written loop with torchdistill's KDLoss, same data, same split, N seeds.

    python -m bench.auto                          → bench/results/auto.md (5 seeds, 60 epochs, every dataset)
    python -m bench.auto --seeds 2 --datasets digits wine
    python -m bench.auto --quick                  → 2 seeds, 20 epochs, digits with 10 % labels only

One real service (`kdserve up --workers 1` in a temp folder, testkit.service.Service); every kdserve
number is a job submitted over HTTP whose published ONNX student is downloaded and scored here with
onnxruntime on a held-out quarter (stratified, never uploaded). Arms, per dataset / label regime /
method / seed:

- default: the job holds only teacher_id, dataset_id, student, method, and `training` = {epochs, seed}
  (the run length and the seed are the experiment's, as in the issue's own table); every other field
  is the service's default (AdamW, learning_rate "auto", batch 64, 10 % validation split, early
  stopping, the best validation epoch published; the table shows the rate each default job chose).
  `--default-epochs service` leaves epochs out too (for when the service picks them).
- grid: the same job with training.learning_rate ∈ GRID_LR. The best lr is chosen on the held-out
  score itself, averaged over seeds: an oracle choice, an upper bound on what a manual search finds.
  When the service's default lr is a number in the grid, that grid cell *is* the default job (same
  spec, deterministic) and is run once.
- hand: a loop in this process: the same student (torch), Adam lr 3e-3, batch 64, the same epochs,
  trained on exactly the rows the service trains on (worker.data.split_dataset with the job's seed and
  validation fraction), last epoch scored; `ce` is cross-entropy on the labelled rows, `kd` is
  torchdistill's KDLoss (T and α below; α weights the cross-entropy, which ignores unlabelled rows).
  There is no hand arm for the other methods.
- trial (a "method" row): the default job with the method left out, so that the service picks it by a
  short trial between kd and dist on the job's validation split; the table shows what each seed's
  trial chose. Default arm only (no grid, no hand loop).

Data: scikit-learn's bundled digits (teacher: a TorchScript CNN trained here; student MLP 64-32-10),
in two regimes (all labels; 10 % labels with the other 90 % uploaded as label -1), and wine and
breast_cancer (teacher: MLP 256-256 trained here on standardised features; student MLP [16]) with
10 % labels. Teachers are trained on all training labels with a fixed seed, the same for every arm.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split
from torch import nn

from bench.common import machine, table
from testkit.service import Service, upload_dataset, upload_teacher, wait_job

GRID_LR = (0.001, 0.003, 0.01, 0.03)
METHODS = ("ce", "kd", "dist", "trial")  # trial: the method left out, so the service tries kd and dist
TRIAL = "trial"
HAND_METHODS = ("ce", "kd")
HAND_LR = 3e-3
KD_T, KD_ALPHA = 4.0, 0.9
BATCH = 64
VAL_FRACTION = 0.1  # the service's default validation_split; the hand loop holds out the same rows
REGIMES = {"all labels": 1.0, "10% labels": 0.1}


@dataclass(frozen=True)
class Setup:
    name: str
    teacher: str                      # "cnn" (8×8 images) or "mlp"
    teacher_hidden: tuple[int, ...]
    student_hidden: tuple[int, ...]
    regimes: tuple[str, ...]


SETUPS = {
    "digits": Setup("digits", "cnn", (), (32,), ("all labels", "10% labels")),
    "wine": Setup("wine", "mlp", (256, 256), (16,), ("10% labels",)),
    "breast_cancer": Setup("breast_cancer", "mlp", (256, 256), (16,), ("10% labels",)),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(name: str):
    """Train / held-out-test quarter (stratified, fixed), float32 features, int64 labels."""
    loader = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    if name == "digits":
        xtr, xte = xtr / 16.0, xte / 16.0
    else:  # standardise with the training statistics (what the user uploads)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    return xtr.astype(np.float32), ytr.astype(np.int64), xte.astype(np.float32), yte.astype(np.int64)


class DigitsCNN(nn.Module):
    """Takes the flat 64 features like every other arm, sees them as an 8×8 image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 40), nn.ReLU(), nn.Linear(40, 10))

    def forward(self, x):
        return self.head(self.conv(x.reshape(-1, 1, 8, 8)))


def mlp(d_in: int, hidden: tuple[int, ...], classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, classes))


def train_teacher(setup: Setup, xtr, ytr, path: Path) -> nn.Module:
    torch.manual_seed(0)
    classes = int(ytr.max()) + 1
    net = DigitsCNN() if setup.teacher == "cnn" else mlp(xtr.shape[1], setup.teacher_hidden, classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(40 if setup.teacher == "cnn" else 60):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    torch.jit.trace(net, torch.zeros(1, xtr.shape[1])).save(str(path))
    return net


def label_mask(ytr: np.ndarray, regime: str, seed: int) -> np.ndarray:
    """The labels as uploaded: in the 10 % regime a seeded tenth kept, the rest -1."""
    if REGIMES[regime] >= 1.0:
        return ytr.copy()
    keep = np.random.default_rng(1000 + seed).permutation(len(ytr))[: int(len(ytr) * REGIMES[regime])]
    y = np.full_like(ytr, -1)
    y[keep] = ytr[keep]
    return y


def service_train_rows(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the rows the service trains on (not its validation split), from its own splitter."""
    try:
        from service.store.datasets import Parsed
        from worker.data import split_dataset

        probe = Parsed(np.arange(len(x), dtype=np.float32)[:, None], y)
        train, _ = split_dataset(probe, VAL_FRACTION, seed)
        return train.x[:, 0].numpy().astype(np.int64)
    except Exception as e:  # noqa: BLE001 - a reorganised service: fall back to the same rule, said aloud
        log(f"warning: service splitter not importable ({e!r}); using the same seeded permutation here")
        order = np.random.default_rng(seed).permutation(len(x))
        n_val = min(max(1, int(round(len(x) * VAL_FRACTION))), len(x) - 1)
        return order[n_val:]


def hand_loop(method: str, x, y, teacher_logits, student_hidden, classes: int, epochs: int, seed: int) -> nn.Module:
    from torchdistill.losses.mid_level import KDLoss

    torch.manual_seed(seed)
    student = mlp(x.shape[1], student_hidden, classes)
    opt = torch.optim.Adam(student.parameters(), lr=HAND_LR)
    x, y, t = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(teacher_logits)
    if method == "ce":
        rows = torch.nonzero(y >= 0).flatten()
        x, y = x[rows], y[rows]
    kd = KDLoss("s", "output", "t", "output", temperature=KD_T, alpha=KD_ALPHA, ignore_index=-1)
    student.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(BATCH):
            opt.zero_grad()
            out = student(x[idx])
            if method == "ce":
                loss = nn.functional.cross_entropy(out, y[idx])
            elif (y[idx] >= 0).any():
                loss = kd({"s": {"output": out}}, {"t": {"output": t[idx]}}, y[idx])
            else:  # no labelled row in the batch: KDLoss's soft term, weighted as it weights it
                loss = kd.beta * KD_T ** 2 * kd({"s": {"output": out}}, {"t": {"output": t[idx]}}, None)
            loss.backward()
            opt.step()
    return student.eval()


def torch_accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def onnx_accuracy(path: Path, x, y, classes: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((np.asarray(logits)[:, :classes].argmax(1) == y).mean())


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def default_lr():
    """The service's default learning rate, if it is a number (else, e.g. "auto", None)."""
    try:
        from service.schemas import TrainingSpec

        lr = TrainingSpec().learning_rate
        return float(lr) if isinstance(lr, (int, float)) else None
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description="Default kdserve job vs a manual lr grid vs a hand loop + torchdistill.")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--quick", action="store_true", help="2 seeds, 20 epochs, digits with 10%% labels only")
    ap.add_argument("--default-epochs", choices=("set", "service"), default="set",
                    help="set: the default job gets --epochs (as the issue measured); service: leave it out")
    ap.add_argument("--no-ids-only", action="store_true", help="skip the job of only teacher_id and dataset_id")
    ap.add_argument("--out", default="bench/results/auto.md")
    ap.add_argument("--note", default="", help="a paragraph put at the top of the report")
    args = ap.parse_args()
    regimes_for = {d: SETUPS[d].regimes for d in args.datasets}
    if args.quick:
        args.seeds, args.epochs = 2, 20
        regimes_for = {"digits": ("10% labels",)}
    seeds = list(range(args.seeds))
    torch.set_num_threads(1)
    dlr = default_lr()
    reuse = dlr in GRID_LR
    t_start = time.time()
    results: dict[tuple, float] = {}   # (dataset, regime, method, arm, lr, seed) → held-out accuracy
    failures: list[str] = []
    info: dict[str, dict] = {}
    job_seconds: list[float] = []
    picked: dict[tuple, dict] = {}  # the ids-only jobs: what the service picked
    chosen_lr: dict[tuple, list[float]] = {}  # (dataset, regime, method): the rate each default job trained at
    chosen_method: dict[tuple, list[str]] = {}  # (dataset, regime): the method each trial job chose
    def write_report(partial: str = "") -> float:
        wall = (time.time() - t_start) / 60
        rows, grid_rows, lost = [], [], []
        for d, regimes in regimes_for.items():
            for r in regimes:
                ce_default = None
                for m in args.methods:
                    vals = lambda arm, lr: [results[k] for s in seeds if (k := (d, r, m, arm, lr, s)) in results]  # noqa: E731
                    dflt = vals("default", None)
                    per_lr = {lr: vals("grid", lr) for lr in GRID_LR}
                    scored = {lr: v for lr, v in per_lr.items() if v}
                    best = max(scored, key=lambda lr: statistics.mean(scored[lr])) if scored else None
                    hand = vals("hand", HAND_LR)
                    rates = sorted(chosen_lr.get((d, r, m), []))
                    rates_text = ", ".join(f"{lr:g}×{rates.count(lr)}" for lr in dict.fromkeys(rates)) or "–"
                    rows.append([d, r, m, mean_std(dflt), rates_text,
                                 f"{mean_std(scored[best])} (lr {best:g})" if best else "–", mean_std(hand)])
                    if m != TRIAL:
                        grid_rows.append([d, r, m] + [mean_std(per_lr[lr]) for lr in GRID_LR])
                    if m == "ce" and dflt:
                        ce_default = statistics.mean(dflt)
                    if dflt and best and statistics.mean(scored[best]) - statistics.mean(dflt) > 0.005:
                        lost.append(f"{d} / {r} / {m}: default {statistics.mean(dflt):.3f} vs best grid "
                                    f"{statistics.mean(scored[best]):.3f} (lr {best:g})")
                    if m == TRIAL:
                        won = chosen_method.get((d, r), [])
                        rows[-1][2] = "trial: " + (", ".join(f"{x}×{won.count(x)}" for x in dict.fromkeys(won)) or "–")
                    if m != "ce" and dflt and ce_default is not None and statistics.mean(dflt) < ce_default:
                        lost.append(f"{d} / {r} / {m}: default {statistics.mean(dflt):.3f} below ce's default {ce_default:.3f}")
                    if dflt and hand and statistics.mean(hand) > statistics.mean(dflt):
                        lost.append(f"{d} / {r} / {m}: default {statistics.mean(dflt):.3f} below the hand loop "
                                    f"{statistics.mean(hand):.3f}")

        argv, skip = [], False  # the note is printed above the command, not inside it
        for a in sys.argv[1:]:
            if skip or a == "--note" or a.startswith("--note="):
                skip = a == "--note"
                continue
            argv.append(a)
        command = "python -m bench.auto " + shlex.join(argv)
        quick = " (--quick)" if args.quick else ""
        out = ["# Defaults vs a manual grid vs a hand loop + torchdistill (issue 15)", ""]
        if args.note:
            out += [args.note, ""]
        if partial:
            out += [partial, ""]
        out += [f"Command: `{command.strip()}`{quick}. Seeds: {', '.join(map(str, seeds))}. Epochs: {args.epochs}. "
                f"Wall time: {wall:.1f} min.", "", f"Machine: {machine()}.", "",
                "Held-out accuracy (a stratified quarter never uploaded; the downloaded fp32 ONNX student scored with "
                "onnxruntime), mean ± std over seeds. **default**: a job with only teacher, dataset, student, method "
                "and training {epochs" + (", seed" if args.default_epochs == "set" else ": left out, seed") +
                "}; every other field the service's default"
                + (f" (learning_rate {dlr:g}; this cell is the grid's lr {dlr:g} job, the same spec)" if reuse else "")
                + ". **best grid**: training.learning_rate ∈ {" + ", ".join(f"{lr:g}" for lr in GRID_LR)
                + "}, the lr with the best mean held-out score: an *oracle* choice (picked on the test quarter). "
                f"**hand loop**: the same student in plain PyTorch, Adam lr {HAND_LR:g}, batch {BATCH}, {args.epochs} "
                "epochs on the rows the service trains on (its 10 % validation split left out the same way), last "
                f"epoch; ce = cross-entropy on the labelled rows, kd = `torchdistill.losses.mid_level.KDLoss` "
                f"(T {KD_T:g}, α {KD_ALPHA:g} on the cross-entropy, 1 − α on T²·KL; unlabelled rows only in the KL term). "
                "No hand arm for dist.", ""]
        for d in regimes_for:
            i = info[d]
            out.append(f"- {d}: {i['n_train']} training rows, {i['n_test']} held out, {i['classes']} classes; teacher "
                       f"{SETUPS[d].teacher.upper()} {i['teacher_params']:,} params, held-out accuracy "
                       f"{i['teacher_acc']:.3f} (TorchScript upload); student MLP {list(SETUPS[d].student_hidden)}, "
                       f"{i['student_params']:,} params ({i['teacher_params'] / i['student_params']:.0f}× smaller).")
        out += ["", table(["dataset", "regime", "method", "kdserve default", "default's lr (per seed)",
                           "kdserve best grid (lr, oracle)",
                           "hand loop + torchdistill KDLoss"], rows), "",
                "Every grid cell:", "",
                table(["dataset", "regime", "method"] + [f"lr {lr:g}" for lr in GRID_LR], grid_rows), ""]
        if picked:
            ids_rows = []
            for d, regimes in regimes_for.items():
                for r in regimes:
                    jobs = [(s, picked[k]) for s in seeds if (k := (d, r, "picked", "ids", None, s)) in picked]
                    if not jobs:
                        continue
                    accs = [results[(d, r, "picked", "ids", None, s)] for s, _ in jobs]
                    first = jobs[0][1]
                    ids_rows.append([d, r, mean_std(accs), f"{first['student']['architecture']} "
                                     f"{first['student']['params'].get('hidden_sizes')}", f"{first['params']:,}",
                                     ", ".join(j["method"] for _, j in jobs),
                                     ", ".join("–" if j["lr"] is None else f"{j['lr']:g}" for _, j in jobs),
                                     f"{first['epochs']}", ", ".join(str(j["best_epoch"]) for _, j in jobs)])
            out += ["**Only the two ids**: a job of `{teacher_id, dataset_id, training: {seed}}`, everything else "
                    "picked by the service (student within a tenth of the teacher's parameters, method, epochs, "
                    "learning rate):", "",
                    table(["dataset", "regime", "held-out accuracy", "student picked", "parameters", "method per seed",
                           "lr per seed", "epochs (auto)", "best epoch per seed"], ids_rows), ""]
        if job_seconds:
            out.append(f"Jobs: {len(job_seconds)} succeeded, median {statistics.median(job_seconds):.1f} s from start to "
                       f"finish on one worker (longest {max(job_seconds):.1f} s).")
        if lost:
            out += ["", "Where the default job loses (more than 0.5 points to the best grid lr, below ce's default, or "
                    "below the hand loop):", ""] + [f"- {x}" for x in lost]
        if failures:
            out += ["", "Failures:", ""] + [f"- {x}" for x in failures]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(out) + "\n")
        return wall

    with tempfile.TemporaryDirectory(prefix="kdserve-auto-") as tmp:
        root = Path(tmp)
        data = {}
        for d in regimes_for:
            setup = SETUPS[d]
            xtr, ytr, xte, yte = load(d)
            classes = int(ytr.max()) + 1
            t0 = time.time()
            teacher = train_teacher(setup, xtr, ytr, root / f"{d}.pt")
            teacher_params = sum(p.numel() for p in teacher.parameters())
            student_params = sum(p.numel() for p in mlp(xtr.shape[1], setup.student_hidden, classes).parameters())
            with torch.no_grad():
                t_train = teacher(torch.from_numpy(xtr)).numpy()
            info[d] = {"teacher_acc": torch_accuracy(teacher, xte, yte), "teacher_params": teacher_params,
                       "student_params": student_params, "n_train": len(xtr), "n_test": len(xte), "classes": classes}
            data[d] = (xtr, ytr, xte, yte, t_train)
            log(f"{d}: teacher {setup.teacher} {teacher_params:,} params, held-out accuracy "
                f"{info[d]['teacher_acc']:.3f} ({time.time() - t0:.0f} s); student MLP {list(setup.student_hidden)} "
                f"{student_params:,} params")

        # the hand arm first (seconds), in this process
        for d, regimes in regimes_for.items():
            xtr, ytr, xte, yte, t_train = data[d]
            for r in regimes:
                for m in (m for m in HAND_METHODS if m in args.methods):
                    for s in seeds:
                        y = label_mask(ytr, r, s)
                        rows = service_train_rows(xtr, y, s)
                        st = hand_loop(m, xtr[rows], y[rows], t_train[rows], SETUPS[d].student_hidden,
                                       info[d]["classes"], args.epochs, s)
                        results[(d, r, m, "hand", HAND_LR, s)] = torch_accuracy(st, xte, yte)
                    vals = [results[(d, r, m, "hand", HAND_LR, s)] for s in seeds]
                    log(f"hand {d} / {r} / {m}: {mean_std(vals)}")

        with Service(root / "svc", workers=1) as svc, svc.client() as c:
            log(f"service up at {svc.base_url}")
            pending = []  # (key, body)
            for d, regimes in regimes_for.items():
                xtr, ytr, *_ = data[d]
                tid = upload_teacher(c, root / f"{d}.pt", input_shape=f"[{xtr.shape[1]}]")["id"]
                for r in regimes:
                    for s in seeds:
                        npz = root / f"{d}-{r[:3].strip()}-{s}.npz"
                        with open(npz, "wb") as f:
                            np.savez(f, x=xtr, y=label_mask(ytr, r, s))
                        did = upload_dataset(c, npz)["id"]
                        if not args.no_ids_only:  # the first hour: nothing but the two ids (and the seed)
                            pending.append(((d, r, "picked", "ids", None, s),
                                            {"teacher_id": tid, "dataset_id": did, "training": {"seed": s}}))
                        for m in args.methods:
                            base = {"teacher_id": tid, "dataset_id": did,
                                    "student": {"architecture": "mlp",
                                                "params": {"hidden_sizes": list(SETUPS[d].student_hidden)}}}
                            if m != TRIAL:
                                base["method"] = {"name": m}
                            lrs = [] if m == TRIAL else list(GRID_LR)
                            if not reuse or args.default_epochs == "service" or m == TRIAL:
                                training = {"seed": s} | ({"epochs": args.epochs} if args.default_epochs == "set" else {})
                                pending.append(((d, r, m, "default", None, s), base | {"training": training}))
                            for lr in lrs:
                                pending.append(((d, r, m, "grid", lr, s),
                                                base | {"training": {"epochs": args.epochs, "seed": s, "learning_rate": lr}}))
            log(f"{len(pending)} jobs to run" + (f" (the default job is the grid's lr {dlr} cell)" if reuse else ""))
            window: list[tuple] = []
            done = 0
            while pending or window:
                while pending and len(window) < 3:  # a few queued ahead keep the one worker busy
                    key, body = pending.pop(0)
                    r_ = c.post("/v1/jobs", json=body)
                    if r_.status_code != 202:
                        failures.append(f"{key}: submit {r_.status_code} {r_.text[:200]}")
                        continue
                    window.append((key, r_.json()["id"], time.time()))
                key, jid, t_sub = window.pop(0)
                job = wait_job(c, jid, timeout=1800)
                done += 1
                if job["status"] != "succeeded" or not job.get("model_id"):
                    failures.append(f"{key}: job {jid} {job['status']}: {str(job.get('error'))[:300]}")
                    log(f"{done} {key}: {job['status']}")
                    continue
                if job.get("started_at") and job.get("finished_at"):
                    job_seconds.append(job["finished_at"] - job["started_at"])
                path = root / f"{jid}.onnx"
                path.write_bytes(c.get(f"/v1/models/{job['model_id']}/download", params={"format": "onnx"}).content)
                d = key[0]
                acc = onnx_accuracy(path, data[d][2], data[d][3], info[d]["classes"])
                results[key] = acc
                if key[3] == "ids":
                    picked[key] = {"student": job["student"], "method": job["method"]["name"],
                                   "lr": job["metrics"].get("learning_rate"), "epochs": job["epochs"],
                                   "best_epoch": job["metrics"].get("best_epoch"),
                                   "params": c.get(f"/v1/models/{job['model_id']}").json()["num_parameters"]}
                if key[2] == TRIAL:
                    chosen_method.setdefault(key[:2], []).append(job["method"]["name"])
                if key[3] == "default" and job["metrics"].get("learning_rate") is not None:
                    chosen_lr.setdefault(key[:3], []).append(job["metrics"]["learning_rate"])
                if reuse and key[3] == "grid" and key[4] == dlr:
                    results[(key[0], key[1], key[2], "default", None, key[5])] = acc
                log(f"{done} {key[0]} / {key[1]} / {key[2]} / {key[3]} lr={key[4]} seed={key[5]}: {acc:.3f}")
                if done % 6 == 0:
                    write_report(f"**PARTIAL**: {done} of {done + len(window) + len(pending)} jobs done when this "
                                 "was written; the run was still going.")

    wall = write_report()
    log(f"wrote {args.out} ({wall:.1f} min)")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
