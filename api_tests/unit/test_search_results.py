"""A search's results from its candidates (service/search_results.py), computed by hand: the
misses of each target, the Pareto front over accuracy × latency × size, and the recommendation
(the cheapest file that meets every target; the most accurate within the cost targets when there
is no accuracy floor; else the closest)."""

from __future__ import annotations

from kdserve.service.schemas import Candidate, SearchTargets
from kdserve.service.search_results import pareto_front, summarize, violations


def cand(trial: int, accuracy: float, latency: float, size: int, params: int = 1000, precision: str = "fp32",
         targets: SearchTargets | None = None, val_kl: float | None = None) -> Candidate:
    c = {"trial": trial, "job_id": f"job_{trial}", "model_id": f"mdl_{trial}", "precision": precision, "score": None,
         "val_kl": val_kl,
         "accuracy": accuracy, "agreement": accuracy, "latency_ms": latency, "size_bytes": size,
         "num_parameters": params, "method": "kd", "student": {"architecture": "mlp", "params": {}}}
    missed = violations(c, targets or SearchTargets())
    return Candidate(**c, meets_targets=not missed, violations=missed)


def test_violations_are_relative_misses_of_each_target():
    t = SearchTargets(latency_ms=0.1, max_size_bytes=1000, max_parameters=500, min_accuracy=0.9)
    c = {"accuracy": 0.81, "agreement": 0.99, "latency_ms": 0.15, "size_bytes": 900, "num_parameters": 600}
    assert violations(c, t) == {"latency_ms": 0.5, "max_parameters": 0.2, "min_accuracy": 0.1}
    assert violations({**c, "latency_ms": 0.1, "num_parameters": 500, "accuracy": 0.9}, t) == {}


def test_pareto_front_drops_the_dominated_and_keeps_ties():
    a, b = cand(0, 0.95, 0.10, 5000), cand(1, 0.90, 0.05, 3000)
    c = cand(2, 0.89, 0.06, 3000)      # beaten by b on all three
    d = cand(3, 0.95, 0.10, 5000)      # ties a exactly: neither beats the other
    e = cand(4, 0.97, 0.20, 2000)      # most accurate and smallest, slowest
    front = pareto_front([a, b, c, d, e])
    assert [x.trial for x in front] == [1, 0, 3, 4]  # by latency


def test_with_a_floor_the_cheapest_file_that_meets_every_target_is_recommended():
    t = SearchTargets(latency_ms=0.2, min_accuracy=0.9)
    cands = [cand(0, 0.97, 0.15, 9000, targets=t), cand(1, 0.92, 0.05, 4000, targets=t),
             cand(2, 0.88, 0.01, 1000, targets=t), cand(3, 0.99, 0.30, 20000, targets=t)]
    r = summarize(cands, t)
    assert r.meets_targets and r.recommended.trial == 1 and r.closest is None
    assert [c.trial for c in r.leaderboard] == [3, 0, 1, 2]


def test_without_a_floor_the_most_accurate_file_within_the_cost_targets_is_recommended():
    t = SearchTargets(latency_ms=0.2)
    cands = [cand(0, 0.97, 0.15, 9000, targets=t), cand(1, 0.92, 0.05, 4000, targets=t),
             cand(3, 0.99, 0.30, 20000, targets=t)]
    assert summarize(cands, t).recommended.trial == 0


def test_equal_scores_go_to_the_student_closer_to_its_teacher():
    """With a handful of labelled validation rows, many trials score 1.0: the one with the lower
    KL to the teacher (measured on every validation row) ranks first, before cost decides."""
    t = SearchTargets(latency_ms=0.2)
    cands = [cand(0, 1.0, 0.05, 4000, targets=t, val_kl=0.20), cand(1, 1.0, 0.10, 9000, targets=t, val_kl=0.05),
             cand(2, 1.0, 0.01, 1000, targets=t), cand(3, 0.99, 0.01, 1000, targets=t, val_kl=0.01)]
    r = summarize(cands, t)
    assert r.recommended.trial == 1 and [c.trial for c in r.leaderboard] == [1, 0, 2, 3]


def test_when_nothing_meets_the_targets_the_closest_is_named_with_its_misses():
    t = SearchTargets(latency_ms=0.01, min_accuracy=0.99)
    cands = [cand(0, 0.97, 0.02, 9000, targets=t), cand(1, 0.90, 0.011, 4000, targets=t)]
    # misses: trial 0 latency 1.0 + accuracy 0.0202 = 1.0202; trial 1 latency 0.1 + accuracy 0.0909 = 0.1909
    r = summarize(cands, t)
    assert not r.meets_targets and r.recommended is None
    assert r.closest.trial == 1 and r.closest.violations == {"latency_ms": 0.1, "min_accuracy": 0.0909}
    assert summarize([], t).closest is None
