"""Load an uploaded teacher into one interface, whatever its format.

    teacher = load_teacher(path, "onnx", input_shape=[64])
    logits = teacher(x)              # x: float32 tensor [B, *input_shape] -> [B, num_classes]

TorchScript runs in torch (on the worker's device); ONNX runs in onnxruntime as a black box that
only has to produce logits. Nothing here unpickles: `kdserve.service.sandbox.sniff` refuses pickles first.

A Hugging Face folder (`hf`, a zip of config.json + *.safetensors + tokenizer files) is a text
teacher: `HfTeacher.run` takes token tensors (input_ids, attention_mask, token_type_ids) instead
of one float tensor, and its tokenizer travels with it (`tokenizer_json`). It is loaded with
transformers offline (`local_files_only`, HF_HUB_OFFLINE), never with `trust_remote_code`, and
only safetensors weights are ever read: pickled `.bin` files are not even extracted.

These loaders run only inside the teacher jail (service/sandbox/jail.py, worker/teacher_host.py): a
teacher is a program, and the API and the worker never load one themselves. They talk to it
through `kdserve.worker.jailed_teacher.JailedTeacher`, which has the same interface.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kdserve.service.sandbox.model_files import TOKENIZER_FILES, extract_hf
from kdserve.service.sandbox.sniff import ModelFileError, sniff
from kdserve.service.vocab import TASKS as TASK_NAMES
from kdserve.service.vocab import TEACHER_FORMATS

SUPPORTED = tuple(TEACHER_FORMATS)  # the upload form accepts exactly these
TASKS = tuple(TASK_NAMES)


class Teacher:
    """One interface over every format.

    `output_names` lists the model's outputs; `logits_name` is the one that holds the class
    logits (an output called "logits", else the first). The others (hidden states, embeddings)
    can serve as feature hints for methods such as FitNets or LELP."""

    format: str
    input_shape: list[int]
    input_dtype: str = "float32"
    num_classes: int = 0
    num_parameters: int
    output_names: list[str]
    logits_name: str

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise TypeError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, [self.logits_name])[self.logits_name]


def named_outputs(out: Any) -> dict[str, torch.Tensor]:
    """A tensor is `logits`; a tuple's tensors are "0", "1", …; a dict keeps its keys."""
    if isinstance(out, torch.Tensor):
        return {"logits": out}
    if isinstance(out, dict):
        named = {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    elif isinstance(out, (tuple, list)):
        named = {str(i): v for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    else:
        named = {}
    if not named:
        raise ModelFileError("teacher_output_mismatch", f"the teacher returned {type(out).__name__} without tensors")
    return named


class TorchScriptTeacher(Teacher):
    format = "torchscript"

    def __init__(self, path: Path, input_shape: Sequence[int] | None, device: str = "cpu"):
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"TorchScript archive does not load: {_first_line(exc)}")
        from kdserve.models.script_graph import check_module

        problem = check_module(self.module)  # the compiler's view, after the source scan of sniff()
        if problem:
            raise ModelFileError("unsafe_file", f"refused before running: {problem}")
        self.device = device
        self.num_parameters = int(sum(p.numel() for p in self.module.parameters()))
        self.input_shape = list(input_shape) if input_shape else self._guess_input_shape()
        self.output_names, self.logits_name = [], ""

    def _guess_input_shape(self) -> list[int]:
        first = next(iter(self.module.parameters()), None)
        if first is not None and first.dim() == 2:  # a Linear layer first: [out, in]
            return [int(first.shape[1])]
        raise ModelFileError(
            "invalid_request", "cannot tell the input shape of this TorchScript model; pass input_shape", "input_shape"
        )

    def discover_outputs(self, out: dict[str, torch.Tensor]) -> None:
        self.output_names = list(out)
        self.logits_name = "logits" if "logits" in out else self.output_names[0]

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = named_outputs(self.module(x.to(self.device, non_blocking=True)))
        if not self.output_names:
            self.discover_outputs(out)
        return {n: out[n].float() for n in names}


class OnnxTeacher(Teacher):
    format = "onnx"

    def __init__(self, path: Path, input_shape: Sequence[int] | None, device: str = "cpu"):
        import onnx
        import onnxruntime as ort

        from kdserve.service.sandbox.onnx_check import load_checked

        # A folder is an uploaded model with its external data (service/sandbox/model_files.py): loaded
        # by path, so the runtime finds the data beside it — the only files the folder holds.
        folder = path.is_dir()
        proto, model_file = load_checked(path)
        try:
            onnx.checker.check_model(str(model_file) if folder else proto)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"not a valid ONNX model: {_first_line(exc)}")
        self.num_parameters = int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            source = str(model_file) if folder else proto.SerializeToString()
            self.session = ort.InferenceSession(source, providers=providers)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"onnxruntime cannot run this model: {_first_line(exc)}")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError("unsupported_format", f"an ONNX teacher needs exactly one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        if inputs[0].type not in ("tensor(float)", "tensor(double)"):
            raise ModelFileError("unsupported_format", f"ONNX input must be a float tensor, not {inputs[0].type}")
        self.np_dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        declared = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape[1:]]
        if input_shape:
            self.input_shape = list(input_shape)
            if len(declared) != len(self.input_shape) or any(
                d is not None and d != s for d, s in zip(declared, self.input_shape)
            ):
                raise ModelFileError(
                    "teacher_output_mismatch",
                    f"input_shape {self.input_shape} does not match the model's declared input {inputs[0].shape}",
                    "input_shape",
                )
        elif all(d is not None for d in declared):
            self.input_shape = [int(d) for d in declared]
        else:
            raise ModelFileError("invalid_request", f"the model's input {inputs[0].shape} has free dimensions; pass input_shape", "input_shape")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        arr = x.detach().cpu().numpy().astype(self.np_dtype, copy=False)
        outs = self.session.run(list(names), {self.input_name: arr})
        return {n: torch.from_numpy(np.asarray(o)).float() for n, o in zip(names, outs)}


# ---- Hugging Face folders ----------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError("unsupported_format", f"{path.name} is not valid JSON: {_first_line(exc)}")
    if not isinstance(value, dict):
        raise ModelFileError("unsupported_format", f"{path.name} must hold a JSON object")
    return value


def sentence_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) as a sentence-transformers folder declares them (modules.json and its
    Pooling module's config); a plain transformers folder gets the convention: mean, normalised."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return "mean", True
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        assert isinstance(modules, list)
    except (ValueError, AssertionError, OSError):
        raise ModelFileError("unsupported_format", "modules.json is not a JSON list of sentence-transformers modules")
    types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
    normalize = any(t.endswith(".Normalize") for t in types)
    pooling = "mean"
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling"):
            cfg_path = folder / str(m.get("path", "")) / "config.json"
            if cfg_path.exists():
                cfg = _read_json(cfg_path)
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not cfg.get("pooling_mode_mean_tokens", True):
                    raise ModelFileError("unsupported_format", "only mean or CLS-token pooling is supported "
                                         f"(the folder's Pooling config is {cfg})")
    return pooling, normalize


@contextmanager
def _hf_folder(path: Path):
    """The model folder: `path` itself when it is one (as the jail shows it), else the zip's
    needed files extracted into a temporary folder."""
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kdserve-hf-") as tmp:
        extract_hf(path, Path(tmp))
        yield Path(tmp)


class HfTeacher(Teacher):
    """A Hugging Face encoder: a sequence classifier (logits) or a sentence-embedding model
    (pooled as its sentence-transformers config says: mean or CLS, L2-normalised when it has a
    Normalize module). Its outputs are `logits` or `sentence_embedding`, plus `hidden_states.K`:
    the masked-mean token vector after layer K (0 = the embeddings), a feature hint for FitNets."""

    format = "hf"
    input_dtype = "int64"

    def __init__(self, path: Path, task: str | None = None, device: str = "cpu"):
        if task is not None and task not in TASKS:
            raise ModelFileError("invalid_request", f"task must be one of {list(TASKS)}", "task")
        os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be fetched from a hub, whatever the config says
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        self.device = device
        with _hf_folder(path) as folder:
            self.config = _read_json(folder / "config.json")
            self.model_type = str(self.config.get("model_type") or "")
            archs = [str(a) for a in self.config.get("architectures") or []]
            self.task = task or ("classification" if any(a.endswith("ForSequenceClassification") for a in archs)
                                 else "embedding")
            self.pooling, self.normalize = sentence_pooling(folder) if self.task == "embedding" else ("cls", False)
            self.model = self._load_model(folder)
            self._load_tokenizer(folder)
        self.model.to(device).eval()
        self.num_parameters = int(sum(p.numel() for p in self.model.parameters()))
        cfg = self.model.config
        self.num_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
        self.hidden_size = int(getattr(cfg, "hidden_size", 0) or 0)
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 0) or 512)
        self.model_vocab_size = int(getattr(cfg, "vocab_size", 0) or 0)
        if self.model_vocab_size and self.vocab_size > self.model_vocab_size:
            raise ModelFileError(
                "teacher_output_mismatch", f"the tokenizer has {self.vocab_size} tokens but the model's embedding table "
                f"has {self.model_vocab_size} rows: ids past {self.model_vocab_size - 1} would index outside it. The "
                "tokenizer does not belong to this model")
        self.input_shape = [-1]
        self.accepts_token_types = "token_type_ids" in self._forward_params()
        self.logits_name = "logits" if self.task == "classification" else "sentence_embedding"
        self.output_names = [self.logits_name] + [f"hidden_states.{i}" for i in range(self.num_layers + 1)]

    def _load_model(self, folder: Path):
        import transformers

        transformers.logging.set_verbosity_error()  # its load reports go to stdout, where the probe answers
        transformers.logging.disable_progress_bar()

        common = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True,
                  "dtype": torch.float32}
        try:
            if self.task == "classification":
                model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                    str(folder), output_loading_info=True, **common)
            else:
                extra = {"add_pooling_layer": False} if self.model_type in ("bert", "roberta", "xlm-roberta") else {}
                model, info = transformers.AutoModel.from_pretrained(str(folder), output_loading_info=True, **common,
                                                                     **extra)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"transformers cannot load this folder as a {self.task} model "
                                 f"(model_type {self.model_type or '?'}; custom code is never run): {_first_line(exc)}")
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would fill them with random weights: a teacher that knows nothing there
            raise ModelFileError(
                "teacher_output_mismatch", f"the folder's weights lack {len(missing)} tensor(s) a {self.task} model "
                f"needs ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); a classification teacher must "
                "be saved from a …ForSequenceClassification model, or upload it with task=embedding", "task")
        return model

    def _load_tokenizer(self, folder: Path) -> None:
        """The tokenizer as one canonical tokenizer.json (what the worker tokenises with and what
        ships beside the student), plus the original tokenizer files, kept in memory."""
        import transformers

        if not any((folder / n).exists() for n in ("tokenizer.json", "vocab.txt", "vocab.json")):
            raise ModelFileError("unsupported_format", "the folder has no tokenizer (tokenizer.json, or vocab.txt / "
                                 "vocab.json + merges.txt): a text teacher must ship the tokenizer it was trained with")
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
            if backend is None:
                raise ValueError(f"{type(tok).__name__} has no fast (tokenizers) backend")
            self.tokenizer_json = backend.to_str()
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"the tokenizer does not load: {_first_line(exc)}")
        from kdserve.service.serving import textio

        self.tokenizer = textio.load_tokenizer(self.tokenizer_json)
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))
        self.pad_token_id = textio.pad_id(self.tokenizer)
        self.sep_token_id = textio.sep_id(self.tokenizer)
        self.tokenizer_files = {n: (folder / n).read_bytes() for n in TOKENIZER_FILES if (folder / n).exists()}

    def _forward_params(self) -> set[str]:
        import inspect

        return set(inspect.signature(self.model.forward).parameters)

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.task == "classification" else self.hidden_size

    def details(self) -> dict[str, Any]:
        """What pre-flight checks and text students need to know, stored with the teacher row."""
        return {"task": self.task, "model_type": self.model_type, "vocab_size": self.vocab_size,
                "model_vocab_size": self.model_vocab_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "num_heads": int(getattr(self.model.config, "num_attention_heads", 0) or 0),
                "max_positions": self.max_positions, "output_dim": self.output_dim, "pooling": self.pooling,
                "normalize": self.normalize, "tokenizer": True, "pad_token_id": self.pad_token_id,
                "sep_token_id": self.sep_token_id}

    def write_files(self, out: Path) -> None:
        """What the worker reads back as data (worker/jailed_teacher.py): the canonical
        tokenizer.json, the config and the original tokenizer files."""
        (out / "tokenizer.json").write_text(self.tokenizer_json, encoding="utf-8")
        (out / "config.json").write_text(json.dumps(self.config), encoding="utf-8")
        (out / "tokenizer_files").mkdir(exist_ok=True)
        for name, content in self.tokenizer_files.items():
            (out / "tokenizer_files" / name).write_bytes(content)

    def run(self, x, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """x: (input_ids, attention_mask, token_type_ids), int64 [B, L] each."""
        ids, mask, types = (t.to(self.device) for t in x)
        want_hidden = any(n.startswith("hidden_states.") for n in names)
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self.accepts_token_types:
            kwargs["token_type_ids"] = types
        with torch.no_grad():
            out = self.model(**kwargs, output_hidden_states=want_hidden)
        result: dict[str, torch.Tensor] = {}
        for n in names:
            if n == "logits" and self.task == "classification":
                result[n] = out.logits.float()
            elif n == "sentence_embedding" and self.task == "embedding":
                h = out.last_hidden_state.float()
                emb = masked_mean(h, mask) if self.pooling == "mean" else h[:, 0]
                result[n] = torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb
            elif (m := re.fullmatch(r"hidden_states\.(\d+)", n)) and int(m.group(1)) <= self.num_layers:
                result[n] = masked_mean(out.hidden_states[int(m.group(1))].float(), mask)
            else:
                raise ModelFileError("invalid_request", f"the teacher has no output {n!r}", "teacher_features")
        return result


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _probe_hf(teacher: HfTeacher) -> None:
    """Run one tokenised pair of sentences through the teacher; sets num_classes and output shapes."""
    from kdserve.service.serving import textio

    enc = textio.encode(teacher.tokenizer, ["kdserve checks this teacher.", "a second, longer sentence to pad"],
                        max_length=min(32, teacher.max_positions))
    batch = tuple(torch.from_numpy(a) for a in (enc.input_ids, enc.attention_mask, enc.token_type_ids))
    try:
        outputs = teacher.run(batch, teacher.output_names)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError("teacher_output_mismatch", f"the teacher fails on a tokenised sentence: {_first_line(exc)}")
    out = outputs[teacher.logits_name]
    if out.dim() != 2 or out.shape[0] != 2 or not torch.isfinite(out).all():
        raise ModelFileError("teacher_output_mismatch", f"the teacher's {teacher.logits_name} is not a finite "
                             f"[batch, width] tensor (got shape {list(out.shape)})")
    teacher.output_shapes = {n: list(o.shape[1:]) for n, o in outputs.items()}
    teacher.num_classes = int(out.shape[1]) if teacher.task == "classification" else 0
    if teacher.task == "embedding":
        teacher.hidden_size = int(out.shape[1])


@torch.no_grad()
def text_teacher_outputs(teacher: HfTeacher, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor,
                         feature: str | None = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's output (and the named feature) for every row, batched by length: rows are
    sorted by token count and each batch is cut to its longest row, so short sentences do not pay
    for the longest one. Results come back in the original row order."""
    names = [teacher.logits_name] + ([feature] if feature else [])
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True)
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(int(lengths[idx].max()), 1)
        part = teacher.run((ids[idx, :width], mask[idx, :width], types[idx, :width]), names)
        for n in names:
            outs[n].append(part[n].cpu())
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    joined = {n: torch.cat(v)[inverse] for n, v in outs.items()}
    return joined[teacher.logits_name], (joined[feature] if feature else None)


def load_teacher(path: Path, fmt: str | None = None, input_shape: Sequence[int] | None = None,
                 device: str = "cpu", task: str | None = None) -> Teacher:
    """Sniff, load and run one synthetic batch (a tokenised sentence for a text teacher); sets
    num_classes. Raises ModelFileError. `path` is the uploaded file, or the folder
    models.model_files.prepare() made of it (hf, onnx with external data; `fmt` says which)."""
    path = Path(path)
    if path.is_dir():
        if fmt not in ("hf", "onnx"):
            raise ModelFileError("unsupported_format", "only hf and onnx teachers are loaded from a folder", "format")
        detected = fmt
    else:
        detected = sniff(path).format
    if fmt and fmt != detected:
        raise ModelFileError("unsupported_format", f"format says {fmt!r} but the file is {detected}", "format")
    if detected not in SUPPORTED:
        raise ModelFileError("unsupported_format", f"teacher format {detected!r} is not supported yet", "format")
    if detected == "hf":
        hf_teacher = HfTeacher(Path(path), task, device)
        _probe_hf(hf_teacher)
        return hf_teacher
    if task is not None:
        raise ModelFileError("invalid_request", "task applies to Hugging Face folders only", "task")
    teacher: Teacher = (TorchScriptTeacher if detected == "torchscript" else OnnxTeacher)(Path(path), input_shape, device)
    batch = torch.zeros([2, *teacher.input_shape])
    try:
        if isinstance(teacher, TorchScriptTeacher):
            with torch.no_grad():
                teacher.discover_outputs(named_outputs(teacher.module(batch.to(teacher.device))))
        outputs = teacher.run(batch, teacher.output_names)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            "teacher_output_mismatch",
            f"the teacher fails on input of shape {list(batch.shape)}: {_first_line(exc)}",
            "input_shape",
        )
    out = outputs[teacher.logits_name]
    teacher.output_shapes = {n: list(o.shape[1:]) for n, o in outputs.items()}
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        raise ModelFileError(
            "teacher_output_mismatch", f"the teacher must return [batch, num_classes] logits, got shape {list(out.shape)}"
        )
    if not torch.isfinite(out).all():
        raise ModelFileError("teacher_output_mismatch", "the teacher returns NaN or inf on a zero batch")
    teacher.num_classes = int(out.shape[1])
    return teacher


@torch.no_grad()
def teacher_outputs(teacher: Teacher, x: torch.Tensor, feature: str | None = None,
                    batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's logits (and the named feature output) for every row of x, in one pass, on the CPU."""
    names = [teacher.logits_name] + ([feature] if feature else [])
    parts = [teacher.run(x[i : i + batch_size], names) for i in range(0, len(x), batch_size)]
    logits = torch.cat([p[teacher.logits_name].cpu() for p in parts])
    return logits, (torch.cat([p[feature].cpu() for p in parts]) if feature else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def describe(t: Teacher) -> dict[str, Any]:
    """The probe's answer for a loaded teacher (what the API stores with the teacher row)."""
    return {"format": t.format, "input_shape": t.input_shape, "input_dtype": t.input_dtype,
            "num_classes": t.num_classes, "num_parameters": t.num_parameters,
            "outputs": [{"name": n, "shape": t.output_shapes[n], "logits": n == t.logits_name} for n in t.output_names],
            "details": t.details() if isinstance(t, HfTeacher) else None}
