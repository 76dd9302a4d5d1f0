"""The worker's handle on a teacher: the `Teacher` interface, with the model itself loaded and run
in the jail (service/sandbox/jail.py). Tensors go in and come back as .npy arrays over a pipe; what a
text student needs besides outputs (tokenizer, config, weights to copy) comes back as files the
jail wrote into its private /out folder, read here as data (JSON, tokenizer.json, safetensors).

    with JailedTeacher(path, "torchscript", [64], jail=config) as teacher:
        logits = teacher(x)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kdserve.service.serving import textio
from kdserve.service.sandbox.jail import JailConfig, JailedProcess, JailError
from kdserve.service.sandbox.model_files import prepare
from kdserve.service.sandbox.sniff import ModelFileError
from kdserve.models.teachers import Teacher

MAX_TEXT_FILE_BYTES = 256 * 1024**2  # a tokenizer.json or config.json the jail hands back


class JailedTeacher(Teacher):
    def __init__(self, path: Path, fmt: str, input_shape: Sequence[int] | None = None, device: str = "cpu",
                 task: str | None = None, *, jail: JailConfig):
        self.jail = jail
        self._dir = Path(tempfile.mkdtemp(prefix="kdserve-teacher-", dir=jail.scratch))
        self.process: JailedProcess | None = None
        try:
            model = prepare(Path(path), fmt, self._dir / "model")
            self.process = JailedProcess(model, mode=jail.mode, budget=jail.budget, device=device, python=jail.python,
                                         scratch=self._dir)
            self._out = Path(self.process.out_dir)
            reply = self.process.request(
                {"op": "load", "model": self.process.paths["model"], "format": fmt, "task": task,
                 "input_shape": list(input_shape) if input_shape else None, "device": device,
                 "out": self.process.paths["out"], "files": fmt == "hf"}, timeout=jail.load_timeout_s)
            info = reply.header
            if not info.get("ok"):
                raise ModelFileError(info.get("code", "unsupported_format"), info.get("message", "refused"),
                                     info.get("param"))
            self._describe(info)
        except BaseException:
            self.close()
            raise

    def _describe(self, info: dict[str, Any]) -> None:
        self.format, self.device = info["format"], info.get("device", "cpu")
        self.input_shape, self.input_dtype = list(info["input_shape"]), info.get("input_dtype", "float32")
        self.num_classes, self.num_parameters = int(info["num_classes"]), int(info["num_parameters"])
        self.output_names = [o["name"] for o in info["outputs"]]
        self.output_shapes = {o["name"]: o["shape"] for o in info["outputs"]}
        self.logits_name = next(o["name"] for o in info["outputs"] if o["logits"])
        self.info = info
        if self.format == "hf":
            self._text_side(info["details"])

    def _text_side(self, details: dict[str, Any]) -> None:
        """A text teacher's tokenizer and config, from the files the jail wrote."""
        import json

        for key in ("task", "model_type", "vocab_size", "model_vocab_size", "hidden_size", "num_layers", "max_positions",
                    "pooling", "normalize", "pad_token_id", "sep_token_id", "output_dim"):
            setattr(self, key, details[key])
        self.tokenizer_json = self._read("tokenizer.json").decode("utf-8")
        self.config = json.loads(self._read("config.json"))
        folder = self._out / "tokenizer_files"
        self.tokenizer_files = {p.name: self._read(f"tokenizer_files/{p.name}") for p in sorted(folder.iterdir())
                                if p.is_file()} if folder.is_dir() else {}
        self.tokenizer = textio.load_tokenizer(self.tokenizer_json)
        self._details = details

    def details(self) -> dict[str, Any]:
        return self._details

    def _read(self, name: str) -> bytes:
        path = self._out / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_TEXT_FILE_BYTES:
            raise JailError("teacher_crashed", f"the teacher's process did not hand back {name}")
        return path.read_bytes()

    def _ask(self, header: dict[str, Any], arrays: Sequence[np.ndarray] = (), **kw) -> tuple[dict, list[np.ndarray]]:
        if self.process is None:
            raise JailError("teacher_crashed", "the teacher's process is closed")
        reply = self.process.request(header, arrays, **kw)
        if not reply.header.get("ok"):
            raise ModelFileError(reply.header.get("code", "teacher_output_mismatch"),
                                 reply.header.get("message", "the teacher refused the request"), reply.header.get("param"))
        return reply.header, reply.arrays

    def run(self, x, names: Sequence[str]) -> dict[str, torch.Tensor]:
        parts = x if isinstance(x, (tuple, list)) else (x,)
        arrays = [p.detach().cpu().numpy() for p in parts]
        _, outs = self._ask({"op": "run", "names": list(names)}, arrays, timeout=self.jail.call_timeout_s)
        rows = len(arrays[0])
        if len(outs) != len(names) or any(o.ndim < 1 or o.shape[0] != rows for o in outs):
            raise JailError("teacher_output_mismatch", f"the teacher answered {len(outs)} outputs for {rows} rows, not "
                            f"{len(names)} of {rows} rows each")
        return {n: torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)) for n, o in zip(names, outs)}

    def latency_ms(self, x, repeats: int = 50, budget_s: float = 1.0) -> float:
        """Median ms of one forward pass on these rows, timed inside the jail (the pipe not counted)."""
        parts = x if isinstance(x, (tuple, list)) else (x,)
        header, _ = self._ask({"op": "time", "repeats": repeats, "budget_s": budget_s},
                              [p.detach().cpu().numpy() for p in parts], timeout=self.jail.call_timeout_s)
        return float(header["ms"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A text teacher's weights (for students that copy them), read from safetensors."""
        from safetensors.torch import load_file

        self._ask({"op": "state_dict", "out": self.process.paths["out"]}, timeout=self.jail.call_timeout_s)
        path = self._out / "state_dict.safetensors"
        if path.is_symlink() or not path.is_file():
            raise JailError("teacher_crashed", "the teacher's process did not hand back its weights")
        return load_file(str(path))

    def refine(self, x: torch.Tensor, y: torch.Tensor, params: dict, seed: int, dest: Path,
               on_epoch: Callable[[dict], None], should_stop: Callable[[], Any]) -> Path:
        """MCMI refinement in the jail; the refined TorchScript archive is copied to `dest`."""
        self._ask({"op": "refine", "params": params, "seed": seed, "out": self.process.paths["out"]},
                  [x.numpy(), y.numpy()], timeout=None, on_event=on_epoch, should_stop=should_stop)
        source = self._out / "teacher.pt"
        if source.is_symlink() or not source.is_file():
            raise JailError("teacher_crashed", "the teacher's process did not hand back the refined teacher")
        shutil.copyfile(source, dest)
        return dest

    def close(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "JailedTeacher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
