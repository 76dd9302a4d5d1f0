"""Tell what an uploaded model file is without running or unpickling any of it.

Pure Python (zipfile, pickletools, struct): safe to call on hostile bytes. A file that would need
a general unpickler to load is refused as `unsafe_file`.
"""

from __future__ import annotations

import json
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ModelFileError(Exception):
    """A refused upload. `code` is the API error code (unsafe_file, unsupported_format, ...)."""

    def __init__(self, code: str, message: str, param: str | None = "file"):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class Sniffed:
    format: str  # torchscript | onnx | hf | safetensors


# The only globals a TorchScript archive's pickles reference: its own compiled classes
# (__torch__.*), tensor storages and rebuild helpers. Anything else would run Python code.
def _allowed_global(module: str, name: str) -> bool:
    if module == "__torch__" or module.startswith("__torch__."):
        return ".classes" not in f".{module}"  # __torch__.torch.classes.*: custom C++ objects
    if module == "torch" and name.endswith("Storage"):
        return True
    if module == "torch._utils" and name.startswith("_rebuild_"):
        return True
    if module == "torch.jit._pickle":
        return True
    return (module, name) == ("collections", "OrderedDict")


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle would import, read from its opcodes without executing it."""
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            found.add((module, name))
        elif op.name == "STACK_GLOBAL":
            if len(strings) < 2:
                found.add(("?", "?"))  # built from something other than two literal strings
            else:
                found.add((strings[-2], strings[-1]))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"):
            strings.append(str(arg))
        elif op.name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4"):
            found.add(("?", op.name))
    return found


def _check_torchscript_zip(zf: zipfile.ZipFile, names: list[str]) -> None:
    """No pickle may reference Python objects, and the compiled code may call allowed operators
    only (service/sandbox/script_ops.py): both read from the archive's bytes, nothing is loaded."""
    from kdserve.service.sandbox.script_ops import scan_archive

    sources = {}
    for name in names:
        if name.endswith(".py") and ("/code/" in name or name.startswith("code/")):
            try:
                sources[name] = zf.read(name).decode("utf-8")
            except UnicodeDecodeError:
                raise ModelFileError("unsafe_file", f"{name} inside the archive is not UTF-8 TorchScript source")
    problem = scan_archive(sources)
    if problem:
        raise ModelFileError("unsafe_file", f"refused without loading: {problem}")
    for name in names:
        if name.endswith(".pkl") and not name.endswith(".debug_pkl"):
            try:
                bad = {g for g in pickle_globals(zf.read(name)) if not _allowed_global(*g)}
            except Exception as exc:  # malformed pickle stream
                raise ModelFileError("unsafe_file", f"{name} inside the archive is not a valid TorchScript pickle: {exc}")
            if bad:
                refs = ", ".join(sorted(f"{m}.{n}" for m, n in bad))
                raise ModelFileError("unsafe_file", f"{name} references Python objects ({refs}); refused without loading")


def sniff(path: Path) -> Sniffed:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ModelFileError("unsupported_format", "the file is empty")
    if head[:4] == b"PK\x03\x04":
        try:
            zf = zipfile.ZipFile(path)
            names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelFileError("unsupported_format", f"corrupted zip archive: {exc}")
        with zf:
            has_code = any("/code/" in n or n.startswith("code/") for n in names)
            has_data = any(n.endswith("data.pkl") for n in names)
            if has_code and has_data:
                _check_torchscript_zip(zf, names)
                return Sniffed("torchscript")
            if has_data:
                raise ModelFileError(
                    "unsafe_file",
                    "this is a torch.save() pickle of a Python object, which can run arbitrary code when loaded; "
                    "upload TorchScript (torch.jit.script/trace + save) or ONNX instead",
                )
            onnx_members = [n for n in names if n.lower().endswith(".onnx")]
            if len(onnx_members) == 1 and "config.json" not in names and all("/" not in n for n in names):
                return Sniffed("onnx")  # a model with its external data file(s) beside it
            if any(n.rsplit("/", 1)[-1] == "config.json" for n in names):
                if not any(n.endswith(".safetensors") for n in names) and any(
                        n.lower().endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")) for n in names):
                    raise ModelFileError(
                        "unsafe_file", "the folder's weights are Python pickles (.bin/.pt), which can run arbitrary "
                        "code when loaded; they were not loaded. Save the model with save_pretrained(..., "
                        "safe_serialization=True) to get model.safetensors")
                return Sniffed("hf")
        raise ModelFileError("unsupported_format", "zip archive is neither TorchScript, a Hugging Face folder, nor an "
                             "ONNX model with its data file")
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q") or head[:1] == b"c":
        raise ModelFileError(
            "unsafe_file",
            "this is a Python pickle, which can run arbitrary code when loaded; it was not loaded. "
            "Upload TorchScript or ONNX instead",
        )
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < 100_000_000 and head[8:9] == b"{":
            with open(path, "rb") as f:
                f.seek(8)
                try:
                    json.loads(f.read(header_len))
                    return Sniffed("safetensors")
                except ValueError:
                    pass
    return Sniffed("onnx")  # confirmed (or refused) by the ONNX checker when loaded
