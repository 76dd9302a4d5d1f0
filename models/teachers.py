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
PROB_FLOOR = 1e-12  # a probability of 0 (softmax underflow) becomes log 1e-12, a very unlikely class
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

    # What the loader adapted so that a stock export runs as a logits teacher, said in the answer
    # (the teacher's details): {"probabilities": …, "batch": …, "dtype": …} and their messages.
    adaptations: dict[str, str]
    gives_probabilities: bool = False  # outputs are softmax probabilities: run() answers their log

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self._run(x, names)
        if self.gives_probabilities and self.logits_name in out:
            # log p is a logit vector (softmax(log p) = p): every loss and the argmax see the same classes
            out[self.logits_name] = out[self.logits_name].clamp_min(PROB_FLOOR).log()
        return out

    def _run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise TypeError

    def adapt(self, key: str, message: str) -> None:
        self.adaptations = {**getattr(self, "adaptations", {}), key: message}

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
            raise ModelFileError("unsupported_format", f"TorchScript archive does not load: {_cause(exc)}")
        from kdserve.models.script_graph import check_module

        problem = check_module(self.module)  # the compiler's view, after the source scan of sniff()
        if problem:
            raise ModelFileError("unsafe_file", f"refused before running: {problem}")
        self.device = device
        self.num_parameters = int(sum(p.numel() for p in self.module.parameters()))
        self.input_shape = list(input_shape) if input_shape else self._guess_input_shape()
        self.output_names, self.logits_name = [], ""
        # A model saved in float64 (numpy-born data, `.double()`) expects float64 inputs: it gets them.
        floats = {p.dtype for p in self.module.parameters() if p.dtype.is_floating_point}
        self.weight_dtype = floats.pop() if len(floats) == 1 else torch.float32
        if self.weight_dtype != torch.float32:
            self.adapt("dtype", f"the model's weights are {str(self.weight_dtype).removeprefix('torch.')}: inputs are "
                       "cast to it and outputs back to float32 (model.float() before saving avoids the casts)")

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

    def _run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = named_outputs(self.module(x.to(self.device, self.weight_dtype, non_blocking=True)))
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
            raise ModelFileError("unsupported_format", f"not a valid ONNX model: {_cause(exc)}")
        self.num_parameters = int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            source = str(model_file) if folder else proto.SerializeToString()
            self.session = ort.InferenceSession(source, providers=providers)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"onnxruntime cannot run this model: {_cause(exc)}")
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
        self.row_by_row = False
        if inputs[0].shape and inputs[0].shape[0] == 1:
            self._free_batch(proto, model_file.parent if folder else None, providers)

    def _free_batch(self, proto, data_dir: Path | None, providers: list[str]) -> None:
        """A graph exported with a fixed batch of 1 (torch.onnx.export traces the example input's
        shape unless told `dynamic_axes`/`dynamic_shapes`): its batch axis is made symbolic when the
        graph then runs a batch of 2 with batch-sized outputs, else the model is run row by row."""
        import onnx
        import onnxruntime as ort
        from onnx.external_data_helper import load_external_data_for_model

        edited = onnx.ModelProto()
        edited.CopyFrom(proto)
        if data_dir is not None:  # the checked data files of the upload, nothing else
            load_external_data_for_model(edited, str(data_dir))
        for value in [*edited.graph.input, *edited.graph.output]:
            dims = value.type.tensor_type.shape.dim
            if len(dims) and dims[0].dim_value == 1:
                dims[0].Clear()
                dims[0].dim_param = "batch"
        del edited.graph.value_info[:]  # shapes inferred at batch 1 would contradict a batch of 2
        try:
            session = ort.InferenceSession(edited.SerializeToString(), providers=providers)
            outs = session.run(None, {self.input_name: np.zeros([2, *self.input_shape], self.np_dtype)})
            ok = all(np.ndim(o) >= 1 and np.shape(o)[0] == 2 for o in outs)
        except Exception:
            ok = False
        if ok:
            self.session = session
            self.adapt("batch", "the graph was exported with a fixed batch of 1: its batch axis was made symbolic "
                       f"(export with {self._dynamic_hint()} to skip this)")
        else:
            self.row_by_row = True
            self.adapt("batch", "the graph was exported with a fixed batch of 1 and does not run larger batches: it is "
                       f"run one row at a time, which is slower (export with {self._dynamic_hint()})")

    def _dynamic_hint(self) -> str:
        return f"dynamic_axes={{{self.input_name!r}: {{0: 'batch'}}}} or dynamo=True with dynamic_shapes"

    def _run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        arr = x.detach().cpu().numpy().astype(self.np_dtype, copy=False)
        if self.row_by_row:
            rows = [self.session.run(list(names), {self.input_name: arr[i : i + 1]}) for i in range(len(arr))]
            outs = [np.concatenate([r[k] for r in rows]) for k in range(len(names))]
        else:
            outs = self.session.run(list(names), {self.input_name: arr})
        return {n: torch.from_numpy(np.asarray(o)).float() for n, o in zip(names, outs)}


# ---- Hugging Face folders ----------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError("unsupported_format", f"{path.name} is not valid JSON: {_cause(exc)}")
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
                                 f"(model_type {self.model_type or '?'}; custom code is never run): {_cause(exc)}")
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
            raise ModelFileError("unsupported_format", f"the tokenizer does not load: {_cause(exc)}")
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
        raise ModelFileError("teacher_output_mismatch", f"the teacher fails on a tokenised sentence: {_cause(exc)}")
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
                teacher.discover_outputs(named_outputs(teacher.module(batch.to(teacher.device, teacher.weight_dtype))))
        outputs = teacher.run(batch, teacher.output_names)
        teacher.gives_probabilities = _probabilities(outputs[teacher.logits_name]) and _probabilities(
            teacher.run(torch.randn([4, *teacher.input_shape], generator=torch.Generator().manual_seed(0)),
                        [teacher.logits_name])[teacher.logits_name])
    except ModelFileError:
        raise
    except Exception as exc:
        shape = ",".join(str(d) for d in teacher.input_shape)
        raise ModelFileError(
            "teacher_output_mismatch",
            f"the teacher fails on a batch of shape {list(batch.shape)} (2 rows of input_shape {teacher.input_shape}): "
            f"{_cause(exc)}. If the model takes another per-row shape, name it: input_shape [{shape}] in the form "
            f"(CLI: --input-shape {shape})",
            "input_shape",
        )
    if teacher.gives_probabilities:
        teacher.adapt("probabilities", "the outputs are probabilities (each row is in [0, 1] and sums to 1, as after a "
                      "softmax): the teacher's logits are taken as their log, which gives the same distribution")
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


def _probabilities(out: torch.Tensor) -> bool:
    """Rows of a softmax: at least two classes, every value in [0, 1], each row summing to 1."""
    return out.dim() == 2 and out.shape[1] >= 2 and bool(torch.isfinite(out).all()) and bool(
        (out >= 0).all() and (out <= 1).all() and torch.allclose(out.double().sum(1), torch.ones(len(out), dtype=torch.float64), atol=1e-4))


def _cause(exc: BaseException) -> str:
    """What went wrong, in one line: the last "SomethingError: …" line of a multi-line message
    (TorchScript's interpreter puts its traceback first and the cause last), else the first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    text = causes[-1] if causes else (" ".join(lines[:3]) if lines else type(exc).__name__)
    return text[:600]


def describe(t: Teacher) -> dict[str, Any]:
    """The probe's answer for a loaded teacher (what the API stores with the teacher row)."""
    adapted = getattr(t, "adaptations", {})
    details = t.details() if isinstance(t, HfTeacher) else ({"adaptations": adapted} if adapted else {})
    if isinstance(t, OnnxTeacher):
        details["input_name"] = t.input_name  # the student takes the same name (a drop-in replacement)
    return {"format": t.format, "input_shape": t.input_shape, "input_dtype": t.input_dtype,
            "num_classes": t.num_classes, "num_parameters": t.num_parameters,
            "outputs": [{"name": n, "shape": t.output_shapes[n], "logits": n == t.logits_name} for n in t.output_names],
            "details": details or None}
