"""The model card (service/model_card.py) and the one export path's input specs
(models/input_spec.py): a card read from the Model row and served gives the same JSON the API
gave when it served the stored dict itself, and both specs (a float tensor, token ids + mask)
export, pass parity and build a gated int8 variant through the same functions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kdserve.models import export
from kdserve.models.input_spec import EMBEDDING_OUTPUT, tensor_input, text_input
from kdserve.service.model_card import ModelCard
from kdserve.service.schemas import ModelOut

ARTIFACT = {"format": "onnx", "precision": "fp32", "size_bytes": 1234, "sha256": "ab" * 32, "max_abs_diff": 1e-6,
            "max_rel_diff": 2e-6, "argmax_agreement": 1.0, "accuracy": 0.9, "accuracy_delta": 0.0,
            "latency_ms_batch1": 0.1, "latency_ms_batch64": 0.5, "cuda_latency_ms_batch1": None,
            "cuda_latency_ms_batch64": None, "quantization": "none (fp32)", "providers": ["CPUExecutionProvider"],
            "opset": 18, "outputs": [{"name": "logits", "max_abs_diff": 1e-6, "max_rel_diff": 2e-6}],
            "mean_cosine": None, "sequence_length": None, "blob_key": "models/mdl_1/model.fp32.onnx"}
TENSOR_CARD = {
    "teacher_id": "tch_1", "dataset_id": "ds_1", "method": {"name": "kd", "params": {}},
    "student": {"architecture": "mlp", "params": {}}, "num_parameters": 100, "teacher_num_parameters": 1000,
    "refined_teacher_id": None, "compression_ratio": 10.0,
    "metrics": {"teacher_accuracy": 0.95, "student_accuracy": 0.9, "agreement": 0.93},
    "input": {"name": "input", "shape": [-1, 64], "datatype": "FP32"},
    "output": {"name": "logits", "shape": [-1, 10], "datatype": "FP32"}, "artifacts": [ARTIFACT],
}
TOKENS = {"name": "input_ids", "shape": [-1, -1], "datatype": "INT64"}
TEXT_CARD = {
    **TENSOR_CARD, "input": TOKENS, "inputs": [TOKENS, {**TOKENS, "name": "attention_mask"}],
    "output": {"name": "sentence_embedding", "shape": [-1, 32], "datatype": "FP32"},
    "metrics": {"teacher_accuracy": None, "student_accuracy": None, "agreement": None, "mean_cosine": 0.97,
                "neighbour_overlap_at_10": 0.5},
    "bundles": [{"format": "zip", "precision": "fp32", "blob_key": "models/mdl_1/model.fp32.zip", "size_bytes": 99,
                 "sha256": "cd" * 32}],
    "text": {"task": "embedding", "max_length": 64, "inputs": ["input_ids", "attention_mask"],
             "output": "sentence_embedding", "normalized": True, "pooling": "mean", "text_pairs": False,
             "vocab_size": 1000, "tokenizer_files": ["kdserve_text.json", "tokenizer.json"]},
}
# A card from before the variants and text-pair fields: fewer artifact fields, fewer text keys.
OLD_CARD = {**copy.deepcopy(TEXT_CARD), "artifacts": [{k: ARTIFACT[k] for k in (
    "format", "precision", "size_bytes", "sha256", "max_abs_diff", "argmax_agreement", "accuracy",
    "latency_ms_batch1", "blob_key")}]}
del OLD_CARD["text"]["text_pairs"], OLD_CARD["text"]["vocab_size"], OLD_CARD["refined_teacher_id"]


def served_before(card: dict) -> str:
    """GET /v1/models/{id}'s JSON as the API built it from the stored dict before ModelCard."""
    artifacts = [{k: v for k, v in a.items() if k != "blob_key"} for a in card["artifacts"]]
    bundles = [{k: v for k, v in b.items() if k != "blob_key"} for b in card.get("bundles") or []] or None
    return ModelOut(id="mdl_1", name="m", job_id="job_1", created_at=1,
                    **{**card, "artifacts": artifacts, "bundles": bundles}).model_dump_json()


@pytest.mark.parametrize("stored", [TENSOR_CARD, TEXT_CARD, OLD_CARD], ids=["tensor", "text", "old"])
def test_a_card_round_trips_and_is_served_as_before(stored):
    card = ModelCard.of(stored)
    assert card.to_json() == stored  # what the Model row keeps: the same keys and values
    assert ModelCard.of(card.to_json()) == card
    served = ModelOut(id="mdl_1", name="m", job_id="job_1", created_at=1, **card.served()).model_dump_json()
    assert served == served_before(stored)  # byte for byte
    assert "blob_key" not in served
    assert card.stored_bytes() == sum(f["size_bytes"] for f in stored["artifacts"] + stored.get("bundles", []))
    assert [a.blob_key for a in card.onnx_artifacts()] == ["models/mdl_1/model.fp32.onnx"]


def test_serving_reads_the_card_by_attribute():
    tensor, text = ModelCard.of(TENSOR_CARD), ModelCard.of(TEXT_CARD)
    assert not tensor.is_text and [i.name for i in tensor.model_inputs] == ["input"]
    assert text.is_text and text.text.task == "embedding" and text.text.max_length == 64
    assert [i.model_dump() for i in text.model_inputs] == TEXT_CARD["inputs"]
    assert [f.format for f in text.files()] == ["onnx", "zip"]
    assert not ModelCard.of(OLD_CARD).text.text_pairs  # absent on old cards: single texts


class TokenStudent(torch.nn.Module):
    """A minimal text student: masked mean of token embeddings, then a linear layer."""

    def __init__(self, vocab: int = 50, width: int = 6):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        return self.head((self.embed(ids) * m).sum(1) / m.sum(1).clamp(min=1.0))


def tokens(rows: int, length: int, vocab: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, length + 1, rows)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, vocab, (rows, length)) * mask, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["tensor", "text"])
def test_both_specs_export_pass_parity_and_build_a_variant(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "tensor":
        model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6)).eval()
        spec, data = tensor_input([12], 6), {"input": np.random.default_rng(1).standard_normal((300, 12))}
    else:
        model = TokenStudent().eval()
        spec = text_input(output=EMBEDDING_OUTPUT, width=6, task="embedding", vocab_size=50, max_positions=40,
                          sequence_length=7)
        data = tokens(150, 40)
    data = spec.as_inputs(data)
    with torch.no_grad():
        reference = model(*(torch.from_numpy(data[n]) for n in spec.names)).numpy()
    path = tmp_path / "model.onnx"
    assert export.export_student(model, spec, path, opset=18) == 18
    parity = export.check_parity(path, reference, data, spec)
    assert parity.max_abs_diff < 1e-4 and parity.agreement > 0.9999 and parity.outputs.shape == reference.shape
    wrong = reference + 1.0  # the check compares: a different reference is caught
    assert export.check_parity(path, wrong, data, spec).max_abs_diff > 0.99
    (int8,) = export.build_variants(path, ["int8"], spec=spec, calib_x=None, val_x=data, val_y=None,
                                    reference_logits=reference, fp32_accuracy=None, max_accuracy_drop=1.0,
                                    kind="mlp", out_dir=tmp_path, latency=False)
    assert int8.published, int8.reason
    art = int8.artifact()
    assert ModelCard.of({**TENSOR_CARD, "artifacts": [{**art, "blob_key": "k"}]}).artifacts[0].precision == "int8"
    if kind == "text":  # token tables quantized too; embeddings are compared by cosine, not argmax
        assert art["quantization"].startswith("dynamic int8 (MatMulInteger with int8 weights, int8 token-embedding")
        assert art["argmax_agreement"] is None and art["mean_cosine"] > 0.9 and art["sequence_length"] == 7
        assert "mean cosine" in int8.reason
        assert export.latency_ms(path, spec, batch=4, repeats=5, budget_s=0.0) > 0
    else:
        assert art["quantization"].startswith("dynamic int8 (MatMulInteger, int8 weights")
        assert art["argmax_agreement"] is not None and art["mean_cosine"] is None
