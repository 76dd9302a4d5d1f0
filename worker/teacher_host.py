"""The program inside the teacher jail: `python -I -B -m kdserve.worker.teacher_host` (see service/sandbox/jail.py).

It limits itself (rlimits, seccomp) before it reads anything, then answers requests on its
stdin, one at a time, on its stdout (framed messages, service/sandbox/jail.py):

    {"op": "load", "model": PATH, "format", "input_shape", "task", "device", "out": DIR, "files": bool}
        → the probe's answer: {"ok": true, "format", "input_shape", "num_classes", "outputs", …}
          (hf with files: tokenizer.json, config.json and the tokenizer files written to DIR)
    {"op": "run", "names": [...]} + [x] or [input_ids, attention_mask, token_type_ids]
        → {"ok": true} + one float32 array per name
    {"op": "time", "repeats": N, "budget_s": S} + the same arrays
        → {"ok": true, "ms": the median ms of one forward pass, in the teacher's own runtime}
    {"op": "state_dict", "out": DIR}        (hf) → the weights as DIR/state_dict.safetensors
    {"op": "refine", "params", "seed", "out": DIR} + [x, y]
        → {"event": "epoch", …} per epoch, then {"ok": true, "file": "teacher.pt"} (TorchScript, MCMI)

A refused file answers {"ok": false, "code", "message", "param"}; anything else ends the process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path


def enter_jail() -> None:
    """Limits first, from KDSERVE_JAIL_LIMITS (soft = hard: they cannot be raised again), then the
    seccomp filter. Nothing of the model has been read yet."""
    limits = json.loads(os.environ.get("KDSERVE_JAIL_LIMITS") or "{}")
    if limits.get("memory_bytes"):
        resource.setrlimit(resource.RLIMIT_DATA, (limits["memory_bytes"], limits["memory_bytes"]))
    if limits.get("cpu_seconds"):
        cpu = int(limits["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # SIGXCPU (ignored by a PID 1), SIGKILL 5 s later
    if limits.get("file_bytes"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from kdserve.service.sandbox.jail import install_seccomp

    install_seccomp()


class Host:
    def __init__(self):
        self.teacher = None

    def load(self, req: dict) -> dict:
        import torch

        from kdserve.models.teachers import HfTeacher, describe, load_teacher

        device = req.get("device") or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        self.teacher = load_teacher(Path(req["model"]), req.get("format"), req.get("input_shape"), device,
                                    req.get("task"))
        answer = dict(describe(self.teacher), ok=True, device=device)
        if req.get("files") and isinstance(self.teacher, HfTeacher):
            self.teacher.write_files(Path(req["out"]))
        return answer

    def _inputs(self, arrays: list):
        import numpy as np
        import torch

        if self.teacher is None:
            raise RuntimeError("run before load")
        if self.teacher.format == "hf":
            return tuple(torch.from_numpy(a.astype(np.int64, copy=False)) for a in arrays)
        return torch.from_numpy(arrays[0].astype(np.float32, copy=False))

    def run(self, req: dict, arrays: list) -> tuple[dict, list]:
        out = self.teacher.run(self._inputs(arrays), list(req["names"]))
        return {"ok": True}, [out[n].detach().cpu().float().numpy() for n in req["names"]]

    def time(self, req: dict, arrays: list) -> dict:
        """The median ms of one forward pass on these rows, in the teacher's own runtime: the
        pipe to the worker is not counted, so the card compares runtimes, not transports."""
        from kdserve.models.export import median_ms

        x, names = self._inputs(arrays), [self.teacher.logits_name]
        ms = median_ms(lambda: self.teacher.run(x, names), int(req.get("repeats", 50)),
                       float(req.get("budget_s", 1.0)), warmup=2)
        return {"ok": True, "ms": ms}

    def state_dict(self, req: dict) -> dict:
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous() for k, v in self.teacher.model.state_dict().items()}
        save_file(weights, str(Path(req["out"]) / "state_dict.safetensors"))
        return {"ok": True, "file": "state_dict.safetensors"}

    def refine(self, req: dict, arrays: list, send) -> dict:
        import torch

        from kdserve.models.teachers import TorchScriptTeacher
        from kdserve.worker.losses.mcmi import MCMIParams
        from kdserve.worker.refine import refine_mcmi

        if not isinstance(self.teacher, TorchScriptTeacher):
            return {"ok": False, "code": "invalid_request", "message": "only a TorchScript teacher can be refined",
                    "param": "teacher_refinement"}
        x, y = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]).long()
        params = MCMIParams.model_validate(req["params"])

        def on_epoch(epoch: int, loss: float, cmi: float) -> None:
            send({"event": "epoch", "epoch": epoch, "loss": loss, "cmi": cmi})

        refine_mcmi(self.teacher, x, y, params, torch.device(self.teacher.device), int(req["seed"]), on_epoch)
        self.teacher.module.cpu().save(str(Path(req["out"]) / "teacher.pt"))
        return {"ok": True, "file": "teacher.pt"}


def serve(channel, send) -> None:
    from kdserve.service.sandbox.sniff import ModelFileError

    host = Host()
    while True:
        try:
            req, arrays = channel.receive(None, 1 << 40)
        except EOFError:
            return
        op = req.get("op")
        try:
            if op == "load":
                send(host.load(req))
            elif op == "run":
                send(*host.run(req, arrays))
            elif op == "time":
                send(host.time(req, arrays))
            elif op == "state_dict":
                send(host.state_dict(req))
            elif op == "refine":
                send(host.refine(req, arrays, send))
            else:
                send({"ok": False, "code": "invalid_request", "message": f"unknown op {op!r}", "param": None})
        except ModelFileError as exc:
            send({"ok": False, "code": exc.code, "message": exc.message, "param": exc.param})


def main() -> int:
    # The protocol owns the original stdin/stdout; anything a library prints goes to stderr.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    enter_jail()

    import torch

    from kdserve.service.sandbox.jail import Channel

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    channel = Channel(proto_in, proto_out)
    serve(channel, channel.send)
    return 0


if __name__ == "__main__":
    sys.exit(main())
