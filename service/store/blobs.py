"""Blob store for uploads, checkpoints and artifacts: a local folder by default, an S3-compatible
bucket (s3.py) when several machines share the work.

Keys are relative POSIX paths (`teachers/tch_…/teacher.onnx`). Writes are atomic: a blob appears
under its key complete or not at all. Both stores hand out real local files (temp_path for
uploads to stream into, local_path for torch/onnxruntime to open), so callers never care which
store they have.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kdserve.service.store.keys import check_key, temp_file

if TYPE_CHECKING:
    from kdserve.service.settings import Settings


class BlobStore(Protocol):
    """What the API and the worker use of a blob store (LocalBlobStore, S3BlobStore)."""

    scratch_dir: Path  # local folder for temporary files; put_file(move=True) from here is cheapest

    def temp_path(self, suffix: str = "") -> Path: ...
    def put_file(self, key: str, src: Path, *, move: bool = False) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def delete_older_than(self, prefix: str, age_s: float) -> int: ...
    def ping(self) -> None: ...
    def fetch_url(self, key: str, expires_s: int) -> str | None: ...


def epoch_weights_key(job_id: str, epoch: int) -> str:
    """Where a job keeps an epoch's weights (the worker writes them, the API lists and publishes them)."""
    return f"jobs/{job_id}/epochs/{epoch}.pt"


def newest_mtime(path: Path) -> float:
    """The latest modification time of `path` or of anything under it (a folder in use keeps
    getting new files even when the folder itself was made long ago)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            try:
                newest = max(newest, sub.lstat().st_mtime)
            except FileNotFoundError:  # removed while we looked
                continue
    return newest


def remove_stale(folder: Path, age_s: float, pattern: str = "*") -> int:
    """Remove each entry of `folder` matching `pattern` (a file or a whole folder) in which nothing
    was modified for `age_s` seconds; returns how many went. What is still being written is left
    alone, and so is what this process may not remove."""
    removed, cutoff = 0, time.time() - age_s
    for entry in list(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            if newest_mtime(entry) >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:  # its owner removed it meanwhile, or it is not ours to remove
            continue
    return removed


def make_blob_store(settings: "Settings") -> BlobStore:
    """The store KDSERVE_BLOB_STORE names: `local` (KDSERVE_BLOB_DIR) or `s3` (KDSERVE_S3_*)."""
    if settings.blob_store == "s3":
        from kdserve.service.store.s3 import S3BlobStore  # boto3 is imported only by deployments that use it

        return S3BlobStore(settings.s3_bucket, prefix=settings.s3_prefix, cache_dir=settings.resolved_s3_cache_dir,
                           endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                           cache_max_bytes=settings.s3_cache_max_bytes)
    return LocalBlobStore(settings.resolved_blob_dir)


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch_dir = self.root / ".tmp"
        self.scratch_dir.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:  # a symlink inside the folder pointing out of it
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh file on the store's file system, so put_file() of it is a rename."""
        return temp_file(self.scratch_dir, suffix)

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(src, dest)
            return
        tmp = self.temp_path()
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        tmp = self.temp_path()
        tmp.write_bytes(data)
        self.put_file(key, tmp, move=True)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def fetch_url(self, key: str, expires_s: int) -> str | None:
        """A local folder has no URL: a process that reads it shares the machine (and the path)."""
        return None

    def local_path(self, key: str) -> Path:
        """A readable local file with the blob's content."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)

    def delete_older_than(self, prefix: str, age_s: float) -> int:
        """Remove what under `prefix/` was not modified for `age_s` seconds (orphans: a staged
        probe whose request died); returns how many entries went."""
        return remove_stale(self._path(prefix), age_s)

    def ping(self) -> None:
        """The scratch folder exists and this process may write there (a readiness probe: no file
        is written for it)."""
        if not os.access(self.scratch_dir, os.W_OK | os.X_OK):
            raise OSError(f"the blob store's scratch folder {self.scratch_dir} is not writable")
