"""A student's graph takes its ONNX teacher's tensor names (models/export.rename_io), even names
the exporter already gave to internal values; the graph computes the same thing afterwards."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from kdserve.models import export
from kdserve.models.input_spec import tensor_input
from kdserve.models.zoo import create_student


def test_renamed_inputs_and_outputs_compute_the_same(tmp_path):
    model = create_student("mlp", {"hidden_sizes": [16, 16]}, [5], 3).eval()
    path = tmp_path / "m.onnx"
    export.export_student(model, tensor_input([5], 3), path, 18)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    export.rename_io(path, {"input": "linear", "logits": "relu"})  # both are internal values' names here
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["linear"] and [o.name for o in session.get_outputs()] == ["relu"]
    np.testing.assert_allclose(session.run(None, {"linear": x})[0], before, rtol=1e-6)
