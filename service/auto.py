"""A job that leaves out `student` or `method`: what the service picks, and why (torch-free: the
API resolves both when the job is created, and the job, its events and its card show the choice).

Student: the largest of a family of students that fits the parameter budget — `student.auto.
max_params`, or the teacher's parameters divided by `student.auto.ratio` (default 10). The family
follows the input: an MLP for a flat feature vector, a CNN for an input with an image shape
([C, H, W] or [H, W]), for text a `layer_dropped` copy of a BERT-family teacher (every other layer)
or else a small `transformer`. Parameter counts are service/budgets.py's, which match the real
modules exactly for the tensor students.

Method: for a classifier teacher over tensors, a short trial between `kd` and `dist` (neither needs
labels): the worker trains both side by side at each of the learning rates "auto" tries and keeps
the better half at each rung of the same successive halving, so the method and the rate are chosen
together on the job's own validation split (bench/results/auto.md: `dist` wins on digits, `kd` on
breast_cancer, so neither is the right fixed default). `kd` for a text classifier (its students are
too costly to train twice over), `embedding_cosine` for a sentence-embedding teacher, and `ce`
without a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdserve.service import budgets
from kdserve.service.spec.architectures import ARCHITECTURES, BERT_LAYOUT_TYPES, TextTeacher
from kdserve.service.spec.jobs import validate_params

DEFAULT_RATIO = 10  # teacher parameters per student parameter when neither max_params nor ratio is given
NO_TEACHER_MAX_PARAMS = 100_000  # the budget of a job without a teacher (ce on the labels alone)
MLP_WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
CNN_WIDTHS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TRANSFORMER_SHAPES = ((1, 64, 2), (2, 64, 2), (2, 128, 2), (4, 128, 4), (4, 256, 4), (6, 256, 4), (6, 384, 6))


class AutoError(ValueError):
    """No student of the family fits the budget: `param` names what to change."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class Picked:
    architecture: str
    params: dict
    parameters: int | None  # None where the count is not known before the worker builds it (text)
    max_params: int | None
    reason: str


def budget_of(max_params: int | None, ratio: float | None, teacher_parameters: int | None) -> tuple[int, str]:
    """The parameter budget and how it was set."""
    if max_params is not None:
        return max_params, f"student.auto.max_params {max_params:,}"
    if not teacher_parameters:
        return NO_TEACHER_MAX_PARAMS, f"{NO_TEACHER_MAX_PARAMS:,} parameters (no teacher to scale from)"
    r = ratio if ratio is not None else DEFAULT_RATIO
    return max(1, int(teacher_parameters / r)), f"the teacher's {teacher_parameters:,} parameters / {r:g}"


def _largest(candidates: list[tuple[str, dict]], shapes: budgets.Shapes, budget: int) -> tuple[str, dict, int] | None:
    sized = []
    for arch, given in candidates:
        params = validate_params(ARCHITECTURES[arch].params, given, "student.params")
        est = budgets.estimate(arch, params, shapes)
        if est is not None and est.parameters <= budget:
            sized.append((est.parameters, arch, params))
    if not sized:
        return None
    n, arch, params = max(sized, key=lambda t: t[0])
    return arch, params, n


def tensor_family(feature_shape: list[int]) -> tuple[str, list[tuple[str, dict]]]:
    """The students a numeric input is picked from, smallest first within each depth."""
    if len(feature_shape) >= 2:
        return "a CNN (the input is an image)", [("cnn", {"channels": [c, 2 * c]}) for c in CNN_WIDTHS]
    return "an MLP (the input is a feature vector)", ([("mlp", {"hidden_sizes": [w]}) for w in MLP_WIDTHS]
                                                      + [("mlp", {"hidden_sizes": [w, w]}) for w in MLP_WIDTHS if w >= 64])


def pick_student(feature_shape: list[int], width: int, budget: int, why: str, text: TextTeacher | None,
                 soft_budget: bool = False) -> Picked:
    """The student for this input and output width within `budget` parameters. `soft_budget`: the
    budget is only the default ratio to a teacher (nobody asked for it), so when nothing fits, the
    family's smallest student is taken rather than a 422 for a job that set nothing."""
    if text is not None:
        if text.model_type in BERT_LAYOUT_TYPES and text.num_layers >= 2:
            params = validate_params(ARCHITECTURES["layer_dropped"].params, {"every": 2}, "student.params")
            return Picked("layer_dropped", params, None, None,
                          f"layer_dropped: every other layer of the {text.num_layers}-layer {text.model_type} teacher, "
                          "initialised from its weights (the budget applies to vector and tensor students only)")
        candidates = [("transformer", {"layers": n, "hidden": h, "heads": a}) for n, h, a in TRANSFORMER_SHAPES]
        shapes = budgets.Shapes([], width, 0, 1, max_length=128, teacher_details={"vocab_size": text.vocab_size,
                                                                                    "max_positions": text.max_positions})
        found = _largest(candidates, shapes, budget)
        if found is None:
            raise AutoError(f"no transformer student fits {budget:,} parameters (the token table alone is "
                            f"{text.vocab_size:,} rows): raise student.auto.max_params or name a student", "student.auto")
        arch, params, n = found
        return Picked(arch, params, n, budget, f"{arch} {params['layers']}×{params['hidden']}: the largest of the "
                      f"family within {budget:,} parameters ({why})")
    shapes = budgets.Shapes(list(feature_shape), width, 0, 1)
    family, candidates = tensor_family(feature_shape)
    found = _largest(candidates, shapes, budget)
    if found is None:
        smallest = min(e.parameters for a, p in candidates
                       if (e := budgets.estimate(a, validate_params(ARCHITECTURES[a].params, p, "student.params"),
                                                 shapes)) is not None)
        if soft_budget:
            arch, params, n = _largest(candidates, shapes, smallest)
            shape = params.get("hidden_sizes") or params.get("channels")
            return Picked(arch, params, n, budget, f"{arch} {shape}, {n:,} parameters: the smallest of {family}, over "
                          f"the default budget of {budget:,} ({why}) because the teacher is already that small")
        raise AutoError(f"the smallest student of {family} has {smallest:,} parameters, more than the budget of "
                        f"{budget:,} ({why}): raise student.auto.max_params or lower student.auto.ratio",
                        "student.auto")
    arch, params, n = found
    shape = params.get("hidden_sizes") or params.get("channels")
    return Picked(arch, params, n, budget, f"{arch} {shape}, {n:,} parameters: the largest of {family} within "
                  f"{budget:,} parameters ({why})")


TRIAL_METHODS = ("kd", "dist")  # logit-only methods: a trial's arms differ in nothing but the loss


def pick_method(has_teacher: bool, embedding_teacher: bool, text_teacher: bool = False
                ) -> tuple[str, str, list[str] | None]:
    """The method for a job that names none, why, and the candidates of a trial (None: no trial;
    the worker then trains `name` as if it had been asked for)."""
    if not has_teacher:
        return "ce", "ce: there is no teacher, so the student learns from the labels alone", None
    if embedding_teacher:
        return "embedding_cosine", ("embedding_cosine: the teacher is a sentence-embedding model, and the student "
                                    "learns its vectors' directions (what cosine search uses)"), None
    if text_teacher:
        return "kd", ("kd: the default for a text classifier teacher, with or without labels (its KL term needs "
                      "none)"), None
    names = " or ".join(TRIAL_METHODS)
    return TRIAL_METHODS[0], (f"{names}, whichever a short trial on this job's validation split favours: both train "
                              "side by side at the learning rates tried, and the better half goes on at each rung "
                              "(on the defaults benchmark each won on some task, so neither is a safe fixed "
                              "choice)"), list(TRIAL_METHODS)
