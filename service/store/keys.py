"""What every blob store shares about keys and scratch files (service/store/blobs.py's local
folder and service/store/s3.py's bucket both import it; neither imports the other at load)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_key(key: str) -> str:
    """The key itself if it is a plain relative POSIX path; ValueError otherwise. The same rule for
    every store, so a key that works on a laptop's folder also works on a bucket and back."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"blob key escapes the store: {key!r}")
    return key


def temp_file(folder: Path, suffix: str = "") -> Path:
    """A fresh empty file in `folder` (a store's scratch_dir)."""
    fd, name = tempfile.mkstemp(dir=folder, suffix=suffix)
    os.close(fd)
    return Path(name)
