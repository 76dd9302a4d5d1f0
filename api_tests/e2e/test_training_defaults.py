"""What a job that leaves training alone gets (issue 15, part 1), end to end through a real service:
the learning rate chosen per job where the old fixed 1e-3 fails, the best epoch published, the
epochs as resources (listing, publishing a kept one), the ce baseline on the card, and the student
and method picked for a job that names neither."""

from __future__ import annotations

import pytest

from api_tests.harness import assert_error, events, run_onnx, upload_dataset, upload_teacher, wait_job
from testkit import digits as dg

STUDENT = {"architecture": "mlp", "params": {"hidden_sizes": [32]}}
KD = {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}
EPOCHS = 16


@pytest.fixture(scope="module")
def ids(service, files):
    with service.client() as c:
        return {"teacher_id": upload_teacher(c, files["torchscript"], name="digits-defaults")["id"],
                "dataset_id": upload_dataset(c, files["npz"])["id"]}


def held_out_accuracy(client, model_id, digits, tmp_path, name) -> float:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(client.get(f"/v1/models/{model_id}/download").content)
    return dg.accuracy(run_onnx(path, digits.x_test), digits.y_test)


@pytest.fixture(scope="module")
def auto_job(service, ids):
    """A job that sets only teacher, data, student, method, epochs and seed."""
    with service.client() as c:
        r = c.post("/v1/jobs", json={**ids, "student": STUDENT, "method": KD, "training": {"epochs": EPOCHS}})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        return job


def test_auto_learning_rate_wins_where_the_old_default_fails(service, client, ids, auto_job, digits, tmp_path):
    old = {"epochs": EPOCHS, "learning_rate": 0.001, "weight_decay": 0.0, "grad_clip_norm": None,
           "early_stopping_patience": None, "publish": "last"}
    r = client.post("/v1/jobs", json={**ids, "student": STUDENT, "method": KD, "training": old})
    fixed = wait_job(client, r.json()["id"])
    assert fixed["status"] == "succeeded", fixed["error"]

    card = client.get(f"/v1/models/{auto_job['model_id']}").json()
    training = card["training"]
    assert training["learning_rate"] in (0.001, 0.003, 0.01, 0.03) and training["learning_rate"] != 0.001
    assert training["learning_rate_source"].startswith("auto: successive halving")
    assert [r["epoch"] for r in training["lr_search"]] == [2, 4]  # an eighth and a quarter of 16 epochs
    assert len(training["lr_search"][0]["scores"]) == 4 and len(training["lr_search"][1]["kept"]) == 1
    notes = [e for e in events(client, auto_job["id"]) if (e["data"] or {}).get("lr_search")]
    assert len(notes) == 2 and "learning rate search after epoch 2" in notes[0]["message"]
    assert auto_job["metrics"]["learning_rate"] == training["learning_rate"]

    ours = held_out_accuracy(client, auto_job["model_id"], digits, tmp_path, "auto")
    theirs = held_out_accuracy(client, fixed["model_id"], digits, tmp_path, "fixed")
    assert ours >= 0.93 and ours >= theirs + 0.02, (ours, theirs)


def test_the_best_epoch_is_published_and_epochs_are_listed(client, auto_job):
    training = client.get(f"/v1/models/{auto_job['model_id']}").json()["training"]
    listed = client.get(f"/v1/jobs/{auto_job['id']}/checkpoints").json()["data"]
    assert [c["epoch"] for c in listed] == list(range(1, training["epochs_run"] + 1))
    keys = [(c["val_score"], -c["val_loss"]) for c in listed]
    best = listed[keys.index(max(keys))]
    assert best["best"] and sum(c["best"] for c in listed) == 1
    assert training["best_epoch"] == training["published_epoch"] == best["epoch"] == auto_job["metrics"]["best_epoch"]
    assert training["published_because"].startswith(f"epoch {best['epoch']} had the best validation score")
    assert [c["epoch"] for c in listed if c["published"]] == [best["epoch"]]
    # the published epoch's validation metrics are the job's
    assert auto_job["metrics"]["student_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert auto_job["metrics"]["agreement"] == pytest.approx(best["val_agreement"], abs=1e-6)
    # weights kept: the best three and the last (epochs of the learning-rate search have none)
    kept = [c["epoch"] for c in listed if c["weights"]]
    assert best["epoch"] in kept or best["epoch"] <= 4
    assert listed[-1]["weights"] and 1 <= len(kept) <= 4 and all(e > 4 for e in kept)
    if training["stopped_early"]:
        assert training["epochs_run"] - training["best_epoch"] == 10  # the "auto" patience's floor


def test_publishing_a_kept_epoch(client, auto_job, digits, tmp_path):
    listed = client.get(f"/v1/jobs/{auto_job['id']}/checkpoints").json()["data"]
    chosen = next(c for c in listed if c["weights"] and not c["published"])
    r = client.post(f"/v1/jobs/{auto_job['id']}/checkpoints/{chosen['epoch']}/publish")
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    stages = [e["data"]["stage"] for e in events(client, job["id"]) if e["type"] == "stage" and "stage" in (e["data"] or {})]
    assert "training" in stages and sum(e["type"] == "metrics" for e in events(client, job["id"])) == 0
    # the same split and seed: the published weights score what that epoch scored
    assert job["metrics"]["student_accuracy"] == pytest.approx(chosen["val_accuracy"], abs=1e-6)
    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["training"]["from_checkpoint"] == {"job_id": auto_job["id"], "epoch": chosen["epoch"]}
    assert card["training"]["published_epoch"] == chosen["epoch"]
    assert card["training"]["published_because"] == f"epoch {chosen['epoch']} of job {auto_job['id']} was asked for"
    assert held_out_accuracy(client, job["model_id"], digits, tmp_path, "chosen") > 0.8

    not_kept = next(c["epoch"] for c in listed if not c["weights"])
    assert_error(client.post(f"/v1/jobs/{auto_job['id']}/checkpoints/{not_kept}/publish"), 404, "not_found", "epoch")
    assert_error(client.post("/v1/jobs/job_000000000000000000000000/checkpoints/1/publish"), 404, "not_found")
    assert_error(client.post(f"/v1/jobs/{job['id']}/checkpoints/1/publish"), 409, "conflict")
    other = {**auto_job["method"], "name": "dist", "params": {}}
    r = client.post("/v1/jobs", json={"teacher_id": auto_job["teacher_id"], "dataset_id": auto_job["dataset_id"],
                                      "student": auto_job["student"], "method": other,
                                      "from_checkpoint": {"job_id": auto_job["id"], "epoch": chosen["epoch"]}})
    assert_error(r, 422, "invalid_request", "method")


def test_baseline_puts_ce_beside_the_distilled_student(client, ids):
    r = client.post("/v1/jobs", json={**ids, "student": STUDENT, "method": {"name": "dist"}, "baseline": True,
                                      "training": {"epochs": 8, "learning_rate": 0.01}})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    base = client.get(f"/v1/models/{job['model_id']}").json()["baseline"]
    assert base["method"] == "ce" and 0.5 < base["accuracy"] <= 1 and 0.5 < base["agreement"] <= 1
    assert base["learning_rate"] == 0.01
    m = job["metrics"]
    assert base["accuracy_delta"] == pytest.approx(m["student_accuracy"] - base["accuracy"], abs=1e-6)
    assert base["agreement_delta"] == pytest.approx(m["agreement"] - base["agreement"], abs=1e-6)
    assert m["baseline_accuracy"] == base["accuracy"] and m["baseline_agreement"] == base["agreement"]
    assert any((e["data"] or {}).get("baseline") for e in events(client, job["id"]))


def test_baseline_needs_labels(client, service, tmp_path, digits, ids):
    path = dg.save_npz(digits.x_train[:200], None, tmp_path / "unlabelled.npz")
    unlabelled = upload_dataset(client, path)
    r = client.post("/v1/jobs", json={"teacher_id": ids["teacher_id"], "dataset_id": unlabelled["id"],
                                      "student": STUDENT, "method": KD, "baseline": True})
    assert_error(r, 422, "invalid_request", "baseline")


def test_auto_epochs_are_resolved_when_the_job_is_created(client, ids, digits):
    r = client.post("/v1/jobs", json={**ids, "student": STUDENT, "method": KD, "training": {"batch_size": 64}})
    assert r.status_code == 202, r.text
    job = r.json()
    n = len(digits.x_train)
    rows = n - round(n * 0.1)  # the training rows less the validation split
    assert job["epochs"] == job["training"]["epochs"] == max(10, min(200, -(-3000 // -(-rows // 64))))
    assert job["training"]["learning_rate"] == "auto"
    queued = events(client, job["id"])[0]
    assert queued["data"]["epochs_auto"] == job["epochs"] and "about 3000 optimizer steps" in queued["message"]
    client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_job_with_only_a_teacher_and_a_dataset_picks_and_trains_a_good_student(client, ids, digits, tmp_path):
    r = client.post("/v1/jobs", json=ids)
    assert r.status_code == 202, r.text
    job = r.json()
    teacher = client.get(f"/v1/teachers/{ids['teacher_id']}").json()
    budget = teacher["num_parameters"] // 10
    assert job["student"]["architecture"] == "mlp" and job["student"]["auto"]["max_params"] == budget
    assert "the teacher's" in job["student"]["reason"] and "/ 10" in job["student"]["reason"]
    # the method is left to a short trial between kd and dist; kd (with its defaults) until it has chosen
    assert job["method"]["name"] == "kd" and job["method"]["candidates"] == ["kd", "dist"]
    assert job["method"]["reason"].startswith("kd or dist, whichever a short trial")
    assert job["method"]["params"]["temperature"] == 4.0  # completed with the method's defaults
    queued = events(client, job["id"])[0]
    assert queued["data"]["picked"] == {"student": job["student"]["reason"], "method": job["method"]["reason"]}
    job = wait_job(client, job["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    winner = job["method"]["name"]
    assert winner in ("kd", "dist") and job["method"]["reason"].startswith(f"{winner}: a short trial on the validation")
    trial = [e for e in events(client, job["id"]) if "method" in (e.get("data") or {})]
    assert trial and trial[-1]["data"]["method"] == winner
    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["student"]["reason"] == job["student"]["reason"] and card["method"] == job["method"]
    assert set(card["training"]["lr_search"][0]["scores"]) == {f"{m} {lr:g}" for m in ("kd", "dist")
                                                               for lr in (1e-3, 3e-3, 1e-2, 3e-2)}
    assert budget // 2 < card["num_parameters"] <= budget  # the largest MLP that fits, counted by torch
    assert held_out_accuracy(client, job["model_id"], digits, tmp_path, "only-ids") >= 0.95


def test_student_auto_takes_a_budget_and_refuses_one_nothing_fits(client, ids):
    r = client.post("/v1/jobs", json={**ids, "student": {"auto": {"max_params": 3000}}, "method": KD,
                                      "training": {"epochs": 2}})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["student"]["params"]["hidden_sizes"] == [32]  # 64·32 + 32 + 32·10 + 10 = 2410; 48 wide is 3130
    assert client.get(f"/v1/models/{job['model_id']}").json()["num_parameters"] == 2410

    assert_error(client.post("/v1/jobs", json={**ids, "student": {"auto": {"max_params": 50}}}), 422,
                 "invalid_request", "student.auto")
    assert_error(client.post("/v1/jobs", json={**ids, "student": {"architecture": "mlp", "auto": {"ratio": 5}}}),
                 422, "invalid_request", "student.auto")
    assert_error(client.post("/v1/jobs", json={**ids, "student": {"params": {"hidden_sizes": [8]}}}), 422,
                 "invalid_request", "student.params")
    assert_error(client.post("/v1/jobs", json={**ids, "method": {"params": {"temperature": 2}}}), 422,
                 "invalid_request", "method.params")


def test_without_a_teacher_the_picked_method_is_ce(client, ids):
    r = client.post("/v1/jobs", json={"dataset_id": ids["dataset_id"], "training": {"epochs": 2}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["method"]["name"] == "ce" and "no teacher" in job["method"]["reason"]
    assert job["student"]["auto"]["max_params"] == 100_000
    assert wait_job(client, job["id"])["status"] == "succeeded"


def test_raw_tabular_features_are_standardised_inside_the_student(service, tmp_path):
    """Wine as load_wine gives it (proline ~1000 beside features ~0.1–10): the student standardises
    its inputs itself by default (the training split's statistics, inside the exported graph: the
    downloaded ONNX takes the raw features), and says so on the card."""
    import numpy as np
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float32), y, test_size=0.25, stratify=y, random_state=0)
    np.savez(tmp_path / "wine.npz", x=xtr, y=ytr)
    with service.client() as c:
        ds = upload_dataset(c, tmp_path / "wine.npz")

        def held_out(standardize) -> tuple[float, dict, dict]:
            body = {"dataset_id": ds["id"], "student": {"architecture": "mlp", "params": {"hidden_sizes": [16]}},
                    "method": {"name": "ce"}, "training": {"epochs": 60, "standardize_inputs": standardize}}
            job = wait_job(c, c.post("/v1/jobs", json=body).json()["id"])
            assert job["status"] == "succeeded", job["error"]
            card = c.get(f"/v1/models/{job['model_id']}").json()
            path = tmp_path / f"{standardize}.onnx"
            path.write_bytes(c.get(f"/v1/models/{job['model_id']}/download").content)
            return float((run_onnx(path, xte).argmax(1) == yte).mean()), card, job

        auto, auto_card, auto_job = held_out("auto")
        off, off_card, off_job = held_out(False)
    print(f"wine, raw features: standardised {auto:.3f}, not {off:.3f}")
    scaling = auto_card["input_scaling"]
    assert scaling["standardized"] and scaling["reason"].startswith("auto: features on very different scales")
    assert scaling["max_abs_mean_over_median_std"] > 10
    assert off_card["input_scaling"]["standardized"] is False and off_card["input_scaling"]["reason"] == "not asked"
    assert auto >= 0.9 and auto >= off
    # what the user should know, on the job and the card: 13 validation rows; unscaled features
    codes = lambda job: [w["code"] for w in job["warnings"]]  # noqa: E731
    assert codes(auto_job) == ["small_validation"] and "13 rows" in auto_job["warnings"][0]["message"]
    assert codes(off_job) == ["feature_scales", "small_validation"]
    assert [w["code"] for w in off_card["warnings"]] == codes(off_job)
