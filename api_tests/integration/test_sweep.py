"""The sweep of orphaned temporary files (service/sweep.py) on both blob stores: staged probes
older than the age go, newer ones and everything outside tmp/probes/ stay, and the scratch
folder's stale files and folders go while one still being written stays."""

from __future__ import annotations

import os
import time

from kdserve.service.settings import Settings
from kdserve.service.sweep import STAGED_PROBES, sweep


def test_staged_probes_and_scratch_files_older_than_the_age_go(store, tmp_path):
    store.put_bytes(f"{STAGED_PROBES}/abc/teacher.onnx", b"staged")
    store.put_bytes("teachers/tch_1/teacher.onnx", b"kept: not temporary")
    old = time.time() - 7200
    stale_file, stale_dir, fresh = (store.scratch_dir / "tmpa", store.scratch_dir / "tmpdir", store.scratch_dir / "tmpb")
    stale_file.write_bytes(b"x")
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "model.onnx").write_bytes(b"x")
    fresh.write_bytes(b"x")
    for path in (stale_file, stale_dir / "sub" / "model.onnx", stale_dir / "sub", stale_dir):
        os.utime(path, (old, old))

    settings = Settings(data_dir=tmp_path / "data", temp_max_age_s=3600)
    assert sweep(settings, store) >= 2  # the two stale scratch entries (and any stale kdserve-hf-* in /tmp)
    assert store.exists(f"{STAGED_PROBES}/abc/teacher.onnx") and fresh.exists()
    assert not stale_file.exists() and not stale_dir.exists()

    time.sleep(1.1)  # S3 keeps whole seconds
    assert store.delete_older_than(STAGED_PROBES, 1) == 1
    assert not store.exists(f"{STAGED_PROBES}/abc/teacher.onnx")
    assert store.get_bytes("teachers/tch_1/teacher.onnx") == b"kept: not temporary"
