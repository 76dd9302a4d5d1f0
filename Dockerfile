# syntax=docker/dockerfile:1
# kdserve images: one Dockerfile, three targets (deploy/docker-compose.yml and deploy/k8s/ use the first two).
#
#   docker build --target api        -t kdserve-api .     # slim: FastAPI + onnxruntime (CPU), no torch
#   docker build --target worker     -t kdserve-worker .  # CUDA: torch (CUDA wheel) + onnxruntime-gpu
#   docker build --target all-in-one -t kdserve .         # one box: `kdserve up` (API + worker + embedded Redis)
#
# The API never imports torch: it validates jobs with the torch-free specs (service/spec/) and sends
# uploaded teachers to a worker to be probed (KDSERVE_PROBE=auto picks `worker` when torch is
# missing). Workers consume the job queue and `<queue>.probe`; `kdserve worker --queues probe` is a
# small CPU-only prober that answers uploads while every GPU worker trains.
#
# Build arguments:
#   TORCH_VERSION     the torch every image with torch gets (Makefile pins the same one)
#   TORCH_INDEX_URL   a wheel index for torch, e.g. PyTorch's index for one CUDA version (worker) or
#                     its CPU index (all-in-one, much smaller); empty: PyPI's default build, which on
#                     Linux x86-64 is a CUDA build
#   CUDA_IMAGE        the worker's base (a CUDA + cuDNN runtime that onnxruntime-gpu runs on)
# All images run as the unprivileged user `kdserve` (uid 10001) with their state under /data.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- the package sources, copied once for every install below -------------------------------------
FROM ${PYTHON_IMAGE} AS src
COPY pyproject.toml README.md /src/
COPY kdserve /src/kdserve
COPY service /src/service
COPY worker /src/worker
COPY models /src/models

# ---- what the python:3.11-slim images share: a build stage with a venv, a runtime stage with a user -
FROM ${PYTHON_IMAGE} AS python-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kdserve
ENV PATH=/opt/kdserve/bin:$PATH

FROM ${PYTHON_IMAGE} AS python-runtime
RUN useradd --create-home --uid 10001 kdserve && mkdir /data && chown kdserve /data && chmod 0700 /data
ENV PATH=/opt/kdserve/bin:$PATH KDSERVE_DATA_DIR=/data KDSERVE_HOST=0.0.0.0 PYTHONUNBUFFERED=1
USER kdserve
# Not the data dir: a working directory is where tools look for modules first, and /opt/kdserve is
# root's (the services run in the folder of their own code anyway: service/supervisor.py CODE_ROOT).
WORKDIR /opt/kdserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# ---- api: the HTTP API and ONNX serving, without torch ---------------------------------------------
FROM python-build AS api-build
COPY --from=src /src /src
# `cpu` = onnxruntime; no `worker` extra, so no torch, transformers or scikit-learn
RUN pip install "/src[cpu]" \
 && if python -c "import torch" 2>/dev/null; then echo "torch leaked into the API image" >&2; exit 1; fi

FROM python-runtime AS api
COPY --from=api-build /opt/kdserve /opt/kdserve
# --limit-concurrency: KDSERVE_LIMIT_CONCURRENCY's default, what `kdserve up` passes (README "Request limits")
CMD ["uvicorn", "--factory", "kdserve.service.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--limit-concurrency", "1024"]

# ---- worker: training, export and the teacher probe on a GPU ----------------------------------------
FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kdserve
ENV PATH=/opt/kdserve/bin:$PATH
RUN pip install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY --from=src /src /src
# `gpu` = onnxruntime-gpu and never onnxruntime: both install the `onnxruntime` module over each other
RUN pip install "/src[worker,gpu]" \
 && if pip show onnxruntime >/dev/null 2>&1; then echo "onnxruntime (CPU) next to onnxruntime-gpu" >&2; exit 1; fi \
 && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"

FROM ${CUDA_IMAGE} AS worker
ENV DEBIAN_FRONTEND=noninteractive
# bubblewrap: the teacher jail (README "teacher jail"); every uploaded teacher runs inside it
RUN apt-get update && apt-get install -y --no-install-recommends python3 bubblewrap && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 kdserve && mkdir /data && chown kdserve /data && chmod 0700 /data
COPY --from=worker-build /opt/kdserve /opt/kdserve
ENV PATH=/opt/kdserve/bin:$PATH KDSERVE_DATA_DIR=/data PYTHONUNBUFFERED=1
USER kdserve
WORKDIR /opt/kdserve
# A worker has no HTTP port, and its solo pool cannot answer a Celery ping while it trains: the
# check is that it reaches its broker. A worker that dies mid-job is found by the reaper (heartbeats).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
  CMD ["python", "-c", "from kdserve.service.queue import redis_client; from kdserve.service.settings import get_settings; redis_client(get_settings().resolved_redis_url).ping()"]
CMD ["kdserve", "worker", "--queues", "all"]

# ---- all-in-one: API + one worker + embedded Redis + SQLite in one container (`kdserve up`) --------
FROM python-build AS all-in-one-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY --from=src /src /src
RUN pip install "/src[worker,cpu]"

FROM python-runtime AS all-in-one
USER root
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
USER kdserve
COPY --from=all-in-one-build /opt/kdserve /opt/kdserve
CMD ["kdserve", "up"]
