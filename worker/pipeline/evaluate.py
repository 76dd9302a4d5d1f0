"""The evaluating stage: the trained student's metrics on the validation set."""

from __future__ import annotations

import torch

from kdserve.worker import trainer
from kdserve.worker.data import Split
from kdserve.worker.pipeline.inputs import Prepared, test_split
from kdserve.worker.pipeline.progress import RunContext


def final_metrics(student_logits: torch.Tensor, val: Split, result: trainer.TrainResult, embedding: bool) -> dict:
    labelled = val.y >= 0
    pred = student_logits.argmax(1)
    # the losses of the epoch whose weights are published (the best, unless training.publish is "last")
    published = next((m for m in result.history if m.epoch == result.published_epoch), None)
    metrics = {"teacher_accuracy": None, "student_accuracy": None, "agreement": None,
               "train_loss": published.train_loss if published else None,
               "val_loss": published.val_loss if published else None,
               "val_score": published.val_score if published else None,
               "val_kl": published.val_kl if published else None,
               "learning_rate": result.learning_rate or None, "best_epoch": result.best_epoch}
    if embedding:
        metrics["mean_cosine"] = float(torch.nn.functional.cosine_similarity(
            student_logits, val.teacher_logits.float(), dim=1).mean())
        metrics["neighbour_overlap_at_10"] = neighbour_overlap(student_logits, val.teacher_logits.float(), 10)
        return metrics
    if bool(labelled.any()):
        metrics["student_accuracy"] = float((pred[labelled] == val.y[labelled]).float().mean())
    if val.teacher_logits is not None:
        t_pred = val.teacher_logits.argmax(1)
        metrics["agreement"] = float((pred == t_pred).float().mean())
        if bool(labelled.any()):
            metrics["teacher_accuracy"] = float((t_pred[labelled] == val.y[labelled]).float().mean())
    return metrics


def neighbour_overlap(student: torch.Tensor, teacher: torch.Tensor, k: int) -> float | None:
    """Mean share of each row's k nearest neighbours (cosine, itself excluded) that the student's
    space and the teacher's have in common: how well the student serves retrieval in its place."""
    n = min(len(student), 2000)  # an n×n similarity matrix: a sample is plenty for an average
    if n <= k:
        return None
    student, teacher = student[:n], teacher[:n]

    def knn(x: torch.Tensor) -> torch.Tensor:
        xn = torch.nn.functional.normalize(x.float(), dim=1)
        sim = xn @ xn.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    a, b = knn(student), knn(teacher)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1)
    return float((hits / k).mean())


TEST_METRICS = ("student_accuracy", "teacher_accuracy", "agreement", "mean_cosine", "neighbour_overlap_at_10")


def score_test_set(ctx: RunContext, prep: Prepared, model: torch.nn.Module, result: trainer.TrainResult) -> dict | None:
    """test_dataset_id: rows nothing was chosen on (no epoch, no learning rate), scored once at
    the end — the student, the teacher and their agreement (the card's `test`)."""
    if not ctx.spec.test_dataset_id:
        return None
    test = test_split(ctx, prep)
    scored = final_metrics(trainer.predict(model, test), test, result, prep.embedding)
    labelled = int((test.y >= 0).sum())
    ctx.progress.event(f"scored on the test set {ctx.spec.test_dataset_id}: {len(test)} rows ({labelled} labelled)",
                       data={k: scored.get(k) for k in TEST_METRICS if k in scored})
    return {"dataset_id": ctx.spec.test_dataset_id, "rows": len(test), "labelled": labelled,
            **{k: scored[k] for k in TEST_METRICS if k in scored}}


FAR_BELOW = 0.10  # a student this far under its teacher's accuracy is worth a warning


def compare_to_teacher(ctx: RunContext, metrics: dict) -> None:
    """A warning when the student is far below its teacher on the validation split."""
    student, teacher = metrics.get("student_accuracy"), metrics.get("teacher_accuracy")
    if student is not None and teacher is not None and teacher - student > FAR_BELOW:
        ctx.warn("far_below_teacher", f"the student's validation accuracy {student:.3f} is {teacher - student:.3f} "
                 f"below its teacher's {teacher:.3f}: try a larger student, more epochs, or a search "
                 "(POST /v1/searches)", {"student_accuracy": student, "teacher_accuracy": teacher})
