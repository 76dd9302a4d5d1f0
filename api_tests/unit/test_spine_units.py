"""Unit tests of the spine's building blocks: file sniffing, dataset ingest, the student zoo,
ONNX export with its parity check, the trainer's split."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdserve.models.teachers import load_teacher
from kdserve.models.zoo import ARCHITECTURES, ArchitectureError, create_student
from kdserve.service import ingest
from kdserve.service.sandbox.sniff import ModelFileError, pickle_globals, sniff
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
        ingest.parse(p, "csv")  # no label column named and none named like one: cls is a feature
    p.write_text("a,b\n1,2\n3,4\n")
    unlabelled = ingest.parse(p, "csv")
    assert unlabelled.x.shape == (2, 2) and not unlabelled.labeled and unlabelled.summary()["num_classes"] is None
    assert "every row is unlabelled" in unlabelled.summary()["details"]["messages"][0]


def test_csv_a_named_label_column_that_is_not_there_is_refused_with_the_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,Target\n1,2,0\n3,4,1\n")
    with pytest.raises(ingest.DatasetError) as e:
        ingest.parse(p, "csv", "target")
    assert e.value.param == "label_column" and e.value.status == 422
    assert "did you mean 'Target'" in e.value.message and "['a', 'b', 'Target']" in e.value.message


def test_csv_without_a_named_label_column_takes_one_named_like_a_label_and_says_so(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("f1,f2,target\n1,2,0\n3,4,1\n")  # pandas' to_csv of a frame with `target` last
    d = ingest.parse(p, "csv")
    assert d.x.tolist() == [[1, 2], [3, 4]] and d.y.tolist() == [0, 1]
    details = d.summary()["details"]
    assert details["label_column"] == "target" and "column 'target' is the label" in details["messages"][0]


def test_csv_the_pandas_index_column_is_dropped_and_reported(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(",f1,f2,label\n0,1.5,2,0\n1,3,4,1\n2,5,6,1\n")  # DataFrame.to_csv with its index
    d = ingest.parse(p, "csv")
    assert d.x.tolist() == [[1.5, 2], [3, 4], [5, 6]] and d.y.tolist() == [0, 1, 1]
    assert d.summary()["details"]["dropped_columns"] and "index=False" in d.summary()["details"]["messages"][1]
    p.write_text(",f1\n0.5,1\n0.5,2\n")  # an unnamed column that is not an index stays a feature
    assert ingest.parse(p, "csv").x.shape == (2, 2)


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
    with pytest.raises(ingest.DatasetError, match="no features array"):
        ingest.parse(p, "npz")


@pytest.mark.parametrize("how", ["X", "positional"])
def test_npz_as_users_save_it(tmp_path, how):
    """np.savez(f, X=…, y=…) (scikit-learn's names) and np.savez(f, X, y) (arr_0, arr_1) read the
    same as x/y, and the answer names the arrays it read."""
    p = tmp_path / "d.npz"
    x, y = np.arange(10, dtype=np.float64).reshape(5, 2), np.array([0, 1, 1, 0, 2])
    if how == "X":
        np.savez(p, X=x, y=y)
    else:
        np.savez(p, x, y)
    d = ingest.parse(p, "npz")
    assert d.x.tolist() == x.tolist() and d.y.tolist() == y.tolist()
    assert d.summary()["details"]["arrays"] == ({"x": "X", "y": "y"} if how == "X" else {"x": "arr_0", "y": "arr_1"})
    np.savez(p, x=x, y=y)
    assert "details" not in ingest.parse(p, "npz").summary()  # the usual names: nothing to say


def test_cnn_needs_an_image_shape():
    with pytest.raises(ArchitectureError, match="not a square"):
        create_student("cnn", {}, [10], 2)
    with pytest.raises(ValidationError, match="nope"):  # an unknown parameter
        create_student("mlp", {"nope": 1}, [10], 2)
    assert set(ARCHITECTURES) >= {"mlp", "cnn"}


def test_split_is_seeded_and_disjoint():
    d = ingest.Parsed(np.arange(100, dtype=np.float32).reshape(50, 2), np.arange(50) % 3)
    tr1, va1 = split_dataset(d, 0.2, seed=1)
    tr2, va2 = split_dataset(d, 0.2, seed=1)
    assert len(va1) == 10 and len(tr1) == 40
    assert torch.equal(va1.x, va2.x)
    assert not set(tr1.x[:, 0].tolist()) & set(va1.x[:, 0].tolist())


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_string_labels_are_class_names_numbered_in_sorted_order(tmp_path, fmt):
    """Class names as labels (a CSV column of words, an npz y of str): numbered in sorted order,
    as scikit-learn's LabelEncoder numbers them; an empty cell is unlabelled; the names are kept."""
    names = ["virginica", "setosa", "", "versicolor", "setosa"]
    if fmt == "csv":
        p = tmp_path / "d.csv"
        p.write_text("f1,species\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
        d = ingest.parse(p, "csv", "species")
    else:
        p = tmp_path / "d.npz"
        np.savez(p, X=np.arange(5.0).reshape(5, 1), y=np.array(names))
        d = ingest.parse(p, "npz")
    assert d.y.tolist() == [2, 0, -1, 1, 0]
    details = d.summary()["details"]
    assert details["class_names"] == ["setosa", "versicolor", "virginica"]
    assert any("0 = 'setosa'" in m for m in details["messages"])


def test_csv_labels_turn_into_names_at_the_first_word_and_a_text_feature_names_the_fix(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("f1,label\n1,1\n2,0\n3,cat\n")  # numbers met before a word are names too
    d = ingest.parse(p, "csv")
    assert d.summary()["details"]["class_names"] == ["0", "1", "cat"] and d.y.tolist() == [1, 0, 2]
    p.write_text("f1,kind\n1,red\n")  # no label column named: a text column is a feature that is not a number
    with pytest.raises(ingest.DatasetError) as e:
        ingest.parse(p, "csv")
    assert e.value.param == "label_column" and "label_column=kind" in e.value.message
