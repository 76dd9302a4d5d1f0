"""Every knob of kdserve, read once from KDSERVE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDSERVE_", extra="ignore")

    data_dir: Path = Field(Path(".kdserve"), description="database, blobs, embedded Redis socket, api_key")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/kdserve.db")
    redis_url: str | None = Field(None, description="Celery broker; unset: `kdserve up` runs an embedded redis-server")
    blob_dir: Path | None = Field(None, description="local blob store; default <data_dir>/blobs")
    queue: str = Field("kdserve", description="Celery queue name (lets several deployments share one Redis)")

    auth: str = Field("enabled", pattern="^(enabled|disabled)$")
    host: str = "127.0.0.1"
    port: int = 8000

    max_upload_bytes: int = Field(2 * 1024**3, description="uploads larger than this are refused with 413")
    probe_timeout_s: float = Field(120.0, description="limit for loading and test-running an uploaded teacher")
    visibility_timeout_s: int = Field(7 * 24 * 3600, description="Redis redelivery timeout; longer than any job")
    python: str | None = Field(None, description="interpreter for torch-side helpers (teacher probe, catalogue)")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kdserve.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.data_dir / "redis.sock").resolve()

    @property
    def resolved_redis_url(self) -> str:
        return self.redis_url or f"redis+socket://{self.embedded_redis_socket}"

    @property
    def api_key_file(self) -> Path:
        return self.data_dir / "api_key"


@lru_cache
def get_settings() -> Settings:
    return Settings()
