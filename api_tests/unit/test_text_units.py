"""Units of the text path: our encoder against transformers' BERT, the layer-dropped and narrow
initialisations, tokenisation (worker and API side alike), JSONL ingest, the HF folder extraction
that never touches a pickle, and the embedding-retrieval metric."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from api_tests import text_fixtures as tf
from kdserve.service.serving import textio
from kdserve.service.sandbox.sniff import ModelFileError
from kdserve.service.sandbox.model_files import extract_hf
from kdserve.models.teachers import load_teacher
from kdserve.models.text import (LowRankEmbedding, TextSource, build_layer_dropped, low_rank_factors, projection_basis,
                         token_weights)
from kdserve.models.zoo import ARCHITECTURES, ArchitectureError, create_student
from kdserve.service import ingest
from kdserve.service.store import datasets
from kdserve.service.serving import text as text_serving
from kdserve.service.errors import ApiError
from kdserve.worker.pipeline import neighbour_overlap


@pytest.fixture(scope="module")
def emb_teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    tf.save_teacher(d / "emb", "embedding", layers=3)
    return load_teacher(tf.zip_folder(d / "emb", d / "emb.zip"))


def source(t, calibration=None) -> TextSource:
    return TextSource(t.vocab_size, t.pad_token_id, t.sep_token_id, t.max_positions, t.task, t.output_dim, t.pooling,
                      t.normalize, t.model_type, t.config, t.model.state_dict(), calibration)


def tokens(t, texts, pairs=None):
    enc = textio.encode(t.tokenizer, texts, 32, pairs)
    return enc, tuple(torch.from_numpy(a) for a in (enc.input_ids, enc.attention_mask, enc.token_type_ids))


def test_all_layers_kept_reproduces_the_teacher_and_its_segments(emb_teacher):
    texts, _ = tf.sentences(16, 5)
    enc, batch = tokens(emb_teacher, texts, pairs=texts[::-1])
    # the student derives segments from [SEP] inside the graph: the same as the tokenizer's type ids
    is_sep = enc.input_ids == emb_teacher.sep_token_id
    derived = ((np.cumsum(is_sep, 1) - is_sep) > 0) * enc.attention_mask
    assert np.array_equal(derived, enc.token_type_ids) and enc.token_type_ids.max() == 1
    student = build_layer_dropped(source(emb_teacher), keep=range(3), hidden_size=None, dropout=0.1).eval()
    with torch.no_grad():
        ours = student(batch[0], batch[1])
    theirs = emb_teacher.run(batch, ["sentence_embedding"])["sentence_embedding"]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_layer_choice_and_narrow_projection(emb_teacher):
    texts, _ = tf.sentences(64, 6)
    _, batch = tokens(emb_teacher, texts)
    src = source(emb_teacher, (batch[0], batch[1]))
    p = projection_basis(src, 16)
    assert p.shape == (32, 16) and torch.allclose(p.T @ p, torch.eye(16), atol=1e-5)
    narrow = create_student("layer_dropped", {"every": 2, "hidden_size": 16}, [], 32, source=src)
    assert len(narrow.body) == 1 and narrow.embeddings.word.weight.shape == (len(tf.VOCAB), 16)
    assert narrow.head.weight.shape == (32, 16) and torch.allclose(narrow.head.weight, p)  # the way back starts as P
    assert not narrow.embeddings.word.weight.requires_grad  # frozen by default
    assert len(create_student("layer_dropped", {"layers": [0, 2]}, [], 32, source=src).body) == 2
    with pytest.raises(ArchitectureError, match="out of range"):
        create_student("layer_dropped", {"layers": [3]}, [], 32, source=src)
    with pytest.raises(ArchitectureError, match="vocab_size"):
        create_student("transformer", {"vocab_size": 10}, [], 32, source=src)
    with pytest.raises(ArchitectureError, match="text student"):
        create_student("transformer", {}, [64], 10)


def rank_r(table: torch.Tensor, r: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The best rank-r approximation by Eckart–Young, computed here independently (in float64)."""
    x = table.double()
    sw = torch.ones(len(x), dtype=torch.float64) if weights is None else weights.double().sqrt()
    u, s, vh = torch.linalg.svd(x * sw[:, None], full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r] / sw[:, None]


def test_low_rank_factors_are_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(200, 32, generator=g) @ torch.diag(torch.linspace(3, 0.1, 32))
    a, b = low_rank_factors(table, 8)
    assert a.shape == (200, 8) and b.shape == (8, 32) and torch.allclose(b @ b.T, torch.eye(8), atol=1e-5)
    assert torch.allclose((a @ b).double(), rank_r(table, 8), atol=1e-4)
    s = torch.linalg.svdvals(table.double())
    assert torch.linalg.norm(table - a @ b).item() == pytest.approx(s[8:].pow(2).sum().sqrt().item(), rel=1e-4)
    # weighted: the optimum of Σ w_v‖row_v − approx_v‖², no worse there than the unweighted fit
    w = torch.rand(200, generator=g) ** 4
    aw, bw = low_rank_factors(table, 8, w)
    rows = aw @ bw
    assert torch.allclose(rows[w > 0.05].double(), rank_r(table, 8, w)[w > 0.05], atol=1e-3)

    def werr(x):
        return (w[:, None] * (table - x) ** 2).sum().item()

    assert werr(rows) < werr(a @ b)
    for bad in (0, 32, 40):
        with pytest.raises(ValueError, match="rank"):
            low_rank_factors(table, bad)


def test_layer_dropped_with_a_low_rank_embedding_table(emb_teacher):
    texts, _ = tf.sentences(64, 8)
    _, batch = tokens(emb_teacher, texts)
    table = emb_teacher.model.state_dict()["embeddings.word_embeddings.weight"]
    full = create_student("layer_dropped", {"layers": [0, 2]}, [], 32, source=source(emb_teacher))
    low = create_student("layer_dropped", {"layers": [0, 2], "embedding_rank": 8}, [], 32, source=source(emb_teacher))
    word = low.embeddings.word
    assert isinstance(word, LowRankEmbedding) and word.weight.shape == (len(tf.VOCAB), 8)
    assert word.up.weight.shape == (32, 8)
    assert torch.allclose((word.weight @ word.up.weight.T).double(), rank_r(table, 8), atol=1e-4)  # no texts: plain SVD
    assert not word.weight.requires_grad and word.up.weight.requires_grad  # the [V, r] table frozen, the map trains
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(full) - n(low) == len(tf.VOCAB) * 32 - (len(tf.VOCAB) + 32) * 8
    with torch.no_grad():
        ids = batch[0][:, :5]
        assert torch.allclose(word(ids), (word.weight @ word.up.weight.T)[ids], atol=1e-6)
        assert low.eval()(batch[0], batch[1]).shape == (64, 32)
    # with training texts: each token weighted by its frequency there (plus a uniform share)
    src = source(emb_teacher, (batch[0], batch[1]))
    w = token_weights(src, len(tf.VOCAB))
    assert w.sum().item() == pytest.approx(1.0) and (w > 0).all()
    assert w[emb_teacher.tokenizer.token_to_id("[CLS]")] > w[emb_teacher.tokenizer.token_to_id("[MASK]")]
    fitted = create_student("layer_dropped", {"layers": [0, 2], "embedding_rank": 8}, [], 32, source=src).embeddings.word
    assert torch.allclose((fitted.weight @ fitted.up.weight.T).double(), rank_r(table, 8, w), atol=1e-3)
    narrow = create_student("layer_dropped", {"layers": [0], "hidden_size": 16, "embedding_rank": 4}, [], 32, source=src)
    assert narrow.embeddings.word.up.weight.shape == (16, 4)
    for params in ({"embedding_rank": 32}, {"hidden_size": 16, "embedding_rank": 16}):
        with pytest.raises(ArchitectureError, match="embedding_rank"):
            create_student("layer_dropped", params, [], 32, source=src)
    schema = ARCHITECTURES["layer_dropped"].catalog_entry()["params"]["properties"]["embedding_rank"]
    assert "rank-r approximation" in schema["description"]
    assert {"type": "integer", "minimum": 1, "maximum": 8192} in schema["anyOf"]


def test_full_rows_keep_the_most_used_tokens_exact(emb_teacher):
    texts, _ = tf.sentences(64, 8)
    _, batch = tokens(emb_teacher, texts)
    src = source(emb_teacher, (batch[0], batch[1]))
    vocab = len(tf.VOCAB)
    table = emb_teacher.model.state_dict()["embeddings.word_embeddings.weight"]
    params = {"layers": [0, 2], "embedding_rank": 4, "embedding_full_rows": 6}
    low = create_student("layer_dropped", {**params, "embedding_full_rows": None}, [], 32, source=src)
    hybrid = create_student("layer_dropped", params, [], 32, source=src)
    word = hybrid.embeddings.word
    counts = torch.bincount(batch[0][batch[1].bool()], minlength=vocab)
    top = torch.argsort(counts, descending=True, stable=True)[:6]
    rest = torch.ones(vocab, dtype=torch.bool)
    rest[top] = False
    with torch.no_grad():
        out = word(torch.arange(vocab))
        assert torch.allclose(out[top], table[top], atol=1e-5)  # the six most used tokens start exact
        assert torch.allclose(out[rest], low.embeddings.word(torch.arange(vocab))[rest], atol=1e-6)  # the rest: rank 4
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(hybrid) - n(low) == 7 * 32  # six rows and the zero row
    assert not word.full.weight.requires_grad  # frozen with the [V, r] table by default
    # trained: the shared zero row (tokens without a full row) never moves
    trained = create_student("layer_dropped", {**params, "freeze_embeddings": False}, [], 32, source=src)
    trained.embeddings.word(torch.arange(vocab)).sum().backward()
    grad = trained.embeddings.word.full.weight.grad
    assert grad[0].abs().sum() == 0 and grad[1:].abs().sum() > 0
    # more texts than the calibration sample: the worker's counts over all of them decide
    counted = TextSource(**{**src.__dict__, "token_counts": torch.arange(vocab)})  # the highest ids most used
    assert sorted(torch.nonzero(create_student("layer_dropped", params, [], 32, source=counted).embeddings.word.slot)
                  .flatten().tolist()) == list(range(vocab - 6, vocab))
    for bad in ({"embedding_full_rows": 6}, {**params, "embedding_full_rows": vocab}):
        with pytest.raises(ArchitectureError, match="embedding_full_rows"):
            create_student("layer_dropped", {"layers": [0, 2], **bad}, [], 32, source=src)


def test_serving_tokenisation_is_the_training_tokenisation(emb_teacher):
    texts, _ = tf.sentences(10, 7)
    texts[0] = " ".join(["good"] * 100)  # truncated at max_length
    worker = textio.encode(emb_teacher.tokenizer, texts, 16)
    tok = textio.configured(emb_teacher.tokenizer_json, 16)
    served = text_serving.text_feeds(tok, texts, None, 10_000)
    assert np.array_equal(served["input_ids"], worker.input_ids) and served["input_ids"].shape[1] == 16
    assert np.array_equal(served["attention_mask"], worker.attention_mask)
    assert text_serving.strings([["a"], ["b"]], "text") == ["a", "b"]
    for bad, match in (([1, 2], "not a string"), ([], "non-empty"), ("abc", "non-empty")):
        with pytest.raises(text_serving.TextInputError, match=match):
            text_serving.strings(bad, "text")
    with pytest.raises(text_serving.TextInputError, match="pairs"):
        text_serving.text_feeds(tok, ["a", "b"], ["c"], 10_000)
    with pytest.raises(ApiError) as over:  # the request's character budget counts texts and pairs
        text_serving.text_feeds(tok, ["abc"] * 5, ["de"] * 5, 24)
    assert over.value.status == 413 and "25 characters" in over.value.message
    assert text_serving.text_feeds(tok, ["abc"] * 5, ["de"] * 5, 25)["input_ids"].shape[0] == 5


def test_jsonl_round_trip_keeps_texts_pairs_and_labels(tmp_path):
    texts = ["héllo wörld", "second", "日本語のテキスト"]
    path = tf.save_jsonl(tmp_path / "d.jsonl", texts, [1, None, 0], pairs=["a", "b", "c"])
    parsed = ingest.parse(path, ingest.detect_format("d.jsonl", path.read_bytes()[:64]))
    assert parsed.texts == texts and parsed.pairs == ["a", "b", "c"] and parsed.y.tolist() == [1, -1, 0]
    summary = parsed.summary()
    assert summary["feature_shape"] == [] and summary["details"]["text_pairs"] and summary["num_classes"] == 2
    parsed.save(tmp_path / "c.npz")
    back = datasets.load_canonical(tmp_path / "c.npz")
    assert back.texts == texts and back.pairs == ["a", "b", "c"] and back.y.tolist() == [1, -1, 0]


def test_hf_extraction_skips_pickles_and_escaping_members(tmp_path):
    folder = tf.save_teacher(tmp_path / "m", "embedding")
    z = tmp_path / "m.zip"
    tf.zip_folder(folder, z)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("pytorch_model.bin", b"\x80\x04 not loaded")
        zf.writestr("../../evil.json", b"{}")
    extract_hf(z, tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").rglob("*")}
    assert "model.safetensors" in names and "pytorch_model.bin" not in names and "evil.json" not in names
    assert not (tmp_path / "evil.json").exists()
    pickled = tf.save_teacher(tmp_path / "p", "embedding", safe=False)
    with pytest.raises(ModelFileError) as err:
        extract_hf(tf.zip_folder(pickled, tmp_path / "p.zip"), tmp_path / "out2")
    assert err.value.code == "unsafe_file"


def test_neighbour_overlap():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert neighbour_overlap(x, x, 10) == 1.0
    assert neighbour_overlap(x, x * 3.0, 10) == 1.0  # cosine: scale does not matter
    assert neighbour_overlap(x, torch.randn(50, 8), 10) < 0.6
    assert neighbour_overlap(x[:5], x[:5], 10) is None


def test_v2_bytes_inputs_become_token_inputs(emb_teacher):
    from types import SimpleNamespace as T

    tok = textio.configured(emb_teacher.tokenizer_json, 16)
    texts = ["the cat is good .", "a dog"]
    feeds = text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[2], data=texts)], False, 10_000)
    ref = textio.encode(emb_teacher.tokenizer, texts, 16)
    assert np.array_equal(feeds["input_ids"], ref.input_ids) and np.array_equal(feeds["attention_mask"], ref.attention_mask)
    pair = text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[2, 1], data=[[t] for t in texts]),
                                            T(name="text_pair", datatype="BYTES", shape=[2], data=["x", "y"])], True, 10_000)
    assert pair["input_ids"].shape[0] == 2
    for inputs, match in (([T(name="text", datatype="FP32", shape=[1], data=[1.0])], "BYTES"),
                          ([T(name="text", datatype="BYTES", shape=[3], data=texts)], "shape"),
                          ([T(name="text_pair", datatype="BYTES", shape=[1], data=["a"])], "missing")):
        with pytest.raises(text_serving.TextInputError, match=match):
            text_serving.v2_text_feeds(tok, inputs, True, 10_000)
    with pytest.raises(text_serving.TextInputError, match="single texts"):
        text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[1], data=["a"]),
                                         T(name="text_pair", datatype="BYTES", shape=[1], data=["b"])], False, 10_000)
