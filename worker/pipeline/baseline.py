"""`baseline: true`: the same student trained with cross-entropy alone on the same split, with the
same training settings, so the card shows what distillation bought (accuracy and agreement with the
teacher, each with its delta)."""

from __future__ import annotations

import torch

from kdserve.worker import trainer
from kdserve.worker.losses import build_loss
from kdserve.worker.pipeline.evaluate import final_metrics
from kdserve.worker.pipeline.inputs import Prepared, new_student
from kdserve.worker.pipeline.progress import RunContext


def train_baseline(ctx: RunContext, prep: Prepared, device: torch.device, metrics: dict) -> dict:
    """Train and measure the ce student; the card's `baseline` (deltas: the distilled student minus it)."""
    spec = ctx.spec
    loss_fn = build_loss("ce", {})
    student = new_student(ctx, prep.teacher, prep.train, prep.input_shape, prep.max_length,
                          loss_fn.output_width(prep.num_classes))
    ctx.progress.event("baseline: training the same student with ce alone on the same split")
    result = trainer.train(student, loss_fn, prep.train, prep.val, spec.training, device,
                           should_stop=ctx.lease.should_stop,
                           lr_candidates=trainer.lr_grid(spec.student.architecture, spec.training.optimizer))
    ours = final_metrics(trainer.predict(student.cpu().eval(), prep.val), prep.val, result, False)
    delta = lambda k, o: None if metrics.get(k) is None or ours.get(o) is None else round(metrics[k] - ours[o], 6)  # noqa: E731
    out = {"method": "ce", "accuracy": ours["student_accuracy"], "agreement": ours["agreement"],
           "learning_rate": result.learning_rate, "best_epoch": result.best_epoch,
           "accuracy_delta": delta("student_accuracy", "student_accuracy"), "agreement_delta": delta("agreement", "agreement")}
    ctx.progress.event(f"baseline (ce): accuracy {_pct(out['accuracy'])}, agreement {_pct(out['agreement'])}; "
                       f"distilled: {_pct(metrics.get('student_accuracy'))}, {_pct(metrics.get('agreement'))}",
                       data={"baseline": out})
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"
