"""Units of the text path: our encoder against transformers' BERT, the layer-dropped and narrow
initialisations, tokenisation (worker and API side alike), JSONL ingest, the HF folder extraction
that never touches a pickle, and the embedding-retrieval metric."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from api_tests import text_fixtures as tf
from models import textio
from models.sniff import ModelFileError
from models.teachers import extract_hf, load_teacher
from models.text import TextSource, build_layer_dropped, projection_basis
from models.zoo import ArchitectureError, create_student
from service import ingest, text_serving
from worker.pipeline import neighbour_overlap


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


def test_serving_tokenisation_is_the_training_tokenisation(emb_teacher):
    texts, _ = tf.sentences(10, 7)
    texts[0] = " ".join(["good"] * 100)  # truncated at max_length
    worker = textio.encode(emb_teacher.tokenizer, texts, 16)
    tok = textio.configured(emb_teacher.tokenizer_json, 16)
    served = text_serving.text_feeds(tok, texts)
    assert np.array_equal(served["input_ids"], worker.input_ids) and served["input_ids"].shape[1] == 16
    assert np.array_equal(served["attention_mask"], worker.attention_mask)
    assert text_serving.strings([["a"], ["b"]], "text") == ["a", "b"]
    for bad, match in (([1, 2], "not a string"), ([], "non-empty"), ("abc", "non-empty")):
        with pytest.raises(text_serving.TextInputError, match=match):
            text_serving.strings(bad, "text")
    with pytest.raises(text_serving.TextInputError, match="pairs"):
        text_serving.text_feeds(tok, ["a", "b"], ["c"])


def test_jsonl_round_trip_keeps_texts_pairs_and_labels(tmp_path):
    texts = ["héllo wörld", "second", "日本語のテキスト"]
    path = tf.save_jsonl(tmp_path / "d.jsonl", texts, [1, None, 0], pairs=["a", "b", "c"])
    parsed = ingest.parse(path, ingest.detect_format("d.jsonl", path.read_bytes()[:64]))
    assert parsed.texts == texts and parsed.pairs == ["a", "b", "c"] and parsed.y.tolist() == [1, -1, 0]
    summary = parsed.summary()
    assert summary["feature_shape"] == [] and summary["details"]["text_pairs"] and summary["num_classes"] == 2
    parsed.save(tmp_path / "c.npz")
    back = ingest.load_canonical(tmp_path / "c.npz")
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
    feeds = text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[2], data=texts)], False)
    ref = textio.encode(emb_teacher.tokenizer, texts, 16)
    assert np.array_equal(feeds["input_ids"], ref.input_ids) and np.array_equal(feeds["attention_mask"], ref.attention_mask)
    pair = text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[2, 1], data=[[t] for t in texts]),
                                            T(name="text_pair", datatype="BYTES", shape=[2], data=["x", "y"])], True)
    assert pair["input_ids"].shape[0] == 2
    for inputs, match in (([T(name="text", datatype="FP32", shape=[1], data=[1.0])], "BYTES"),
                          ([T(name="text", datatype="BYTES", shape=[3], data=texts)], "shape"),
                          ([T(name="text_pair", datatype="BYTES", shape=[1], data=["a"])], "missing")):
        with pytest.raises(text_serving.TextInputError, match=match):
            text_serving.v2_text_feeds(tok, inputs, True)
    with pytest.raises(text_serving.TextInputError, match="single texts"):
        text_serving.v2_text_feeds(tok, [T(name="text", datatype="BYTES", shape=[1], data=["a"]),
                                         T(name="text_pair", datatype="BYTES", shape=[1], data=["b"])], False)
