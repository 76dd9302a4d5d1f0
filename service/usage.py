"""How to call one published model: the `usage` snippets of GET /v1/models/{id}.

Written from the card (the input's name and shape, the output's name, text or tensor), so each
snippet runs as shown against that model once $KDSERVE_URL and $KDSERVE_API_KEY are set: curl on
/v1 predict and /v2 infer, onnxruntime on the downloaded file, and the Python SDK."""

from __future__ import annotations

import json
import math

from kdserve.service.model_card import ModelCard


def snippets(model_id: str, name: str, card: ModelCard) -> dict[str, str]:
    auth = '-H "Authorization: Bearer $KDSERVE_API_KEY"'
    download = (f'curl -fsS {auth} -o student.onnx "$KDSERVE_URL/v1/models/{model_id}/download?precision=fp32"'
                if not card.is_text else
                f'curl -fsS {auth} -o student.zip "$KDSERVE_URL/v1/models/{model_id}/download?format=zip&precision=fp32"')
    if card.is_text:
        sample: list = ["a sentence to classify"]
        v2_body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": sample}]}
        local = None  # a text student needs its tokenizer too: the zip, as docs/api.md's text section shows
    else:
        shape = [d if d > 0 else 1 for d in card.input.shape[1:]]
        sample = [_zeros(shape)]
        v2_body = {"inputs": [{"name": card.input.name, "shape": [1, *shape], "datatype": "FP32",
                               "data": [0.0] * math.prod(shape)}]}
        local = ("import numpy as np, onnxruntime as ort\n"
                 "session = ort.InferenceSession(\"student.onnx\")\n"
                 f"x = np.zeros((1, {', '.join(str(d) for d in shape)}), np.float32)  # your rows here\n"
                 f"logits = session.run([{card.output.name!r}], {{{card.input.name!r}: x}})[0]\n"
                 "print(logits.argmax(1))")
    out = {
        "download": download,
        "predict": f"curl -fsS {auth} -H 'Content-Type: application/json' "
                   f"\"$KDSERVE_URL/v1/models/{model_id}/predict\" -d '{json.dumps({'inputs': sample})}'",
        "v2_infer": f"curl -fsS {auth} -H 'Content-Type: application/json' "
                    f"\"$KDSERVE_URL/v2/models/{name}/infer\" -d '{json.dumps(v2_body)}'",
        "sdk": ("from kdserve.client import Client  # reads KDSERVE_URL and KDSERVE_API_KEY\n"
                "kd = Client()\n"
                f"print(kd.models.predict({model_id!r}, {sample!r}).predictions)"),
    }
    if local:
        out["onnxruntime"] = local
    return out



def _zeros(shape: list[int]):
    return [0.0] * shape[0] if len(shape) == 1 else [_zeros(shape[1:]) for _ in range(shape[0])]
