"""Every knob of kdserve, read once from KDSERVE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from kdserve.service.sandbox.jail import JailConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDSERVE_", extra="ignore")

    data_dir: Path = Field(Path(".kdserve"), description="database, blobs, embedded Redis socket, api_key")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/kdserve.db")
    redis_url: str | None = Field(None, description="Celery broker; unset: `kdserve up` runs an embedded redis-server")
    blob_dir: Path | None = Field(None, description="local blob store; default <data_dir>/blobs")
    blob_store: Literal["local", "s3"] = Field("local", description="where blobs live: `local` (blob_dir, one "
                                               "machine) or `s3` (an S3-compatible bucket shared by many machines)")
    s3_bucket: str | None = Field(None, description="bucket of the s3 blob store (required with blob_store=s3)")
    s3_prefix: str = Field("", description="key prefix inside the bucket (lets deployments share one bucket)")
    s3_endpoint_url: str | None = Field(None, description="S3 API address for MinIO, Ceph, moto…; unset: AWS. "
                                        "Credentials come from boto3's chain (AWS_ACCESS_KEY_ID, profiles, roles)")
    s3_region: str | None = Field(None, description="bucket region; unset: boto3's default (AWS_DEFAULT_REGION)")
    s3_cache_dir: Path | None = Field(None, description="local copies of s3 blobs that workers and the API open as "
                                      "files; default <data_dir>/blob_cache")
    s3_cache_max_bytes: int = Field(20 * 1024**3, ge=0, description="bound on s3_cache_dir: after a download the "
                                    "least recently used copies are removed until it fits (never one used in the last "
                                    "10 minutes; a removed copy is fetched again when needed); 0: no bound")
    queue: str = Field("kdserve", description="Celery queue name (lets several deployments share one Redis)")

    auth: str = Field("enabled", pattern="^(enabled|disabled)$", description="`disabled`: no API keys, every "
                      "caller is an admin of tenant `default` (a trusted network only)")
    auth_cache_s: float = Field(0.5, ge=0, le=1, description="how long an API process trusts an API key it "
                                "checked: a revoked key (`kdserve keys revoke`) stops working on /v1, /v2, open event "
                                "streams and downloads within it")
    metrics_token: str | None = Field(None, description="when set, GET /metrics needs `Authorization: Bearer "
                                      "<token>` and labels inference series by model id; unset, it is open and "
                                      "labels them by a hash of the id (no tenant's ids to the world)")
    probe_cache_s: float = Field(5.0, ge=0, le=300, description="GET /metrics and /readyz answer from a reading "
                                 "this fresh (database, broker, workers' broadcast, blob store): probes and "
                                 "scrapes cost the backends at most one reading per interval")
    host: str = Field("127.0.0.1", description="`kdserve up`'s API bind address (0.0.0.0 in the images)")
    port: int = Field(8000, description="`kdserve up`'s API port")

    max_upload_bytes: int = Field(2 * 1024**3, description="uploads larger than this are refused with 413")
    probe_timeout_s: float = Field(120.0, description="limit for loading and test-running an uploaded teacher")
    probe: Literal["auto", "local", "worker"] = Field(
        "auto", description="where uploaded teachers are probed: `local` (a child process of the API; needs torch "
        "there), `worker` (a task on a worker's `<queue>.probe` queue: the slim API image), `auto` (local when torch "
        "is importable or `python` is set, else worker)")
    visibility_timeout_s: int = Field(7 * 24 * 3600, description="Redis redelivery timeout; longer than any job")
    python: str | None = Field(None, description="interpreter for torch-side helpers (the teacher probe)")
    jail: Literal["bwrap", "off"] = Field(
        "bwrap", description="how uploaded teachers run: `bwrap` (in a bubblewrap sandbox: no files but their own, no "
        "network, no secrets, no new processes; teacher uploads and jobs are refused when bubblewrap cannot start) or "
        "`off` (an operator's explicit opt-out: a plain child process, still with the limits below and seccomp)")
    teacher_memory_bytes: int = Field(8 * 1024**3, ge=64 * 1024**2, description="memory (RLIMIT_DATA) of one "
                                      "jailed teacher process: a probe, or a job's teacher")
    teacher_cpu_seconds: int = Field(6 * 3600, ge=10, description="CPU time of one job's jailed teacher process (a "
                                     "probe gets probe_timeout_s)")
    teacher_call_timeout_s: float = Field(600.0, gt=0, description="longest a jailed teacher may take over one batch "
                                          "of forward passes before the job fails")

    max_attempts: int = Field(3, ge=1, description="deliveries of a job before it fails with worker_lost")
    heartbeat_s: float = Field(5.0, gt=0, description="how often a running job's worker says it is alive")
    stale_after_s: float = Field(30.0, gt=0, description="a running job silent this long has lost its worker")
    reaper_interval_s: float = Field(10.0, gt=0, description="how often workers look for lost and unsent jobs")
    worker_nice: int = Field(10, ge=0, le=19, description="niceness of worker processes: on a machine shared with "
                             "the API, training yields the CPU to it (0 = the same priority)")
    worker_threads: int = Field(0, ge=0, le=1024, description="torch CPU threads per worker; 0 = torch's default "
                                "(one per core), or under `kdserve up --workers N` the cores shared among the N")
    cancel_grace_s: float = Field(30.0, gt=0, description="a cancelled job stuck this long has its worker killed")
    worker_max_memory_bytes: int | None = Field(
        None, ge=0, description="address space a worker process may hold for data (RLIMIT_DATA, set when it starts): "
        "past it an allocation fails and the job ends `out_of_memory` instead of the kernel's OOM killer taking the "
        "worker or the machine; unset: 80% of the machine's memory, shared among `kdserve up`'s workers; 0: no limit")
    job_max_parameters: int = Field(400_000_000, ge=1, description="most student parameters a job may ask for "
                                    "(estimated at pre-flight from the architecture's params; 422 past it)")
    job_max_memory_bytes: int = Field(16 * 1024**3, ge=1, description="most worker memory a job may need by the "
                                      "pre-flight estimate: training state (4 × parameters), one batch's activations, "
                                      "the data and token arrays, the teacher (422 naming what to lower)")
    job_max_classes: int = Field(100_000, ge=2, description="most output classes (or embedding width) a job's "
                                 "student may have")
    tenant_max_active_jobs: int = Field(100, ge=1, description="queued + running jobs per tenant (429 past it)")
    tenant_max_storage_bytes: int = Field(200 * 1024**3, ge=1, description="teachers + datasets + models per tenant (413)")
    max_request_bytes: int = Field(16 * 1024**2, ge=1024, description="largest JSON (or binary tensor) request body "
                                   "(/v1/jobs, predict, /v2 infer); larger is refused with 413, on Content-Length or "
                                   "while it streams, and only after the API key was checked. Multipart uploads have "
                                   "max_upload_bytes instead")
    max_request_rows: int = Field(4096, ge=1, description="most rows (samples, texts) in one predict or /v2 infer "
                                  "request (413 past it)")
    max_request_text_chars: int = Field(1_000_000, ge=1, description="most characters of text (texts and text pairs "
                                        "together) one request to a text student may have tokenised (413 past it)")
    parse_processes: int = Field(1, ge=1, le=64, description="child processes that parse JSON bodies over 64 KiB, so "
                                 "a large body never holds the API's event loop (a parse holds Python's GIL: a "
                                 "thread would not free it)")
    limit_concurrency: int = Field(1024, ge=1, description="`kdserve up`: uvicorn's limit on connections and requests "
                                   "in progress at once; past it new ones get 503 (with plain uvicorn, pass "
                                   "--limit-concurrency)")
    probe_max_concurrent: int = Field(4, ge=1, description="uploaded teachers probed at once by this API process; "
                                      "past it an upload is refused with 503 (every probe holds a thread and a child "
                                      "process or a worker's answer)")
    probe_max_per_tenant: int = Field(2, ge=1, description="uploaded teachers of one tenant probed at once; past it "
                                      "that tenant's upload is refused with 429")
    tenant_max_event_streams: int = Field(16, ge=1, description="open Server-Sent Event streams per tenant and API "
                                          "process (429 past it)")
    tenant_max_uploads: int = Field(4, ge=1, description="teacher and dataset uploads in progress at once per tenant "
                                    "and API process (429 past it)")
    disk_reserve_bytes: int = Field(2 * 1024**3, ge=0, description="free space an upload must leave on the disk of "
                                    "the blob store's scratch folder; an upload that would go under it is refused "
                                    "with 507 (before its body when Content-Length says so, else as it streams)")
    temp_max_age_s: float = Field(6 * 3600, gt=0, description="temporary files (uploads in progress, staged "
                                  "probes, worker scratch folders) untouched this long are orphans: removed at start "
                                  "and by a sweep every `temp_sweep_interval_s`")
    temp_sweep_interval_s: float = Field(600, gt=0, description="how often the API sweeps orphaned temporary files")
    max_zip_members: int = Field(10_000, ge=1, description="members of an uploaded zip (npz, archives)")
    max_unzipped_bytes: int = Field(8 * 1024**3, ge=1, description="declared uncompressed size of an uploaded zip")
    max_dataset_bytes: int = Field(4 * 1024**3, ge=1, description="size of a dataset once parsed (x as float32, y "
                                   "as int64; what is stored and charged to the quota): an npz over it is refused "
                                   "from its array headers before its data is read, a CSV at the line that passes it "
                                   "(413)")
    max_classes: int = Field(5000, ge=1, description="labels must be class indices 0..max_classes-1 (422 naming the "
                             "line or row of the first that is not)")
    dataset_parse_memory_bytes: int = Field(10 * 1024**3, ge=64 * 1024**2, description="memory (address space) the "
                                            "child process that parses an uploaded dataset may take beyond its own "
                                            "start; an upload that needs more is refused with 413")
    dataset_parse_timeout_s: float = Field(900.0, gt=0, description="an upload whose parsing takes longer is refused "
                                           "with 413 (its child process is killed)")

    # Webhooks (kdserve.service.webhooks): sent by the workers, signed per Standard Webhooks.
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="attempts to deliver one webhook message before "
                                      "it is `failed` (retried on a non-2xx answer, a timeout, a connection error)")
    webhook_retry_base_s: float = Field(5.0, gt=0, description="the wait before the first retry; later ones wait "
                                        "6, 24, 120, 360, 720… times as long (5 s, 30 s, 2 min, 10 min, 30 min, 1 h…)")
    webhook_timeout_s: float = Field(10.0, gt=0, le=300, description="how long one delivery attempt waits to "
                                     "connect and for the answer's headers (redirects are never followed)")
    webhook_senders: int = Field(4, ge=1, le=64, description="delivery threads per worker process (a slow "
                                 "receiver holds one for up to webhook_timeout_s; jobs never wait for them)")
    webhook_max_per_tenant: int = Field(20, ge=1, description="webhook endpoints a tenant may have (429 past it)")
    webhook_allow_private: bool = Field(False, description="let webhooks go to loopback, private, link-local and "
                                        "other non-public addresses (by default refused at create and at delivery, "
                                        "so no tenant can reach into the cluster); the service's own API port stays "
                                        "refused")
    webhook_allowed_networks: str = Field("", description="comma-separated host names and CIDRs (e.g. "
                                          "`hooks.internal,10.1.0.0/16`) webhooks may reach although not public")

    # Serving (service/serving/runtime.py): onnxruntime sessions in the API process.
    preload_models: str = Field("", description="comma-separated model ids (`mdl_…` or `mdl_…:int8`) loaded at start "
                                "instead of on first use")
    model_cache_size: int = Field(32, ge=1, description="most onnxruntime sessions kept loaded (least recently used "
                                  "is dropped first)")
    model_cache_bytes: int = Field(4 * 1024**3, ge=1, description="most bytes of model files kept loaded")
    batching: bool = Field(True, description="dynamic batching: concurrent requests to one model run as one batch")
    batch_max_size: int = Field(64, ge=1, le=65_536, description="most samples (rows) in one dynamic batch")
    batch_max_wait_ms: float = Field(1.0, ge=0, le=1000, description="how long an idle model waits for more requests "
                                     "before running a batch (busy, requests pile up for its next run anyway)")
    # One: the API already runs one session call per core at once (service/serving/runtime.py: two per model,
    # its executor one per core), so more threads per call only oversubscribed the cores under load;
    # on 2 cores, under 32 clients, one thread per call served 1.4-1.9x the /v2 requests of 8 and 64
    # rows that onnxruntime's default did.
    inference_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads per session call; 0 = its "
                                   "default (one per physical core): the API runs one call per core at once")

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> "Settings":
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("KDSERVE_BLOB_STORE=s3 needs KDSERVE_S3_BUCKET")
        return self

    def teacher_jail(self, *, probe: bool, threads: int = 1, scratch: Path | None = None) -> "JailConfig":
        """The jail a teacher runs in: a probe's (one thread, CPU time and wall time of the probe
        limit) or a job's (the worker's threads, teacher_cpu_seconds)."""
        from kdserve.service.sandbox.jail import Budget, JailConfig

        cpu = int(self.probe_timeout_s) + 30 if probe else self.teacher_cpu_seconds
        budget = Budget(memory_bytes=self.teacher_memory_bytes, cpu_seconds=cpu, threads=max(1, threads),
                        file_bytes=max(self.max_upload_bytes, 64 * 1024**2))
        return JailConfig(mode=self.jail, budget=budget, python=self.python, scratch=scratch,
                          load_timeout_s=self.probe_timeout_s, call_timeout_s=self.teacher_call_timeout_s)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kdserve.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def resolved_s3_cache_dir(self) -> Path:
        return (self.s3_cache_dir or self.data_dir / "blob_cache").resolve()

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.data_dir / "redis.sock").resolve()

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or f"redis+socket://{self.embedded_redis_socket}"

    @property
    def api_key_file(self) -> Path:
        return self.data_dir / "api_key"

    @property
    def log_dir(self) -> Path:
        """Where `kdserve up` on a terminal (or with --quiet) writes its processes' output."""
        return self.data_dir / "logs"

    def make_data_dir(self) -> Path:
        """The data dir, created if needed and made 0700: it holds the database, the blobs, the
        embedded Redis socket and the bootstrap key, none of them for other users of the machine."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        return self.data_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
