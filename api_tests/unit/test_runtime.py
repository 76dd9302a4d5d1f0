"""service/serving/runtime.py without HTTP: the session cache's LRU bounds and single loading, and dynamic
batching (concurrent requests merged into fewer runs, each caller getting exactly its rows)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch

from api_tests.harness import REPO
from kdserve.models import export
from kdserve.models.input_spec import tensor_input
from kdserve.service.serving import runtime
from kdserve.service.serving.runtime import BatchConfig, SessionCache
from kdserve.models.zoo import create_student


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three small students of different sizes, exported."""
    d = tmp_path_factory.mktemp("rt")
    out = []
    for i, width in enumerate((16, 32, 64)):
        torch.manual_seed(i)
        path = d / f"m{i}.onnx"
        student = create_student("mlp", {"hidden_sizes": [width]}, [64], 10).eval()
        export.export_student(student, tensor_input([64], 10), path)
        out.append(path)
    return out


def direct(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_the_api_side_never_imports_torch():
    code = ("import sys, kdserve.service.serving.runtime, kdserve.service.api.inference_v2, kdserve.service.app; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_metadata_of_a_loaded_model(files):
    cache = SessionCache()
    m = cache.get("a", files[0])
    assert [t.as_dict() for t in m.inputs] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [t.as_dict() for t in m.outputs] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert m.batchable and m.batcher is not None and m.providers[0] == "CPUExecutionProvider"
    assert cache.get("a", files[0]) is m and cache.loads == 1


def test_lru_bounded_by_count(files):
    cache = SessionCache(max_models=2)
    a = cache.get("a", files[0])
    cache.get("b", files[1])
    cache.get("a", files[0])  # a is now the most recently used
    cache.get("c", files[2])
    assert cache.keys() == ["a", "c"]
    assert cache.peek("b") is None and cache.peek("a") is a


def test_lru_bounded_by_bytes(files):
    sizes = [p.stat().st_size for p in files]
    cache = SessionCache(max_bytes=sizes[0] + sizes[1])
    cache.get("a", files[0])
    cache.get("b", files[1])
    assert cache.keys() == ["a", "b"]
    cache.get("c", files[2])  # 64-wide: with either other it is over the budget
    assert cache.keys() == ["c"]
    tiny = SessionCache(max_bytes=1)  # a model over the budget on its own is still served
    assert tiny.get("a", files[0]).run({"input": np.zeros((1, 64), np.float32)})["logits"].shape == (1, 10)



def test_concurrent_first_requests_load_the_file_once(files):
    cache = SessionCache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a", files[0]))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.loads == 1 and len({id(m) for m in got}) == 1


def test_a_missing_file_fails_every_waiter_and_is_not_cached(tmp_path):
    cache = SessionCache()
    with pytest.raises(Exception):
        cache.get("gone", tmp_path / "nope.onnx")
    assert cache.keys() == []


def test_evict_by_prefix(files):
    cache = SessionCache()
    cache.get("mdl_1:fp32:x", files[0])
    cache.get("mdl_1:int8:y", files[1])
    cache.get("mdl_2:fp32:z", files[2])
    assert cache.evict("mdl_1:") == 2 and cache.keys() == ["mdl_2:fp32:z"]
    cache.close()
    assert cache.keys() == []


def gather(*calls):
    async def main():
        return await asyncio.gather(*calls)

    return asyncio.run(main())


def test_dynamic_batching_merges_concurrent_requests(files, digits):
    runs = []
    cache = SessionCache(batching=BatchConfig(max_size=64, max_wait_s=0.05),
                         on_run=lambda key, rows: runs.append(rows))
    model = cache.get("a", files[1])
    x = digits.x_test[:48]
    answers = gather(*(model.infer({"input": x[2 * i : 2 * i + 2]}) for i in range(24)))
    assert model.batcher.requests == 24 and model.batcher.batches < 24  # merged
    assert sum(runs) == 48 and max(runs) > 2
    expected = direct(files[1], x)
    for i, answer in enumerate(answers):  # every caller gets its own rows back
        np.testing.assert_allclose(answer["logits"], expected[2 * i : 2 * i + 2], rtol=1e-5, atol=1e-6)


def test_batches_respect_max_size_and_a_bigger_request_runs_alone(files, digits):
    runs = []
    cache = SessionCache(batching=BatchConfig(max_size=8, max_wait_s=0.01), on_run=lambda key, rows: runs.append(rows))
    model = cache.get("a", files[0])
    x = digits.x_test[:26]
    answers = gather(model.infer({"input": x[:20]}), *(model.infer({"input": x[20 + i : 21 + i]}) for i in range(6)))
    expected = direct(files[0], x)
    np.testing.assert_allclose(answers[0]["logits"], expected[:20], rtol=1e-5, atol=1e-6)
    for i, answer in enumerate(answers[1:]):
        np.testing.assert_allclose(answer["logits"], expected[20 + i : 21 + i], rtol=1e-5, atol=1e-6)
    assert sorted(runs) == [6, 20]  # the six small ones together, the big one alone


def test_requests_of_another_shape_wait_for_their_own_batch(tmp_path, digits):
    """A model with a free second dimension: rows of different widths cannot be stacked."""
    class RowSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=1, keepdim=True) * 2

    path = tmp_path / "rowsum.onnx"
    torch.onnx.export(RowSum().eval(), (torch.zeros(2, 3),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("width")},), dynamo=True)
    runs = []
    model = SessionCache(batching=BatchConfig(max_size=64, max_wait_s=0.02),
                         on_run=lambda key, rows: runs.append(rows)).get("s", path)
    a, b, c = (np.ones((1, 3), np.float32), np.ones((2, 5), np.float32), np.full((1, 3), 2, np.float32))
    out = gather(model.infer({"input": a}), model.infer({"input": b}), model.infer({"input": c}))
    assert [o["logits"].ravel().tolist() for o in out] == [[6.0], [10.0, 10.0], [12.0]]
    assert sorted(runs) == [2, 2]  # a+c together, b alone


def test_async_infer_with_batching_off_and_on(files, digits):
    x = digits.x_test[:16]
    expected = direct(files[2], x)
    for batching in (BatchConfig(enabled=False), BatchConfig(max_size=64, max_wait_s=0.005)):
        model = SessionCache(batching=batching).get("a", files[2])
        assert (model.batcher is None) == (not batching.enabled)
        outs = gather(*(model.infer({"input": x[i : i + 1]}, ["logits"]) for i in range(16)))
        np.testing.assert_allclose(np.concatenate([o["logits"] for o in outs]), expected, rtol=1e-5, atol=1e-6)


def test_a_failing_run_fails_its_requests_not_the_batcher(files, digits):
    model = SessionCache(batching=BatchConfig(max_size=64, max_wait_s=0.01)).get("a", files[0])
    bad = model.infer({"input": np.zeros((1, 5), np.float32)})  # wrong width: onnxruntime refuses it
    good = model.infer({"input": digits.x_test[:1]})

    async def main():
        return await asyncio.gather(bad, good, return_exceptions=True)

    failed, ok = asyncio.run(main())
    assert isinstance(failed, Exception) and ok["logits"].shape == (1, 10)
    again = gather(model.infer({"input": digits.x_test[:2]}))[0]  # the batcher still serves
    np.testing.assert_allclose(again["logits"], direct(files[0], digits.x_test[:2]), rtol=1e-5, atol=1e-6)


def test_an_evicted_model_still_answers_requests_in_flight(files, digits):
    cache = SessionCache(max_models=1)
    model = cache.get("a", files[0])
    cache.get("b", files[1])  # evicts a from the cache; a caller holding it is still served
    out = gather(model.infer({"input": digits.x_test[:3]}))[0]["logits"]
    np.testing.assert_allclose(out, direct(files[0], digits.x_test[:3]), rtol=1e-5, atol=1e-6)


def test_runs_cheaper_than_a_thread_hand_off_stay_on_the_event_loop(files, digits):
    """A model's first run goes to a worker thread and measures its cost per row; a run expected to
    take less than INLINE_BELOW_S is then done on the event loop, a dearer one in a thread again."""
    for batching in (BatchConfig(enabled=False), BatchConfig(max_size=64, max_wait_s=0.001)):
        ran_on = []
        model = SessionCache(batching=batching, on_run=lambda key, rows: ran_on.append(threading.current_thread())
                             ).get("a", files[0])
        x = digits.x_test[:4]

        async def main():
            loop_thread = threading.current_thread()
            assert model.row_seconds is None and not model.runs_inline(1)
            answers = [await model.infer({"input": x})]  # cost unknown: a thread
            assert model.row_seconds is not None and model.row_seconds > 0
            model.row_seconds = runtime.INLINE_BELOW_S / 100  # 4 rows: 4 % of a hand-off
            answers.append(await model.infer({"input": x}))
            model.row_seconds = runtime.INLINE_BELOW_S / 4  # 4 rows: as dear as a hand-off
            answers.append(await model.infer({"input": x}))
            return loop_thread, answers

        loop_thread, answers = asyncio.run(main())
        assert [t is loop_thread for t in ran_on] == [False, True, False], batching
        for answer in answers:  # the same answer wherever it ran
            np.testing.assert_allclose(answer["logits"], direct(files[0], x), rtol=1e-5, atol=1e-6)
