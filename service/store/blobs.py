"""Blob store for uploads, checkpoints and artifacts. Local folder by default.

Keys are relative POSIX paths (`teachers/tch_…/teacher.onnx`). Writes are atomic: a file appears
under its key complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh file on the store's file system, so put_file() of it is a rename."""
        fd, name = tempfile.mkstemp(dir=self.root / ".tmp", suffix=suffix)
        os.close(fd)
        return Path(name)

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

    def ping(self) -> None:
        probe = self.temp_path()
        probe.unlink()
