"""Dataset uploads are parsed within bounds (issue 13): an npz is judged by its array headers
before its data is read, a CSV is streamed, labels are class indices below KDSERVE_MAX_CLASSES,
the parse runs in a child process with a memory limit, and the quota charges the canonical npz
that is stored. Every hostile file is built here; each gets a 4xx with the error shape, leaves
no file and no row behind, and the service answers the next request."""

from __future__ import annotations

import asyncio
import io
import os
import re
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from api_tests.harness import MACHINE_REDIS, Payload, Service, assert_error, child_processes, post_file, stored_files
from kdserve.service import ingest_child
from kdserve.service.store.datasets import load_canonical
from kdserve.service.ingest_errors import DatasetError
from kdserve.service.settings import Settings

MiB = 1024**2
TIGHT = {"KDSERVE_MAX_DATASET_BYTES": str(8 * MiB), "KDSERVE_DATASET_PARSE_MEMORY_BYTES": str(64 * MiB),
         "KDSERVE_TENANT_MAX_STORAGE_BYTES": str(4 * MiB)}


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A service with small bounds: 8 MiB datasets, a 64 MiB parse budget, 4 MiB per tenant."""
    with Service(tmp_path_factory.mktemp("tight"), redis_url=MACHINE_REDIS, extra_env=TIGHT) as svc:
        yield svc


@contextmanager
def untouched(svc: Service, client):
    """No file (blob or temp) and no dataset row is left behind, and the service still answers."""
    before_files, before_rows = stored_files(svc), client.get("/v1/datasets", params={"limit": 100}).json()["data"]
    yield
    assert stored_files(svc) == before_files
    assert client.get("/v1/datasets", params={"limit": 100}).json()["data"] == before_rows
    assert client.get("/healthz").json() == {"status": "ok"}


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_compressed(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def api_peak_rss_kib(svc: Service) -> int:
    """VmHWM (peak resident set) of the uvicorn process `kdserve up` started."""
    pid = next(pid for pid, cmd in child_processes(svc.proc.pid) if "uvicorn" in cmd)
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))


def decimal_csv(rows: int, columns: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    lines = [",".join(f"f{i}" for i in range(columns)) + ",label"]
    lines += [",".join(f"{v:.6f}" for v in row) + f",{i % 7}" for i, row in enumerate(rng.random((rows, columns)))]
    return ("\n".join(lines) + "\n").encode()


# ---- bounded parsing -------------------------------------------------------------------------


def test_npz_bomb_is_refused_from_its_header(tight):
    """A quarter of a megabyte of deflated zeros declaring 256 MiB of float64: refused from the npy
    header (the 64 MiB parse budget would have stopped a load with another message), and the API
    process's peak RSS does not move."""
    bomb = npz_compressed(x=np.zeros((256 * MiB // 8 // 64, 64)))
    assert len(bomb) < MiB
    with tight.client() as c, untouched(tight, c):
        before = api_peak_rss_kib(tight)
        r = post_file(c, "/v1/datasets", "bomb.npz", bomb)
        assert_error(r, 413, "payload_too_large", "file")
        assert "declares shape [524288, 64]" in r.json()["error"]["message"]
        assert api_peak_rss_kib(tight) - before < 32 * 1024


def test_csv_of_megabytes_parses_within_a_small_memory_budget(tight):
    """A 5 MB CSV parsed by a child allowed 64 MiB: the old reader needed ~28x the file."""
    content = decimal_csv(8000)
    assert len(content) > 4 * MiB
    with tight.client(api_key=tight.create_key("csv")) as c:
        r = post_file(c, "/v1/datasets", "d.csv", content)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["num_rows"] == 8000 and ds["feature_shape"] == [64] and ds["num_classes"] == 7
        assert 8000 * (64 * 4 + 8) < ds["size_bytes"] < len(content)  # what is stored: float32 x, int64 y


def test_csv_past_the_dataset_limit_is_refused_at_its_line(tight):
    """Single-digit cells take 2 bytes of text and 4 as float32: 6 MB of CSV passes 8 MiB."""
    line = ",".join("0" * 64) + "\n"
    content = (",".join(f"f{i}" for i in range(64)) + "\n" + line * 48_000).encode()
    with tight.client() as c, untouched(tight, c):
        r = post_file(c, "/v1/datasets", "d.csv", content)
        assert_error(r, 413, "payload_too_large", "file")
        assert re.search(r"at line \d+", r.json()["error"]["message"])


def test_big_label_jsonl_is_refused_quickly(client, unchanged):
    """34 bytes whose label 2**27 made a 134M-entry class count; the timeout only says it answered."""
    content = b'{"text": "hi", "label": 134217728}\n'
    r = client.post("/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(content))}, timeout=30)
    assert_error(r, 422, "label_out_of_range", "label_column")
    assert "line 1" in r.json()["error"]["message"]


def test_class_cap_is_the_setting(client, unchanged):
    ok = post_file(client, "/v1/datasets", "d.csv", b"a,label\n1,4999\n")
    assert ok.status_code == 201 and ok.json()["num_classes"] == 5000
    assert client.delete(f"/v1/datasets/{ok.json()['id']}").status_code == 204
    assert_error(post_file(client, "/v1/datasets", "d.csv", b"a,label\n1,5000\n"), 422, "label_out_of_range")


def test_parse_budget_exceeded_is_a_413():
    """A real child with a 64 MiB budget and a JSONL whose rows take more as Python objects."""
    settings = Settings(dataset_parse_memory_bytes=64 * MiB)
    with _files(b'{"text": "hi"}\n' * 2_000_000) as (src, dst):
        with pytest.raises(DatasetError) as err:
            asyncio.run(_parse(src, dst, settings))
        assert (err.value.status, err.value.code) == (413, "payload_too_large")
        assert "KDSERVE_DATASET_PARSE_MEMORY_BYTES" in err.value.message
        assert not dst.exists()


def test_parse_timeout_kills_the_child():
    settings = Settings(dataset_parse_timeout_s=0.05)
    with _files(decimal_csv(2000)) as (src, dst):
        with pytest.raises(DatasetError) as err:
            asyncio.run(_parse(src, dst, settings))
        assert err.value.status == 413 and "KDSERVE_DATASET_PARSE_TIMEOUT_S" in err.value.message
    assert not [cmd for _, cmd in child_processes(os.getpid()) if "ingest_child" in cmd]


@pytest.mark.parametrize("returncode,out", [(-9, b""), (1, b"Traceback"), (0, b"{\"format\": \"csv\"}")])
def test_a_parser_that_stops_without_an_answer_is_a_422(returncode, out):
    """Killed (the OOM killer, a crash in C) or failing with a bug: a 4xx for the file, never a 500."""
    with pytest.raises(DatasetError) as err:
        ingest_child._outcome(returncode, out, b"some stderr")
    assert (err.value.status, err.value.code) == (422, "invalid_request")
    assert "could not be parsed" in err.value.message


@contextmanager
def _files(content: bytes):
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "upload", Path(d) / "canonical.npz"
        src.write_bytes(content)
        yield src, dst


async def _parse(src: Path, dst: Path, settings: Settings):
    return await ingest_child.parse_upload(src, dst, settings, fmt=None, filename=src.name, columns={
        "label_column": "label", "text_column": "text", "text_pair_column": "text_pair"})


# ---- quota ------------------------------------------------------------------------------------


def test_quota_charges_the_stored_npz_not_the_upload(tight):
    """Deflated zeros: a few KB sent, megabytes stored. The stored size is what counts."""
    three_mib = npz_compressed(x=np.zeros((3 * MiB // 4 // 16, 16), np.float32))
    assert len(three_mib) < 64 * 1024
    with tight.client(api_key=tight.create_key("quota")) as c:
        first = post_file(c, "/v1/datasets", "a.npz", three_mib)
        assert first.status_code == 201, first.text
        blob = tight.data_dir / "blobs" / "datasets" / first.json()["id"] / "data.npz"
        assert first.json()["size_bytes"] == blob.stat().st_size > 3 * MiB
        with untouched(tight, c):
            r = post_file(c, "/v1/datasets", "b.npz", three_mib)
            assert_error(r, 413, "payload_too_large", "file")
            assert "quota" in r.json()["error"]["message"]


# ---- each former 5xx is a 4xx -----------------------------------------------------------------


@pytest.mark.parametrize("cell,code", [
    ("1e300", "label_out_of_range"), (str(2**62), "label_out_of_range"), ("-1", "label_out_of_range"),
    ("nan", "invalid_request"), ("1.5", "invalid_request"), ("inf", "invalid_request"), ("9" * 5000, "invalid_request"),
])
def test_csv_bad_labels(client, unchanged, cell, code):
    r = post_file(client, "/v1/datasets", "d.csv", f"a,b,label\n1,2,0\n3,4,{cell}\n".encode())
    assert_error(r, 422, code, "label_column")
    assert "line 3" in r.json()["error"]["message"]


@pytest.mark.parametrize("where", ["feature", "label", "header"])
def test_csv_field_over_128_kib(client, unchanged, where):
    big = "1" * (129 * 1024)
    content = {"feature": f"a,label\n1,0\n{big},1\n", "label": f"a,label\n1,0\n2,{big}\n",
               "header": f"a,{big}\n1,0\n"}[where]
    r = post_file(client, "/v1/datasets", "d.csv", content.encode())
    assert_error(r, 422, "invalid_request")
    assert "field larger than field limit" in r.json()["error"]["message"]


def test_csv_with_a_nul_byte(client, unchanged):
    assert_error(post_file(client, "/v1/datasets", "d.csv", b"a,label\n1\x00,0\n"), 422, "invalid_request")


@pytest.mark.parametrize("form", [{"format": "npz"}, {}])
def test_npy_sent_as_npz(client, unchanged, form):
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), np.float32))
    r = post_file(client, "/v1/datasets", "d.npz", buf.getvalue(), **form)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_format", r.text


@pytest.mark.parametrize("arrays", [
    lambda m: {"x": np.array([[Payload(m)], [Payload(m)]], dtype=object)},
    lambda m: {"x": np.zeros((2, 2)), "y": np.array([Payload(m), 1], dtype=object)},
    lambda m: {"x": np.array([(1.0, Payload(m))], dtype=[("a", "f8"), ("b", "O")]).reshape(1, 1)},
], ids=["object_x", "object_y", "object_field"])
def test_npz_with_objects_is_never_unpickled(client, unchanged, tmp_path, arrays):
    marker = tmp_path / "pwned"
    assert_error(post_file(client, "/v1/datasets", "d.npz", npz(**arrays(str(marker)))), 422, "unsafe_file", "file")
    assert not marker.exists()


@pytest.mark.parametrize("x", [
    np.array([["a", "b"], ["c", "d"]]), np.array([[b"a"], [b"b"]]), np.ones((2, 2), np.complex64),
    np.array([["2024-01-01"]], dtype="datetime64[D]"), np.zeros((2, 2), dtype=[("a", "f4"), ("b", "f4")]),
    np.zeros((2, 2), dtype="V8"),
], ids=["str", "bytes", "complex", "datetime", "structured", "void"])
def test_npz_x_not_numeric(client, unchanged, x):
    r = post_file(client, "/v1/datasets", "d.npz", npz(x=x))
    assert_error(r, 422, "invalid_request", "file")
    assert "must be numeric" in r.json()["error"]["message"]


@pytest.mark.parametrize("y", [np.zeros(5), np.zeros(3), np.zeros((4, 1)), np.array(1), np.zeros(0)],
                         ids=["longer", "shorter", "2d", "scalar", "empty"])
def test_npz_mismatched_lengths(client, unchanged, y):
    r = post_file(client, "/v1/datasets", "d.npz", npz(x=np.zeros((4, 2), np.float32), y=y))
    assert_error(r, 422, "invalid_request", "file")
    assert "y must have shape [4]" in r.json()["error"]["message"]


@pytest.mark.parametrize("y,code", [
    (np.array([0, 1, 2**62]), "label_out_of_range"), (np.array([0, 1e300, 2]), "label_out_of_range"),
    (np.array([0, -2, 1]), "label_out_of_range"), (np.array([0, np.nan, 1]), "invalid_request"),
    (np.array([0, 2**64 - 1, 1], np.uint64), "label_out_of_range"),
])
def test_npz_bad_labels(client, unchanged, y, code):
    assert_error(post_file(client, "/v1/datasets", "d.npz", npz(x=np.zeros((3, 2)), y=y)), 422, code, "file")


def test_npz_shapes_refused_before_reading(client, unchanged):
    """A 1-D x, rows of no features, and a header claiming more data than its zip member holds."""
    assert_error(post_file(client, "/v1/datasets", "d.npz", npz(x=np.zeros(4))), 422, "invalid_request")
    assert_error(post_file(client, "/v1/datasets", "d.npz", npz(x=np.zeros((4, 0)))), 422, "invalid_request")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 64)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 4096)
    r = post_file(client, "/v1/datasets", "d.npz", buf.getvalue())
    assert_error(r, 422, "unsupported_format", "file")
    assert "declares shape [1000000, 64]" in r.json()["error"]["message"]


def test_npz_truncated_or_corrupted_member(client, unchanged):
    good = npz_compressed(x=np.random.default_rng(0).random((64, 8)))
    corrupted = good[:200] + bytes(b ^ 0xFF for b in good[200:400]) + good[400:]
    r = post_file(client, "/v1/datasets", "d.npz", corrupted)
    assert r.status_code == 422 and r.json()["error"]["code"] in ("unsupported_format", "invalid_request"), r.text


def test_jsonl_nested_too_deep(client, unchanged):
    content = b'{"text": "a", "label": ' + b"[" * 200_000 + b"\n"
    assert_error(post_file(client, "/v1/datasets", "d.jsonl", content), 422, "invalid_request")


def test_streamed_npz_keeps_rows_in_order(service, client):
    """Read a chunk at a time, cast to float32: a Fortran-ordered float64 x and big-endian labels
    are stored as the same rows a plain np.load would give."""
    x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(4, 3))
    y = np.array([0, 1, 0, 1], dtype=">i8")
    r = post_file(client, "/v1/datasets", "f.npz", npz(x=x, y=y))
    assert r.status_code == 201, r.text
    assert r.json()["feature_shape"] == [3] and r.json()["class_counts"] == {"0": 2, "1": 2}
    stored = load_canonical(service.data_dir / "blobs" / "datasets" / r.json()["id"] / "data.npz")
    assert stored.x.dtype == np.float32 and stored.x.flags.c_contiguous and np.array_equal(stored.x, x)
    assert stored.y.tolist() == [0, 1, 0, 1]
    client.delete(f"/v1/datasets/{r.json()['id']}")
