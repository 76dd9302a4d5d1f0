"""The training recipe's parts (worker/trainer.py): the learning-rate schedule, which parameters
decay, the selection score, the search's plan and progress, early stopping with the best epoch's
weights published, epochs "auto", a resume in the middle of an auto-learning-rate run, and the
API's error `param` for a field that is a number or "auto"."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api_tests.unit.test_resume import checkpoint_after

from kdserve.models.zoo import create_student
from kdserve.service import errors
from kdserve.service.schemas import TrainingSpec
from kdserve.service.spec.jobs import auto_epochs
from kdserve.worker import trainer
from kdserve.worker.data import Split
from kdserve.worker.losses import build_loss


def data(n=240, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = x[:, :c] * 3 + 0.3 * torch.randn(n, c, generator=g)
    y = t.argmax(1)
    y[::3] = -1
    return Split(x, y, t)


def fresh(seed=0):
    torch.manual_seed(seed)
    return create_student("mlp", {"hidden_sizes": [16]}, [12], 4), build_loss("kd", {})


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    total = 200  # warm-up: the first 5 %, 10 steps
    assert trainer.lr_at(1.0, 0, total) == pytest.approx(0.1)
    assert trainer.lr_at(1.0, 4, total) == pytest.approx(0.5)
    assert trainer.lr_at(1.0, 9, total) == pytest.approx(1.0)
    mid = 10 + (total - 10) // 2
    assert trainer.lr_at(1.0, mid, total) == pytest.approx(0.5, abs=0.01)
    assert trainer.lr_at(1.0, total - 1, total) < 0.001
    lrs = [trainer.lr_at(0.01, s, total) for s in range(10, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_applies_to_weight_matrices_only():
    student = create_student("mlp", {"hidden_sizes": [16], "batch_norm": True}, [12], 4)
    groups = trainer.param_groups([student], 0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in student.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    assert sum(len(g["params"]) for g in groups) == len(list(student.parameters()))


def test_selection_score_weighs_accuracy_and_agreement_by_the_rows_they_are_measured_on():
    m = {"val_accuracy": 0.5, "val_agreement": 1.0, "val_cosine": None}
    assert trainer.selection_score(m, n_labelled=10, n_val=40) == pytest.approx((10 * 0.5 + 40 * 1.0) / 50)
    assert trainer.selection_score({"val_accuracy": None, "val_agreement": 0.8, "val_cosine": None}, 0, 40) \
        == pytest.approx(0.8)
    assert trainer.selection_score({"val_accuracy": None, "val_agreement": None, "val_cosine": 0.9}, 0, 40) \
        == pytest.approx(0.9)


def test_auto_epochs_is_about_3000_steps_within_bounds():
    assert auto_epochs(1617, 64) == math.ceil(3000 / math.ceil(1617 / 64)) == 116
    assert auto_epochs(100, 64) == 200  # a tiny dataset: capped
    assert auto_epochs(1_000_000, 64) == 10  # a big one: at least 10 passes


def test_search_work_counts_four_then_two_then_one_arm():
    epochs = 80
    first, second = trainer.rung_epochs(epochs)
    assert (first, second) == (10, 20)
    assert trainer.search_work(epochs) == 4 * 10 + 2 * 10 + 60
    fractions = [trainer.work_done(e, epochs, 4) for e in range(epochs + 1)]
    assert fractions[0] == 0 and fractions[-1] == 1
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[first] == pytest.approx(40 / 120)
    assert trainer.work_done(20, 80) == 0.25


def test_a_method_trial_halves_eight_arms_in_three_rungs():
    # two methods × four rates: 8 → 4 → 2 → 1, after a sixteenth, an eighth and a quarter of the run
    assert trainer.rung_epochs(80, 8) == [5, 10, 20]
    assert trainer.search_work(80, 8) == 8 * 5 + 4 * 5 + 2 * 10 + 60  # 1.75 runs
    assert trainer.rung_epochs(80, 2) == [20]  # two methods at a given rate: one rung
    assert trainer.rung_epochs(5, 8) == [1, 2, 3]  # strictly increasing however short the run
    fractions = [trainer.work_done(e, 80, 8) for e in range(81)]
    assert fractions[5] == pytest.approx(40 / 140) and fractions[-1] == 1
    assert all(a < b for a, b in zip(fractions, fractions[1:]))


def test_a_method_trial_picks_the_method_with_the_rate_and_publishes_its_weights():
    spec = TrainingSpec(epochs=16, batch_size=32, learning_rate="auto", early_stopping_patience=None, seed=1)
    notes = []
    student, loss = fresh()
    result = trainer.train(student, loss, data(), data(60, seed=1), spec, torch.device("cpu"),
                           methods=("kd", "dist"), on_note=lambda msg, d: notes.append((msg, d)))
    first = result.lr_search[0]
    assert len(first["scores"]) == 8 and {k.split()[0] for k in first["scores"]} == {"kd", "dist"}
    assert [len(r["kept"]) for r in result.lr_search] == [4, 2, 1]
    assert result.lr_search[-1]["kept_methods"] == [result.method] and result.method in ("kd", "dist")
    assert result.method_source.startswith(f"{result.method}: a short trial on the validation split favoured it")
    assert type(result.loss_fn).__name__ == type(build_loss(result.method)).__name__
    assert any(d.get("method") == result.method for _, d in notes)
    # the survivor's own run: its scores match a plain run of that method and rate, epoch for epoch
    s2, _ = fresh()
    alone = TrainingSpec(**{**spec.model_dump(), "learning_rate": result.learning_rate})
    plain = trainer.train(s2, build_loss(result.method), data(), data(60, seed=1), alone, torch.device("cpu"))
    assert [m.train_loss for m in plain.history] == pytest.approx([m.train_loss for m in result.history])
    for a, b in zip(student.state_dict().values(), s2.state_dict().values()):
        assert torch.allclose(a, b)


def test_auto_learning_rate_searches_reports_progress_and_publishes_the_best_epoch():
    spec = TrainingSpec(epochs=16, batch_size=32, learning_rate="auto", early_stopping_patience=None, seed=1)
    notes, progress, epochs_seen = [], [], []
    student, loss = fresh()
    result = trainer.train(student, loss, data(), data(60, seed=1), spec, torch.device("cpu"),
                           on_epoch=lambda m: epochs_seen.append(m.epoch),
                           on_note=lambda msg, d: notes.append(d), on_progress=lambda e, f: progress.append((e, f)))
    assert result.learning_rate in trainer.LR_GRIDS["default"]
    assert [r["epoch"] for r in result.lr_search] == trainer.rung_epochs(16)
    assert len(result.lr_search[0]["kept"]) == 2 and result.lr_search[1]["kept"] == [result.learning_rate]
    assert result.learning_rate_source.startswith("auto: successive halving")
    # every lockstep epoch of the search is a note with each arm's score, then the run goes on
    assert [d["lr_search_epoch"] for d in notes if "lr_search_epoch" in d] == list(range(1, 5))
    assert [e for e, _ in progress] == list(range(1, 17)) and progress[-1][1] == 1.0
    assert all(a[1] < b[1] for a, b in zip(progress, progress[1:]))
    assert epochs_seen == list(range(1, 17))  # the survivor's search epochs are the run's first
    # published: the best validation epoch's weights, not the last's
    best = max(result.history, key=trainer.rank_key)
    assert result.best_epoch == result.published_epoch == best.epoch


def test_early_stopping_stops_after_patience_and_publishes_the_best_epoch():
    # a learning rate far too high: the score peaks early, then no epoch beats it
    spec = TrainingSpec(epochs=60, batch_size=32, learning_rate=3.0, early_stopping_patience=3, seed=0)
    student, loss = fresh()
    result = trainer.train(student, loss, data(), data(60, seed=1), spec, torch.device("cpu"))
    assert result.stopped_early and result.epochs_run < 60
    assert result.epochs_run - result.best_epoch == 3
    assert result.published_epoch == result.best_epoch

    last = TrainingSpec(epochs=6, batch_size=32, learning_rate=0.01, publish="last", seed=0)
    student, loss = fresh()
    assert trainer.train(student, loss, data(), data(60, seed=1), last, torch.device("cpu")).published_epoch == 6


def test_a_run_with_auto_learning_rate_resumes_exactly_after_the_search():
    spec = TrainingSpec(epochs=12, batch_size=32, learning_rate="auto", early_stopping_patience=None, seed=2)
    train_split, val_split = data(), data(60, seed=1)
    s_full, l_full = fresh()
    full = trainer.train(s_full, l_full, train_split, val_split, spec, torch.device("cpu"))

    s_a, l_a = fresh()
    state = checkpoint_after(2, s_a, l_a, train_split, val_split, spec)
    assert state["epoch"] == trainer.rung_epochs(12)[1] + 2  # checkpoints start once the rate is settled
    s_b, l_b = fresh()
    resumed = trainer.train(s_b, l_b, train_split, val_split, spec, torch.device("cpu"), resume=state)
    assert resumed.learning_rate == full.learning_rate and resumed.lr_search == full.lr_search
    for a, b in zip(s_full.state_dict().values(), s_b.state_dict().values()):
        assert torch.equal(a, b)
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]


def test_a_method_trial_resumes_with_the_winner_it_chose_before_the_checkpoint():
    spec = TrainingSpec(epochs=12, batch_size=32, learning_rate="auto", early_stopping_patience=None, seed=2)
    train_split, val_split = data(), data(60, seed=1)
    s_full, l_full = fresh()
    full = trainer.train(s_full, l_full, train_split, val_split, spec, torch.device("cpu"), methods=("kd", "dist"))

    state = checkpoint_after(2, *fresh(), train_split, val_split, spec, methods=("kd", "dist"))
    assert state["arm"]["method"] == full.method and state["method_source"] == full.method_source
    # the pipeline rebuilds the winner's loss (the job's spec names it by then) and resumes
    s_b = fresh()[0]
    resumed = trainer.train(s_b, build_loss(full.method), train_split, val_split, spec, torch.device("cpu"),
                            resume=state)
    assert resumed.method == full.method and resumed.lr_search == full.lr_search
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]
    for a, b in zip(s_full.state_dict().values(), s_b.state_dict().values()):
        assert torch.equal(a, b)


def test_a_number_or_auto_field_reports_the_field_not_the_union_member():
    app = FastAPI()
    errors.install(app)

    @app.post("/t")
    def t(spec: TrainingSpec):
        return {}

    r = TestClient(app).post("/t", json={"epochs": 0})
    body = r.json()["error"]
    assert r.status_code == 422 and body["param"] == "epochs"
    assert "greater than or equal to 1" in body["message"] and "'auto'" in body["message"]
