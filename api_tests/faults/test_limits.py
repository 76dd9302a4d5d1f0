"""Per-tenant limits (concurrent jobs → 429, storage → 413) and the admin key that sees every tenant."""

from __future__ import annotations

from api_tests.harness import KD_JOB, Service, upload_dataset, upload_teacher, wait_job


def test_tenant_limits_and_admin(tmp_path, files):
    size = files["onnx"].stat().st_size + files["npz"].stat().st_size
    env = {"KDSERVE_TENANT_MAX_ACTIVE_JOBS": "1", "KDSERVE_TENANT_MAX_STORAGE_BYTES": str(size + 1000)}
    with Service(tmp_path / "svc", extra_env=env) as svc:
        tenant_a = svc.create_key("a")
        with svc.client(api_key=tenant_a) as a, svc.client(api_key=svc.create_key("b")) as b, svc.client() as admin:
            ids = {"teacher_id": upload_teacher(a, files["onnx"])["id"],
                   "dataset_id": upload_dataset(a, files["npz"])["id"]}
            # storage: one more dataset would pass tenant a's quota; tenant b has its own
            with open(files["npz"], "rb") as f:
                r = a.post("/v1/datasets", files={"file": ("again.npz", f)})
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
            assert "quota" in r.json()["error"]["message"]
            upload_dataset(b, files["npz"])
            # concurrency: a second active job is refused while the first runs
            first = a.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 40}})
            assert first.status_code == 202
            second = a.post("/v1/jobs", json={**KD_JOB, **ids})
            assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
            assert wait_job(a, first.json()["id"])["status"] == "succeeded"
            third = a.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}})
            assert third.status_code == 202
            wait_job(a, third.json()["id"])
            # the bootstrap key is an admin: it lists every tenant's records
            tenants_seen = {d["name"] for d in admin.get("/v1/datasets").json()["data"]}
            assert tenants_seen == {"digits.npz"} and len(admin.get("/v1/datasets").json()["data"]) == 2
            assert len(admin.get("/v1/jobs").json()["data"]) == 2
            assert len(b.get("/v1/jobs").json()["data"]) == 0
