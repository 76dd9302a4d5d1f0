"""The worker's publishing guards (worker/pipeline/publish.py) on real ONNX files and a real blob store:
an artifact whose weights live in an external-data file is never published (one .onnx file per
precision is what the store keeps, downloads send and serving opens), and a stored file that does
not load in onnxruntime fails the job with nothing left under the model's prefix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdserve.service.store.blobs import LocalBlobStore
from kdserve.worker.pipeline import JobFailed, single_file_artifacts, verify_stored


def linear_onnx(path, external: bool) -> None:
    """y = x @ W, W 64×10, saved in one file or with W in `<name>.data` beside it."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "W"], ["logits"])], "student",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if external else None, size_threshold=0)


def test_an_artifact_with_external_weights_is_not_published(tmp_path):
    path = tmp_path / "model.onnx"
    linear_onnx(path, external=True)
    assert (tmp_path / "model.onnx.data").exists()
    with pytest.raises(JobFailed) as err:
        single_file_artifacts([("fp32", path, {})])
    assert err.value.code == "export_failed" and "external data file (model.onnx.data)" in err.value.message
    one = tmp_path / "one.onnx"
    linear_onnx(one, external=False)
    single_file_artifacts([("fp32", one, {})])  # a self-contained file passes


def test_a_stored_file_that_does_not_load_fails_and_is_removed(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    good, split = tmp_path / "good.onnx", tmp_path / "split.onnx"
    linear_onnx(good, external=False)
    linear_onnx(split, external=True)
    blobs.put_file("models/mdl_ok/model.fp32.onnx", good)
    verify_stored(blobs, "models/mdl_ok", ["models/mdl_ok/model.fp32.onnx"])  # loads: kept
    assert blobs.exists("models/mdl_ok/model.fp32.onnx")
    # the .onnx stored without the weights file it names: what publishing one file of two did
    blobs.put_file("models/mdl_bad/model.fp32.onnx", split)
    with pytest.raises(JobFailed) as err:
        verify_stored(blobs, "models/mdl_bad", ["models/mdl_bad/model.fp32.onnx"])
    assert err.value.code == "export_failed" and "does not load from the model store" in err.value.message
    assert not blobs.exists("models/mdl_bad/model.fp32.onnx")
