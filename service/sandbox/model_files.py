"""Lay out an uploaded teacher as the jail sees it, by copying bytes only (no loading, no parsing
beyond zip headers): standard library only, so the API can do it too.

- TorchScript, and ONNX without external data: the file itself.
- A Hugging Face folder (zip): the files a model needs extracted into a private folder — JSON,
  text vocabularies and safetensors weights; pickled weights (.bin, .pt, …) are never extracted.
- ONNX with external data: stored as a zip of `model.onnx` and its data file(s) under the names
  the graph gives them (`onnx_bundle`); extracted into a private folder holding just those, so
  that onnxruntime resolves the data beside the model and nowhere else.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path, PurePosixPath

from kdserve.service.sandbox.sniff import ModelFileError

ONNX_MODEL_MEMBER = "model.onnx"
# protobuf refuses to serialise a message over 2 GiB: past this the exporter would have to move a
# student's weights to a side file, which the model store, downloads and serving do not carry (one
# file per artifact); the job's pre-flight (service/budgets.py) and the exporter use this figure.
ONNX_SINGLE_FILE_BYTES = int(1.8 * 1024**3)

# What is extracted from an `hf` zip; everything else (pickled .bin/.pt weights, code, READMEs) is
# left in the archive, so nothing but JSON, text vocabularies and safetensors is ever opened.
HF_FILES = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "modules.json",
            "sentence_bert_config.json", "config_sentence_transformers.json", "model.safetensors.index.json"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Tokenizer files shipped beside a student (the canonical tokenizer.json is always written).
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                   "vocab.json", "merges.txt")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain_file_name(name: str) -> bool:
    """A bare file name: no folder part, no parent reference, nothing a path could be built from."""
    return bool(name) and len(name) <= 255 and not re.search(r"[/\\\x00]", name) and name not in (".", "..")


def _copy_member(zf: zipfile.ZipFile, name: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(name) as src, open(target, "xb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)


def _hf_root(names: list[str]) -> PurePosixPath:
    """The folder holding the shallowest config.json (a zip may wrap the model folder in one
    directory; sentence-transformers folders have deeper config.json files for their modules)."""
    configs = sorted((PurePosixPath(n) for n in names if n.rsplit("/", 1)[-1] == "config.json"),
                     key=lambda p: len(p.parts))
    if not configs:
        raise ModelFileError("unsupported_format", "the zip has no config.json: upload a Hugging Face model folder")
    return configs[0].parent


def _hf_wanted(rel: PurePosixPath) -> bool:
    return str(rel) in HF_FILES or (len(rel.parts) == 2 and rel.parts[0].endswith("_Pooling") and rel.name == "config.json")


def extract_hf(path: Path, dest: Path) -> None:
    """Extract the files a Hugging Face folder needs, refusing pickled weights.

    Member paths were checked by the API (kdserve.service.uploads.check_archive); they are checked again
    here since the worker must not trust its blob store blindly."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        root = _hf_root(names)
        wanted, pickles, weights = [], [], 0
        for name in names:
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts or (root.parts and p.parts[: len(root.parts)] != root.parts):
                continue
            rel = PurePosixPath(*p.parts[len(root.parts):])
            if rel.name.endswith(".safetensors"):
                weights += 1
                wanted.append((name, rel))
            elif rel.name.lower().endswith(PICKLE_SUFFIXES):
                pickles.append(str(rel))
            elif _hf_wanted(rel):
                wanted.append((name, rel))
        if not weights:
            if pickles:
                raise ModelFileError(
                    "unsafe_file", f"the folder's weights are Python pickles ({', '.join(sorted(pickles)[:3])}), which "
                    "can run arbitrary code when loaded; they were not loaded. Save the model with "
                    "save_pretrained(..., safe_serialization=True) to get model.safetensors")
            raise ModelFileError("unsupported_format", "the folder has no *.safetensors weights")
        for name, rel in wanted:
            _copy_member(zf, name, dest / Path(*rel.parts))


def onnx_bundle_members(path: Path) -> dict[str, int]:
    """{member name: size} of an ONNX bundle: `model.onnx` plus plain-named data files, nothing else."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: i.file_size for i in zf.infolist() if not i.filename.endswith("/")}
    if ONNX_MODEL_MEMBER not in members:
        raise ModelFileError("unsupported_format", f"the ONNX bundle has no {ONNX_MODEL_MEMBER}")
    bad = [n for n in members if not plain_file_name(n)]
    if bad:
        raise ModelFileError("unsafe_file", f"the ONNX bundle's member {bad[0]!r} is not a plain file name")
    return members


def write_onnx_bundle(model: Path, data_files: dict[str, Path], dest: Path) -> None:
    """Store an ONNX model with its data file(s) as one bundle (no compression: extracting it is a
    copy). Data files keep the names the graph refers to them by."""
    bad = [n for n in data_files if not plain_file_name(n) or n == ONNX_MODEL_MEMBER]
    if bad:
        raise ModelFileError("unsafe_file", f"{bad[0]!r} cannot name an ONNX data file: use a plain file name",
                             "data")
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(model, ONNX_MODEL_MEMBER)
        for name, path in sorted(data_files.items()):
            zf.write(path, name)


def rebundle_onnx_zip(path: Path, dest: Path) -> None:
    """A zip a user made of a model and its data file(s) (`wine.onnx` + `wine.onnx.data`, flat)
    rewritten as the canonical bundle, its one .onnx member renamed to model.onnx."""
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        models = [n for n in names if n.lower().endswith(".onnx")]
        if len(models) != 1:
            raise ModelFileError("unsupported_format", "a zipped ONNX teacher holds exactly one .onnx file and its "
                                 f"data file(s); this one has {len(models)} .onnx files")
        for name in names:
            target = ONNX_MODEL_MEMBER if name == models[0] else name
            if not plain_file_name(name) or (target != ONNX_MODEL_MEMBER and name == ONNX_MODEL_MEMBER):
                raise ModelFileError("unsafe_file", f"the zip's member {name!r} is not a plain file name beside the model")
            with zf.open(name) as src, out.open(target, "w", force_zip64=True) as sink:
                while chunk := src.read(1 << 20):
                    sink.write(chunk)


def extract_onnx_bundle(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in onnx_bundle_members(path):
            _copy_member(zf, name, dest / name)


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def prepare(path: Path, fmt: str, dest: Path) -> Path:
    """What to show the jail at /in/model: the file itself, or `dest` filled with the folder."""
    if fmt == "hf":
        extract_hf(path, dest)
        return dest
    if fmt == "onnx" and is_zip(path):
        extract_onnx_bundle(path, dest)
        return dest
    return path
