"""ONNX export and its variants, in real onnxruntime: parity of every zoo student at batch 1, 7
and 64; int8 (dynamic or static QDQ, picked per student) and fp16 variants measured on held-out
digits and gated on accuracy; a model that exports differently from how it runs is caught."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kdserve.models import export
from kdserve.models.input_spec import tensor_input
from kdserve.models.zoo import ArchitectureError, create_student

STUDENTS = {
    "mlp": {"hidden_sizes": [64]},
    "cnn": {"channels": [8, 16]},
    "patch_transformer": {"dim": 32, "depth": 1, "heads": 2},
}


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("arch,params,shape", [
    ("mlp", STUDENTS["mlp"], [64]),
    ("cnn", STUDENTS["cnn"], [64]),
    ("patch_transformer", STUDENTS["patch_transformer"], [64]),
    ("patch_transformer", {"patch_size": 5, "dim": 16, "heads": 2}, [64]),  # 64 features → 13 zero-padded tokens
    ("patch_transformer", {"patch_size": 4, "dim": 16, "heads": 4, "depth": 2}, [3, 8, 12]),  # image patches
])
def test_every_student_exports_with_parity_at_any_batch(tmp_path, arch, params, shape):
    torch.manual_seed(0)
    student = create_student(arch, params, shape, 10).eval()
    path = tmp_path / "s.onnx"
    opset = export.export_student(student, tensor_input(shape, 10), path, opset=18)
    assert opset == export.model_opset(path) == 18
    assert export.model_files(path) == [path]  # one self-contained file
    for batch in (1, 7, 64):
        x = torch.randn(batch, *shape).numpy()
        parity = export.check_parity(path, reference(student, x), x)
        assert parity.outputs.shape == (batch, 10)
        assert parity.max_abs_diff < 1e-4 and parity.agreement == 1.0, (arch, batch, parity.max_abs_diff)


def test_patch_transformer_refuses_patches_that_do_not_tile():
    with pytest.raises(ArchitectureError, match="cannot be cut"):
        create_student("patch_transformer", {"patch_size": 3}, [1, 8, 8], 4)
    with pytest.raises(ArchitectureError, match="multiple of heads"):
        create_student("patch_transformer", {"dim": 30, "heads": 4}, [64], 4)


def train(arch: str, digits, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_student(arch, STUDENTS[arch], [64], 10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """Each student trained on digits for a few epochs and exported: (model, fp32 path, reference logits)."""
    out = {}
    for arch, epochs in (("mlp", 10), ("cnn", 4), ("patch_transformer", 4)):
        model = train(arch, digits, epochs)
        path = tmp_path_factory.mktemp(arch) / "model.onnx"
        export.export_student(model, tensor_input([64], 10), path)
        out[arch] = (model, path, reference(model, digits.x_test))
    return out


def ops_of(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("arch,method,int8_op", [
    ("mlp", "dynamic", "MatMulInteger"),
    ("patch_transformer", "dynamic", "MatMulInteger"),
    ("cnn", "static_qdq", "QuantizeLinear"),
])
def test_variants_are_built_measured_and_gated(trained, digits, tmp_path, arch, method, int8_op):
    model, fp32_path, ref = trained[arch]
    fp32_acc = float(np.mean(ref.argmax(1) == digits.y_test))
    results = export.build_variants(
        fp32_path, ["fp32", "int8", "fp16", "int8"], calib_x=digits.x_train, val_x=digits.x_test,
        val_y=digits.y_test, reference_logits=ref, fp32_accuracy=fp32_acc, max_accuracy_drop=0.05, kind=arch,
        out_dir=tmp_path, parity_tolerance=1e-4,
    )
    assert [r.precision for r in results] == ["fp32", "int8", "fp16"]  # duplicates dropped, order kept
    fp32, int8, fp16 = results
    assert export.int8_method(arch) == method

    for r in results:
        card = r.artifact()
        assert r.path.exists() and r.files == [r.path]
        assert card["sha256"] == export.sha256_file(r.path) and card["size_bytes"] == r.path.stat().st_size
        assert card["latency_ms_batch1"] > 0 and card["latency_ms_batch64"] > 0
        assert card["providers"] == ["CPUExecutionProvider"] and card["cuda_latency_ms_batch1"] is None
        assert card["accuracy"] == pytest.approx(float(np.mean(r.logits.argmax(1) == digits.y_test)))
        assert card["accuracy_delta"] == pytest.approx(card["accuracy"] - fp32_acc, abs=1e-6)
        assert [o["name"] for o in card["outputs"]] == ["logits"]
        assert card["max_abs_diff"] == pytest.approx(float(np.abs(r.logits - ref).max()))
        assert 0 <= card["max_rel_diff"] < np.inf
        assert r.published == (card["accuracy_delta"] >= -0.05), r.reason

    assert fp32.path == fp32_path and fp32.published and fp32.max_abs_diff < 1e-4 and fp32.accuracy_delta == 0
    # int8: really quantized, by the method picked for this kind of student, and smaller
    assert int8_op in ops_of(int8.path)
    assert int8.quantization.startswith("dynamic int8" if method == "dynamic" else "static int8 QDQ")
    assert int8.size_bytes < fp32.size_bytes
    assert int8.argmax_agreement >= 0.9 and int8.max_abs_diff > fp32.max_abs_diff
    # fp16: half-precision weights inside, float32 at the edges so clients keep sending FP32
    half = onnx.load(str(fp16.path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [onnx.TensorProto.FLOAT]
    assert fp16.max_abs_diff < 0.05 and fp16.argmax_agreement >= 0.99
    session = ort.InferenceSession(str(fp16.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": digits.x_test[:3]})[0].dtype == np.float32


def test_a_variant_over_the_accuracy_budget_is_not_published(trained, digits, tmp_path):
    _, fp32_path, ref = trained["cnn"]
    # Measured against a claimed fp32 accuracy of 100 %, int8 loses more than the 1-point budget.
    (int8,) = export.build_variants(fp32_path, ["int8"], calib_x=digits.x_train, val_x=digits.x_test,
                                    val_y=digits.y_test, reference_logits=ref, fp32_accuracy=1.0,
                                    max_accuracy_drop=0.01, kind="cnn", out_dir=tmp_path, latency=False)
    assert not int8.published
    assert int8.accuracy_delta < -0.01
    assert "int8 loses" in int8.reason and "max_accuracy_drop is 1.00 point" in int8.reason
    assert int8.latency_ms_batch1 is None  # latency=False skips timing


def test_unlabelled_data_gates_on_agreement(trained, digits, tmp_path):
    _, fp32_path, ref = trained["mlp"]
    unlabelled = np.full(len(digits.x_test), -1, np.int64)
    (int8,) = export.build_variants(fp32_path, ["int8"], calib_x=None, val_x=digits.x_test, val_y=unlabelled,
                                    reference_logits=ref, fp32_accuracy=None, max_accuracy_drop=0.0, kind="mlp",
                                    out_dir=tmp_path, latency=False)
    assert int8.accuracy is None and int8.accuracy_delta is None
    assert int8.published == (int8.argmax_agreement == 1.0)
    assert "no labels" in int8.reason


def test_a_variant_that_cannot_be_built_is_reported_not_raised(trained, digits, tmp_path):
    _, fp32_path, ref = trained["cnn"]
    (int8,) = export.build_variants(fp32_path, ["int8"], calib_x=np.zeros((0, 64), np.float32),
                                    val_x=digits.x_test, val_y=digits.y_test, reference_logits=ref,
                                    fp32_accuracy=None, max_accuracy_drop=0.01, kind="cnn", out_dir=tmp_path)
    assert not int8.published and "calibration samples" in int8.reason and int8.path is None
    with pytest.raises(ValueError, match="unknown precision"):
        export.build_variants(fp32_path, ["int4"], calib_x=None, val_x=digits.x_test, val_y=None,
                              reference_logits=ref, fp32_accuracy=None, max_accuracy_drop=0.01, kind="cnn",
                              out_dir=tmp_path)


class ExportsDifferently(torch.nn.Module):
    """Stands in for any model whose exported graph is not what runs eagerly (a branch on
    tracing, Python-side state, a data-dependent shortcut): the export halves the logits."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        logits = self.fc(x)
        if torch.compiler.is_exporting():
            return logits * 0.5
        return logits


def test_a_model_that_exports_differently_is_caught_by_the_parity_gate(digits, tmp_path):
    torch.manual_seed(0)
    model = ExportsDifferently().eval()
    path = tmp_path / "broken.onnx"
    export.export_student(model, tensor_input([64], 10), path)  # exports without any error or warning
    ref = reference(model, digits.x_test)
    assert export.check_parity(path, ref, digits.x_test).max_abs_diff > 1e-4
    (fp32,) = export.build_variants(path, ["fp32"], calib_x=None, val_x=digits.x_test, val_y=digits.y_test,
                                    reference_logits=ref, fp32_accuracy=None, max_accuracy_drop=0.01, kind="mlp",
                                    out_dir=tmp_path, parity_tolerance=1e-4, latency=False)
    assert not fp32.published and "over the parity tolerance" in fp32.reason


def test_weights_over_the_threshold_go_to_external_data(digits, tmp_path, monkeypatch):
    """Past EXTERNAL_DATA_THRESHOLD_BYTES (1.8 GB in production, lowered here to 10 kB so a small
    model crosses it) the weights go to a side file that onnxruntime and the variants follow."""
    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD_BYTES", 10_000)
    torch.manual_seed(0)
    model = create_student("mlp", {"hidden_sizes": [128]}, [64], 10).eval()
    path = tmp_path / "big" / "model.onnx"
    path.parent.mkdir()
    export.export_student(model, tensor_input([64], 10), path)
    files = export.model_files(path)
    assert len(files) == 2 and files[1].exists() and path.stat().st_size < 10_000
    ref = reference(model, digits.x_test)
    assert export.check_parity(path, ref, digits.x_test).max_abs_diff < 1e-4
    int8, fp16 = export.build_variants(path, ["int8", "fp16"], calib_x=digits.x_train, val_x=digits.x_test,
                                       val_y=digits.y_test, reference_logits=ref, fp32_accuracy=None,
                                       max_accuracy_drop=1.0, kind="mlp", out_dir=tmp_path / "out", latency=False)
    assert int8.published and fp16.published, (int8.reason, fp16.reason)
    assert len(int8.files) == 2 and len(fp16.files) == 2
    assert int8.size_bytes == sum(f.stat().st_size for f in int8.files)
    assert fp16.max_abs_diff < 0.05


def test_latency_at_batch_64_and_the_time_budget(trained):
    _, fp32_path, _ = trained["patch_transformer"]
    one = export.latency_ms(fp32_path, [64], batch=1, repeats=20)
    many = export.latency_ms(fp32_path, [64], batch=64, repeats=20, budget_s=0.0)  # budget spent: 5 timed runs
    assert 0 < one < many


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
