"""What a search's trials add up to (torch-free, no optimizer): every exported file of every
finished trial is a candidate; the candidates are checked against the targets, and give the
leaderboard, the Pareto front (accuracy × latency × size) and the recommended file.

Files are ranked by their score: the trial's validation score (accuracy and agreement weighted by
the rows each is measured on: with few labels, accuracy alone is measured on a handful of rows),
less the file's accuracy drop from fp32. The recommendation: with an accuracy or agreement floor
among the targets, the cheapest file (lowest latency, then smallest) that meets every target;
without one, the best-scored file that meets the cost targets. When no file meets every target, `closest` is the one whose relative
misses add up to least, with its misses listed.
"""

from __future__ import annotations

from typing import Any

from kdserve.service.model_card import ModelCard
from kdserve.service.schemas import Candidate, SearchResult, SearchTargets

LEADERBOARD_SIZE = 20


def latency_of(artifact, batch_size: int) -> float | None:
    """The latency the card measured at this batch, on CUDA where the worker really ran there."""
    cuda = getattr(artifact, f"cuda_latency_ms_batch{batch_size}")
    return cuda if cuda is not None else getattr(artifact, f"latency_ms_batch{batch_size}")


def violations(c: dict[str, Any], t: SearchTargets) -> dict[str, float]:
    """target → relative miss (0.1: 10 % past the limit) for each target this file misses."""
    out: dict[str, float] = {}
    for name, value, limit in (("latency_ms", c["latency_ms"], t.latency_ms),
                               ("max_size_bytes", c["size_bytes"], t.max_size_bytes),
                               ("max_parameters", c["num_parameters"], t.max_parameters)):
        if limit is not None and (value is None or value > limit):
            out[name] = round((value - limit) / limit, 4) if value is not None else 1.0
    for name, value, floor in (("min_accuracy", c["accuracy"], t.min_accuracy),
                               ("min_agreement", c["agreement"], t.min_agreement)):
        if floor is not None and (value is None or value < floor):
            out[name] = round((floor - value) / max(floor, 1e-9), 4) if value is not None else 1.0
    return out


def candidates_of(trial: int, job_id: str, model_id: str, card: dict | ModelCard, targets: SearchTargets,
                  precisions: list[str], val_score: float | None, val_kl: float | None = None) -> list[Candidate]:
    """The files of one trial's published model that the search asked for. `val_score`: the trial
    job's (metrics.val_score); each file's score is it less the file's accuracy drop from fp32.
    `val_kl`: the trial's fidelity to the teacher (metrics.val_kl), what breaks score ties."""
    card = ModelCard.of(card)
    out = []
    for a in card.onnx_artifacts():
        if a.precision not in precisions:
            continue
        score = None if val_score is None else round(val_score + min(0.0, a.accuracy_delta or 0.0), 6)
        c = {"trial": trial, "job_id": job_id, "model_id": model_id, "precision": a.precision, "score": score,
             "val_kl": val_kl,
             "accuracy": a.accuracy, "agreement": card.metrics.get("agreement"),
             "latency_ms": latency_of(a, targets.batch_size), "size_bytes": a.size_bytes,
             "num_parameters": card.num_parameters, "method": card.method.get("name"),
             "student": {"architecture": card.student.get("architecture"), "params": card.student.get("params", {})}}
        missed = violations(c, targets)
        out.append(Candidate(**c, meets_targets=not missed, violations=missed))
    return out


def _score(c: Candidate) -> float:
    for value in (c.score, c.accuracy, c.agreement):
        if value is not None:
            return value
    return -1.0


def _rank(c: Candidate) -> tuple[float, float]:
    """Lower is better: the score, and among equal scores the student closer to its teacher. With few
    labelled validation rows many trials tie on score (all 1.0); their KL to the teacher still
    tells them apart, and it is measured on every validation row."""
    return (-_score(c), c.val_kl if c.val_kl is not None else float("inf"))


def _cost(c: Candidate) -> tuple[float, int]:
    return (c.latency_ms if c.latency_ms is not None else float("inf"), c.size_bytes)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on score, latency and size at once (ties are no defeat)."""
    def beats(b: Candidate, a: Candidate) -> bool:
        no_worse = _score(b) >= _score(a) and _cost(b)[0] <= _cost(a)[0] and b.size_bytes <= a.size_bytes
        better = _score(b) > _score(a) or _cost(b)[0] < _cost(a)[0] or b.size_bytes < a.size_bytes
        return no_worse and better

    front = [a for a in cands if not any(beats(b, a) for b in cands if b is not a)]
    return sorted(front, key=_cost)


def summarize(cands: list[Candidate], targets: SearchTargets) -> SearchResult:
    leaderboard = sorted(cands, key=lambda c: (*_rank(c), _cost(c)))[:LEADERBOARD_SIZE]
    meeting = [c for c in cands if c.meets_targets]
    floors = targets.min_accuracy is not None or targets.min_agreement is not None
    if meeting:
        best = min(meeting, key=lambda c: (*_cost(c), -_score(c))) if floors else \
            min(meeting, key=lambda c: (*_rank(c), *_cost(c)))
        return SearchResult(recommended=best, meets_targets=True, pareto=pareto_front(cands), leaderboard=leaderboard)
    closest = min(cands, key=lambda c: (sum(c.violations.values()), *_rank(c)), default=None)
    return SearchResult(recommended=None, meets_targets=False, closest=closest, pareto=pareto_front(cands),
                        leaderboard=leaderboard)
