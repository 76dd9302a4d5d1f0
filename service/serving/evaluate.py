"""POST /v1/models/{id}/evaluate: a published student scored on a stored dataset, in the API's
onnxruntime session (the file /v2 serves), so a user can check a model on rows of their own —
a test set the teacher never saw — without downloading it.

The dataset's labels are matched to the model's classes by name when both have class names (a
test CSV may meet fewer classes, so its sorted numbering can differ from the training data's)."""

from __future__ import annotations

import numpy as np

from kdserve.service.errors import ApiError
from kdserve.service.model_card import ModelCard
from kdserve.service.serving.runtime import LoadedModel
from kdserve.service.serving.v2 import to_model_input
from kdserve.service.store.datasets import relabel, unknown_classes

MAX_ROWS = 200_000  # a larger test set is a job for the downloaded file, not for the API process
BATCH = 1024


def labels_for(card: ModelCard, y: np.ndarray, dataset_classes: list[str] | None) -> np.ndarray:
    """The dataset's labels as the model's class ids (-1 = unlabelled)."""
    if not dataset_classes:
        return y
    if not card.class_names:
        raise ApiError(422, "invalid_request", "the dataset's labels are class names but the model was trained on class "
                       "ids: upload the labels as ids", "dataset_id")
    unknown = unknown_classes(dataset_classes, card.class_names)
    if unknown:
        raise ApiError(422, "invalid_request", f"the dataset has classes the model does not know: {unknown[:10]} (its "
                       f"classes: {card.class_names[:20]})", "dataset_id")
    return relabel(y, dataset_classes, card.class_names)


def evaluate(loaded: LoadedModel, card: ModelCard, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy on the labelled rows, and how the predictions spread over the classes."""
    if list(x.shape[1:]) != list(card.input.shape[1:]):
        raise ApiError(422, "invalid_request", f"the dataset's rows have shape {list(x.shape[1:])}, the model takes "
                       f"{card.input.shape[1:]}", "dataset_id")
    if len(x) > MAX_ROWS:
        raise ApiError(413, "payload_too_large", f"the dataset has {len(x):,} rows; evaluate at most {MAX_ROWS:,} "
                       "here, or download the model and run it where the data is", "dataset_id")
    info, out_name = loaded.inputs[0], loaded.output_names[0]
    pred = np.concatenate([loaded.run({info.name: to_model_input(x[i:i + BATCH], info, "dataset_id")})[out_name]
                           .argmax(1) for i in range(0, len(x), BATCH)])
    labelled = y >= 0
    out: dict = {"rows": len(x), "labelled": int(labelled.sum()),
                 "accuracy": float((pred[labelled] == y[labelled]).mean()) if labelled.any() else None,
                 "predicted_counts": {str(k): int(v) for k, v in zip(*np.unique(pred, return_counts=True))}}
    if card.class_names:
        out["predicted_counts"] = {card.class_names[int(k)]: v for k, v in out["predicted_counts"].items()}
    return out
