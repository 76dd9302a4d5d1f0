"""Unit tests of the spine's building blocks: file sniffing, dataset ingest, the student zoo,
ONNX export with its parity check, the trainer's split."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from kdserve.models import export
from kdserve.models.input_spec import tensor_input
from kdserve.service.sandbox.sniff import ModelFileError, pickle_globals, sniff
from kdserve.models.teachers import load_teacher
from kdserve.models.zoo import ARCHITECTURES, ArchitectureError, create_student
from kdserve.service import ingest
from kdserve.worker.data import split_dataset


def test_pickle_globals_reads_opcodes_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    class P:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    found = pickle_globals(pickle.dumps(P(), protocol=4))
    assert ("io", "open") in found or ("builtins", "open") in found
    assert pickle_globals(pickle.dumps(P(), protocol=0))
    assert not marker.exists()


def test_sniff_formats(tmp_path):
    m = torch.nn.Linear(4, 3)
    torch.jit.script(m).save(str(tmp_path / "ts.pt"))
    assert sniff(tmp_path / "ts.pt").format == "torchscript"
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelFileError) as e:
        sniff(tmp_path / "sd.pt")
    assert e.value.code == "unsafe_file"
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError) as e:
        sniff(tmp_path / "p.pkl")
    assert e.value.code == "unsafe_file"
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ModelFileError) as e:
        sniff(tmp_path / "x.zip")
    assert e.value.code == "unsupported_format"


def test_torchscript_teacher_with_tuple_output_and_guessed_shape(tmp_path):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 4)

        def forward(self, x):
            h = self.fc(x)
            return h, h.relu()

    torch.jit.script(Two()).save(str(tmp_path / "t.pt"))
    t = load_teacher(tmp_path / "t.pt")
    assert (t.input_shape, t.num_classes, t.num_parameters) == ([6], 4, 28)


def test_csv_label_column_anywhere_and_unlabelled_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,cls,b\n1,2,3\n4,,6\n7,0,9\n")
    d = ingest.parse(p, "csv", "cls")
    assert d.x.tolist() == [[1, 3], [4, 6], [7, 9]] and d.y.tolist() == [2, -1, 0]
    s = d.summary()
    assert s["labeled"] and s["num_classes"] == 3 and s["class_counts"] == {"0": 1, "2": 1}
    with pytest.raises(ingest.DatasetError, match="column 'cls': '' is not a number"):
        ingest.parse(p, "csv", "missing")  # without a label column, cls is a feature and must be numeric
    p.write_text("a,b\n1,2\n3,4\n")
    unlabelled = ingest.parse(p, "csv", "label")
    assert unlabelled.x.shape == (2, 2) and not unlabelled.labeled and unlabelled.summary()["num_classes"] is None


def test_npz_shapes_and_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 2, 3), np.float64), y=np.array([0, 1, 1, 0, 2.0]))
    d = ingest.parse(p, "npz")
    assert d.x.dtype == np.float32 and d.x.shape == (5, 2, 3) and d.y.dtype == np.int64
    np.savez(p, x=np.zeros((5, 2)), y=np.array([0, 1, -3, 0, 2]))
    with pytest.raises(ingest.DatasetError) as e:
        ingest.parse(p, "npz")
    assert e.value.code == "label_out_of_range"
    np.savez(p, z=np.zeros((5, 2)))
    with pytest.raises(ingest.DatasetError, match="no array named 'x'"):
        ingest.parse(p, "npz")


@pytest.mark.parametrize("arch,params,shape", [
    ("mlp", {"hidden_sizes": [16, 8], "batch_norm": True, "dropout": 0.1}, [64]),
    ("cnn", {"channels": [4, 8]}, [64]),
    ("cnn", {"channels": [4]}, [3, 10, 12]),
    ("cnn", {"channels": [4], "image_shape": [2, 4, 4]}, [32]),
])
def test_zoo_builds_and_exports_with_parity(tmp_path, arch, params, shape):
    torch.manual_seed(0)
    student = create_student(arch, params, shape, 5).eval()
    path = tmp_path / "s.onnx"
    export.export_student(student, tensor_input(shape, 5), path)
    for batch in (1, 7, 64):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            ref = student(x).numpy()
        parity = export.check_parity(path, ref, x.numpy())
        assert parity.max_abs_diff < 1e-4 and parity.agreement == 1.0
        assert parity.outputs.shape == (batch, 5)


def test_parity_check_catches_a_different_model(tmp_path):
    a = create_student("mlp", {}, [8], 3).eval()
    export.export_student(a, tensor_input([8], 3), tmp_path / "a.onnx")
    x = torch.randn(32, 8)
    with torch.no_grad():
        other = create_student("mlp", {}, [8], 3).eval()(x).numpy()
    assert export.check_parity(tmp_path / "a.onnx", other, x.numpy()).max_abs_diff > 1e-3


def test_cnn_needs_an_image_shape():
    with pytest.raises(ArchitectureError, match="not a square"):
        create_student("cnn", {}, [10], 2)
    with pytest.raises(Exception):
        create_student("mlp", {"nope": 1}, [10], 2)
    assert set(ARCHITECTURES) >= {"mlp", "cnn"}


def test_split_is_seeded_and_disjoint():
    d = ingest.Parsed(np.arange(100, dtype=np.float32).reshape(50, 2), np.arange(50) % 3)
    tr1, va1 = split_dataset(d, 0.2, seed=1)
    tr2, va2 = split_dataset(d, 0.2, seed=1)
    assert len(va1) == 10 and len(tr1) == 40
    assert torch.equal(va1.x, va2.x)
    assert not set(tr1.x[:, 0].tolist()) & set(va1.x[:, 0].tolist())
