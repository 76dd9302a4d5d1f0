"""deploy/ and the Dockerfile, checked without a Docker engine or a cluster: every Kubernetes
manifest against Kubernetes' own schemas (kubernetes-validate, strict: an unknown field fails),
the compose file against the compose-spec schema (the copy check-jsonschema vendors), and the
references between them and the code: settings, Dockerfile targets, probes, routes, names."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import kubernetes_validate
import pytest
import yaml

from api_tests.harness import REPO
from kdserve.cli import WORKER_QUEUES
from kdserve.service.settings import Settings

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGES = {"kdserve-api": "api", "kdserve-worker": "worker"}  # image name -> Dockerfile target


def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its instructions, with those of the stages it is built FROM before them
    (what the image inherits: USER, HEALTHCHECK, ENV)."""
    parts = re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.M)
    stages: dict[str, str] = {}
    for part in parts[1:]:
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", part)
        assert m, f"every stage is named: {part.splitlines()[0]}"
        stages[m.group(2)] = stages.get(m.group(1), "") + part
    return stages


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


# ---- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_schema(version):
    docs = k8s_docs()
    assert {d["kind"] for _, d in docs} >= {"ConfigMap", "Secret", "Deployment", "Service"}
    for name, doc in docs:
        assert "namespace" not in doc["metadata"], f"{name}: manifests are namespace-less (kubectl -n)"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} at {list(exc.path)}: {exc.message}")


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {i["name"] for i in kust["images"]} == set(IMAGES)


def test_compose_file_matches_the_compose_spec():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # and a broken file fails, so the check is real
    broken = compose()
    broken["services"]["api"]["ports"] = 8000
    assert list(validator.iter_errors(broken))


# ---- references between deploy/, the Dockerfile and the code ----------------------------------------


def test_every_kdserve_variable_is_a_setting():
    fields = {f"KDSERVE_{name.upper()}" for name in Settings.model_fields}
    for path in [COMPOSE, DOCKERFILE, *K8S.glob("*.yaml")]:
        used = set(re.findall(r"\bKDSERVE_[A-Z0-9_]+", path.read_text()))
        assert used <= fields, f"{path.relative_to(REPO)} sets unknown settings: {sorted(used - fields)}"
    config = k8s("ConfigMap", "kdserve-config")["data"]
    Settings(**{k[len("KDSERVE_"):].lower(): v for k, v in config.items()})  # the values parse too
    Settings(**{k[len("KDSERVE_"):].lower(): v for k, v in compose()["x-kdserve-env"].items()
                if k.startswith("KDSERVE_")})


def test_the_s3_store_points_at_minio_with_the_standard_aws_credentials():
    env = compose()["x-kdserve-env"]
    assert env["KDSERVE_BLOB_STORE"] == "s3" and env["KDSERVE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    minio = compose()["services"]["minio"]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (env["AWS_ACCESS_KEY_ID"],
                                                                        env["AWS_SECRET_ACCESS_KEY"])
    assert "mb" in " ".join(compose()["services"]["minio-init"]["command"])
    secret = k8s("Secret", "kdserve-secrets")["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KDSERVE_DATABASE_URL"} <= set(secret)


def test_compose_builds_dockerfile_targets():
    stages = dockerfile_stages()
    assert {"api", "worker", "all-in-one"} <= set(stages)
    built = 0
    for name, svc in compose()["services"].items():
        if "build" in svc:
            built += 1
            assert svc["build"]["target"] in stages, name
            assert IMAGES[svc["image"].split(":")[0]] == svc["build"]["target"], name
    assert built >= 3  # api, worker, prober
    for _, doc in k8s_docs():
        if doc["kind"] == "Deployment":
            for c in containers(doc):
                assert c["image"].split(":")[0] in IMAGES


def test_images_install_the_right_extras():
    stages = dockerfile_stages()
    extras = re.findall(r"^(\w+) = \[", (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
                        .split("\n[")[0], flags=re.M)
    installs = {stage: re.findall(r'pip install "/src\[([a-z,]+)\]"', text) for stage, text in stages.items()}
    for found in installs.values():
        for group in found:
            assert set(group.split(",")) <= set(extras)
    assert installs["api-build"] == ["cpu"]              # no torch in the API image
    assert installs["worker-build"] == ["worker,gpu"]    # onnxruntime-gpu, never onnxruntime next to it
    assert installs["all-in-one-build"] == ["worker,cpu"]
    assert "FROM ${CUDA_IMAGE} AS worker" in DOCKERFILE.read_text()
    for stage in ("api", "worker", "all-in-one"):
        assert re.search(r"^USER kdserve$", stages[stage], flags=re.M), f"{stage} runs as root"
        assert "HEALTHCHECK" in stages[stage], stage
    assert "uvicorn" in stages["api"] and "kdserve.service.app:create_app" in stages["api"]
    limit = str(Settings.model_fields["limit_concurrency"].default)
    assert f'"--limit-concurrency", "{limit}"' in stages["api"]  # as `kdserve up` runs uvicorn
    assert 'CMD ["kdserve", "up"]' in stages["all-in-one"]
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for src in re.findall(r"^COPY (?!--from)(.+) /src", DOCKERFILE.read_text(), flags=re.M):
        assert set(src.split()) <= allowed, f"{src} is left out of the build context by .dockerignore"


def test_probes_point_at_healthz_and_readyz():
    from kdserve.service.api import metrics, ops

    routes = {r.path for router in (ops.router, metrics.router) for r in router.routes}
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    api = k8s("Deployment", "kdserve-api")
    (c,) = containers(api)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in port_names.values()
    assert "/readyz" in " ".join(compose()["services"]["api"]["healthcheck"]["test"])
    assert "/healthz" in dockerfile_stages()["api"]


def test_service_selects_the_api_pods():
    api, svc = k8s("Deployment", "kdserve-api"), k8s("Service", "kdserve-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in containers(api)[0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names


def test_config_and_secret_references_exist():
    names = {(d["kind"], d["metadata"]["name"]) for _, d in k8s_docs()}
    for _, doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        for c in containers(doc):
            for ref in c.get("envFrom", []):
                kind, name = ("ConfigMap", ref["configMapRef"]["name"]) if "configMapRef" in ref else (
                    "Secret", ref["secretRef"]["name"])
                assert (kind, name) in names, f"{doc['metadata']['name']} reads a missing {kind} {name}"


def test_workers_get_a_gpu_and_time_to_checkpoint():
    worker = k8s("Deployment", "kdserve-worker")
    (c,) = containers(worker)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    devices = compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # workers train, the prober probes uploads; `kdserve worker --queues` knows both
    commands = [c["command"] for d in (worker, k8s("Deployment", "kdserve-prober")) for c in containers(d)]
    commands += [s["command"] for n, s in compose()["services"].items() if n in ("worker", "prober")]
    queues = {cmd[cmd.index("--queues") + 1] for cmd in commands}
    assert queues == {"jobs", "probe"} and queues <= set(WORKER_QUEUES)
    prober = containers(k8s("Deployment", "kdserve-prober"))[0]
    assert "nvidia.com/gpu" not in prober["resources"].get("limits", {})
    config = k8s("ConfigMap", "kdserve-config")["data"]
    assert config["KDSERVE_PROBE"] == compose()["x-kdserve-env"]["KDSERVE_PROBE"] == "worker"


def test_redis_keeps_an_append_only_file_and_prometheus_scrapes_the_api():
    services = compose()["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    host, port = job["static_configs"][0]["targets"][0].split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    assert any(v.startswith("./prometheus.yml:") for v in services["prometheus"]["volumes"])
    assert "redis://redis:6379" in " ".join(services["flower"]["command"])
    assert set(services) >= {"api", "worker", "prober", "redis", "postgres", "minio", "minio-init", "prometheus",
                             "flower"}


def test_teachers_run_jailed_and_the_prober_gets_no_secrets():
    """README "teacher jail": the images that run teachers have bubblewrap; the pods and compose
    services that run them have the seccomp profile that lets it build namespaces; the prober, which
    runs every upload, sees no database URL and no bucket credentials; no image works in /data."""
    stages = dockerfile_stages()
    for target in ("worker", "all-in-one"):
        assert "bubblewrap" in stages[target], target
    assert "WORKDIR /data" not in DOCKERFILE.read_text()
    profile = json.loads((K8S / "seccomp" / "kdserve-jail.json").read_text())
    denied = {n for rule in profile["syscalls"] for n in rule["names"]}
    assert {"ptrace", "bpf", "kexec_load", "init_module"} <= denied and not denied & {"unshare", "clone", "mount"}
    for name, container in (("kdserve-worker", "worker"), ("kdserve-prober", "prober")):
        spec = k8s("Deployment", name)["spec"]["template"]
        (c,) = containers(k8s("Deployment", name))
        assert c["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "kdserve-jail.json"}
        assert spec["metadata"]["annotations"][f"container.apparmor.security.beta.kubernetes.io/{container}"] == "unconfined"
        assert not c["securityContext"].get("privileged") and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (prober,) = containers(k8s("Deployment", "kdserve-prober"))
    assert not any("secretRef" in ref for ref in prober.get("envFrom", [])) and not prober.get("volumeMounts", [])[1:]
    services = compose()["services"]
    assert not {k for k in services["prober"]["environment"] if k.startswith("AWS_") or k == "KDSERVE_DATABASE_URL"}
    for service in ("worker", "prober"):
        opts = services[service]["security_opt"]
        seccomp = next(o for o in opts if o.startswith("seccomp="))
        assert (COMPOSE.parent / seccomp.split("=", 1)[1]).resolve() == (K8S / "seccomp" / "kdserve-jail.json").resolve()


def test_only_the_api_is_published_beyond_the_host():
    """MinIO's console, Prometheus and Flower (no login, and it can revoke tasks) listen on the
    host's loopback only; the API is the one port meant for other machines."""
    services = compose()["services"]
    for name in ("minio", "prometheus", "flower"):
        ports = services[name]["ports"]
        assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)
    published = {name for name, s in services.items() for p in s.get("ports", []) if not str(p).startswith("127.0.0.1:")}
    assert published == {"api"}
