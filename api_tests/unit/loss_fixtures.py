"""Shared inputs for the loss tests: the worked example of docs/methods.md#worked-example and a builder of valid
inputs for every registered method (the extras each one requires included)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdserve.worker.losses import LossInputs, build_loss

# ---- docs/methods.md#worked-example (B = 3, C = 4) --------------------------------------------

S19 = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, 2.0, 1.0], [1.5, -0.5, 0.2, 0.8]]
T19 = [[2.0, 1.0, 0.0, -2.0], [0.5, -0.5, 3.0, 0.0], [2.5, 0.0, -1.0, 1.0]]
Y19 = [0, 2, 3]
U19 = [[0.5, 1.0, 0.0, -0.5], [0.2, 0.1, 1.5, 0.4], [1.0, 0.3, -0.2, 0.6]]  # USKD weak-head logits
Q19 = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.1, 0.7]]  # MCMI centroids

CE19 = 1.120558  # CE(s, y), mean
TOL = 1e-5  # the worked example's values are printed to 6 decimals


def s19(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(S19, dtype=dtype)


def t19(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(T19, dtype=dtype)


def y19() -> torch.Tensor:
    return torch.tensor(Y19)


def u19(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(U19, dtype=dtype)


def q19(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(Q19, dtype=dtype)


def inputs19(**kw) -> LossInputs:
    return LossInputs(student_logits=s19(), labels=y19(), teacher_logits=t19(), **kw)


# ---- a valid batch for any registered method ------------------------------------------------

# every registered method and the extras its loss requires
REQUIRES = {
    "ce": set(),
    "kd": set(),
    "rkl": set(),
    "jsd": set(),
    "sinkd": set(),
    "nkd": set(),
    "uskd": {"aux_logits"},
    "dkd": set(),
    "dist": set(),
    "pld": set(),
    "dhkd": {"aux_logits"},
    "pskd": {"prev_probs"},
    "fitnet": {"student_features", "teacher_features"},
    "lelp": {"teacher_features"},
    "embedding_mse": set(),
    "embedding_cosine": set(),
    "embedding_relational": set(),
}
# methods whose loss is undefined with a single class: they must raise ValueError
UNDEFINED_FOR_ONE_CLASS = {"nkd", "uskd", "dkd", "dist"}
# methods whose forward computes in float32 whatever the input (base.labelled_ce / kd.py)
FLOAT32_ONLY = {"ce", "kd"}
# methods with stop-gradient targets computed from the student's own outputs: finite differences
# see through the stop-gradient, so their gradcheck holds those targets fixed (test_losses_nkd.py)
SELF_DETACHED_TARGETS = {"uskd"}

LELP_SUBCLASSES = 2
STUDENT_FEAT, TEACHER_FEAT = 6, 8


def random_logits(b: int, c: int, gen: torch.Generator, extreme: bool) -> torch.Tensor:
    if extreme:
        # entries at ±1e4 (representable in fp16 and bf16), the rest ordinary
        x = torch.randn(b, c, generator=gen, dtype=torch.float64)
        big = torch.rand(b, c, generator=gen) < 0.6
        sign = torch.where(torch.rand(b, c, generator=gen) < 0.5, -1.0, 1.0).double()
        return torch.where(big, sign * 1e4, x)
    return 2.0 * torch.randn(b, c, generator=gen, dtype=torch.float64)


def make_labels(b: int, c: int, gen: torch.Generator, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    y = torch.randint(0, c, (b,), generator=gen)
    if mode == "unlabelled":
        return torch.full((b,), -1)
    if mode == "partial":
        y[::2] = -1
    return y


@dataclass
class Case:
    """A built loss, its differentiable leaves (float64 masters) and how to assemble LossInputs."""

    loss: torch.nn.Module
    leaves: dict[str, torch.Tensor]
    fixed: dict[str, object]

    def inputs(self, leaves: dict[str, torch.Tensor]) -> LossInputs:
        f = self.fixed
        extras = dict(f["extras"])
        for key in ("aux_logits", "student_features"):
            if key in leaves:
                extras[key] = leaves[key]
        return LossInputs(
            student_logits=leaves["student_logits"],
            labels=f["labels"],
            teacher_logits=f["teacher_logits"],
            epoch=f["epoch"],
            epochs=f["epochs"],
            extras=extras,
        )

    def run(self, dtype: torch.dtype, backward: bool = True):
        """Loss with every input cast to dtype; returns (loss, grads of the leaves)."""
        leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in self.leaves.items()}
        fixed = self.fixed
        cast = {
            "teacher_logits": None if fixed["teacher_logits"] is None else fixed["teacher_logits"].to(dtype),
            "extras": {k: v.to(dtype) for k, v in fixed["extras"].items()},
        }
        case = Case(self.loss, leaves, {**fixed, **cast})
        value = self.loss(case.inputs(leaves))
        grads = {}
        if backward:
            value.backward()
            grads = {k: v.grad for k, v in leaves.items()}
        return value, grads


def build_case(
    name: str,
    b: int = 4,
    c: int = 5,
    labels: str = "all",
    extreme: bool = False,
    seed: int = 0,
    params: dict | None = None,
) -> Case:
    """Random, valid inputs for method `name` (float64 masters); extras as its `requires` says."""
    gen = torch.Generator().manual_seed(seed)
    if name == "lelp":
        params = {"num_subclasses": LELP_SUBCLASSES, **(params or {})}
    loss = build_loss(name, params)
    width = c * LELP_SUBCLASSES if name == "lelp" else c
    leaves = {"student_logits": random_logits(b, width, gen, extreme)}
    teacher = random_logits(b, c, gen, extreme)
    extras: dict[str, torch.Tensor] = {}
    y = make_labels(b, c, gen, labels)
    if "aux_logits" in REQUIRES[name]:
        leaves["aux_logits"] = random_logits(b, c, gen, extreme)
    if "prev_probs" in REQUIRES[name]:
        extras["prev_probs"] = torch.softmax(random_logits(b, c, gen, extreme), dim=1)
    if name == "fitnet":
        leaves["student_features"] = torch.randn(b, STUDENT_FEAT, generator=gen, dtype=torch.float64)
        extras["teacher_features"] = torch.randn(b, TEACHER_FEAT, generator=gen, dtype=torch.float64)
        loss.setup((b, STUDENT_FEAT), (b, TEACHER_FEAT))
        loss.double()
    if name == "lelp":
        d = c + LELP_SUBCLASSES + 5
        feats = torch.randn(64, d, generator=gen, dtype=torch.float64)
        w = torch.randn(c, d, generator=gen, dtype=torch.float64)
        fit_labels = torch.randint(0, c, (64,), generator=gen)
        loss.fit(feats, feats @ w.t(), fit_labels)
        extras["teacher_features"] = torch.randn(b, d, generator=gen, dtype=torch.float64)
    needs_teacher = name not in {"ce", "uskd", "pskd"}
    fixed = {
        "labels": y,
        "teacher_logits": teacher if needs_teacher else None,
        "epoch": 3,
        "epochs": 10,
        "extras": extras,
    }
    return Case(loss, leaves, fixed)


def assert_finite(value: torch.Tensor, grads: dict[str, torch.Tensor | None]) -> None:
    assert value.dim() == 0, f"loss must be a scalar, got shape {tuple(value.shape)}"
    assert torch.isfinite(value), f"loss not finite: {value}"
    for key, g in grads.items():
        assert g is not None, f"no gradient reached {key}"
        assert torch.isfinite(g.float()).all(), f"gradient of {key} not finite"
