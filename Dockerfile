# kdserve image: the API and the worker run from the same image (the worker needs torch; the API
# process never imports it, but probes uploads and reads the method catalogue in child processes).
#   docker build -t kdserve .
#   docker run -p 8000:8000 -v kdserve-data:/data kdserve            # API + worker + embedded Redis
#   docker run kdserve kdserve worker                                 # one more worker
# For a CUDA worker pass --build-arg TORCH_INDEX_URL=<your CUDA wheel index> and install the `gpu`
# extra (onnxruntime-gpu replaces onnxruntime: never keep both in one environment).

FROM python:3.11-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kdserve
ENV PATH=/opt/kdserve/bin:$PATH
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==$TORCH_VERSION --index-url "$TORCH_INDEX_URL"; \
    else pip install torch==$TORCH_VERSION; fi
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY worker /src/worker
COPY models /src/models
RUN pip install /src

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 kdserve && mkdir /data && chown kdserve /data
COPY --from=build /opt/kdserve /opt/kdserve
ENV PATH=/opt/kdserve/bin:$PATH KDSERVE_DATA_DIR=/data KDSERVE_HOST=0.0.0.0
USER kdserve
WORKDIR /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["kdserve", "up"]
