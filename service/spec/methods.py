"""Distillation methods as a job spec names them: each method's params schema and the facts the
API checks a job against (needs a teacher, needs labels, compares logits or vectors, the extras it
requires). Torch-free: the API validates `method.params` with these classes at POST time, and the
worker's losses (kdserve.worker.losses) bind to them by name and validate the same params again.

Adding a method is a params class and a `define_method(...)` here, and a loss in
worker/losses/ decorated with `@register_method("<name>")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class MethodParams(BaseModel):
    """Base of every method's params schema. Unknown params are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    reference: str
    needs_teacher: bool
    needs_labels: bool
    params: type[MethodParams]
    # "logits": class logits through a softmax (needs a classification teacher); "vectors": any
    # output vector compared as it is (sentence embeddings, or logits regressed as vectors).
    compares: str = "logits"
    # extras the trainer must provide (kdserve.worker.losses.DistillLoss documents them)
    requires: frozenset[str] = frozenset()

    def catalog_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "needs_teacher": self.needs_teacher,
            "needs_labels": self.needs_labels,
            "compares": self.compares,
            "requires": sorted(self.requires),
            "params": self.params.model_json_schema(),
            "reference": self.reference,
        }


METHODS: dict[str, MethodSpec] = {}


def define_method(name: str, *, params: type[MethodParams], description: str, reference: str,
                  needs_teacher: bool = True, needs_labels: bool = False, compares: str = "logits",
                  requires: tuple[str, ...] = ()) -> MethodSpec:
    if name in METHODS:
        raise ValueError(f"method {name!r} defined twice")
    METHODS[name] = MethodSpec(name, description, reference, needs_teacher, needs_labels, params, compares,
                               frozenset(requires))
    return METHODS[name]


class DHKDParams(MethodParams):
    temperature: float = Field(2.0, gt=0, description="temperature T of the binary KL (T² scaling applied)")
    alpha: float = Field(
        1.0, ge=0, description="weight α of the binary-KL loss on the auxiliary head (1 CIFAR, 0.1 ImageNet)"
    )
    gamma: float = Field(1.0, ge=0, description="weight γ of the CE on the main head")
    binary_kl: Literal["norm", "plain"] = Field(
        "norm", description="'norm': BinaryKL-Norm KL(Bern(½) ‖ Bern(σ((z−t)/T))) as DHKD trains; 'plain': BinaryKL"
    )
    kd_stop_epoch: int | None = Field(
        None,
        ge=0,
        description="0-based epoch from which the binary-KL weight is 0 (the ImageNet recipe uses 50); None = never",
    )


define_method(
    "dhkd",
    params=DHKDParams,
    description="Dual-Head KD: γ·CE(z¹, y) on the main head + α·T²·mean_i Σ_c KL(Bern(½) ‖ Bern(σ((z²−t)/T))) on an "
    "auxiliary head z² (extras 'aux_logits' [B, C], a second head on the same pooled feature, never used for "
    "prediction). Gradient alignment is left to the trainer (parts()). Labels are needed: the main head learns from CE "
    "alone; unlabelled samples only reach the auxiliary head.",
    reference="Yang et al. 2024, Dual-Head Knowledge Distillation, arXiv:2411.08937; docs/methods.md#dhkd",
    needs_labels=True,
    requires=("aux_logits",),
)


class DISTParams(MethodParams):
    temperature: float = Field(
        4.0, gt=0, description="temperature τ (4 on CIFAR-100, 1 on ImageNet); τ² scales both terms"
    )
    beta: float = Field(2.0, ge=0, description="weight β of the inter-class relation term (effective paper weight 2)")
    gamma: float = Field(2.0, ge=0, description="weight γ of the intra-class relation term (effective paper weight 2)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the label cross-entropy")
    eps: float = Field(1e-8, gt=0, description="ε added to the product of norms in the Pearson correlation")


define_method(
    "dist",
    params=DISTParams,
    description="DIST: w_ce·CE(s, y) + τ²·(β·(1 − mean_i Pearson(p^S_i, p^T_i)) + γ·(1 − mean_c Pearson over the batch "
    "of class c)), p = softmax(·/τ). Matches relations only, for a much stronger teacher. Needs batches of ≥ 3 for the "
    "intra-class term to be informative. Unlabelled samples contribute the relation terms only.",
    reference="Huang et al. 2022, Knowledge Distillation from A Stronger Teacher, arXiv:2205.10536; docs/methods.md#dist",
)


class DivergenceParams(MethodParams):
    temperature: float = Field(
        1.0, gt=0, description="softening temperature τ of both distributions (τ = 1 as KD_generalization's RevKD)"
    )
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the τ²-scaled divergence; CE gets 1 − alpha")


define_method(
    "rkl",
    params=DivergenceParams,
    description="Reverse-KL KD (mode-seeking): (1−α)·CE(s, y) + α·τ²·KL(softmax(s/τ) ‖ softmax(t/τ)), batchmean. "
    "Unlabelled samples contribute the divergence term only.",
    reference="docs/methods.md#rkl; Hinton et al. 2015 arXiv:1503.02531 (τ² convention); KD_generalization RevKD",
)


define_method(
    "jsd",
    params=DivergenceParams,
    description="Jensen–Shannon KD (symmetric, bounded by log 2): (1−α)·CE(s, y) + α·τ²·JS(p^T_τ, p^S_τ) with "
    "m = ½(p^T + p^S) mixed in probability space, batchmean. Unlabelled samples contribute the JS term only.",
    reference="docs/methods.md#jsd; SinKD arXiv:2402.17110 (JS as a KD baseline)",
)


class DKDParams(MethodParams):
    alpha: float = Field(1.0, ge=0, description="weight α of TCKD (target-class KD)")
    beta: float = Field(
        2.0, ge=0, description="weight β of NCKD (non-target KD); 2 re-checked for small students "
        "(bench/results/method_defaults.md), 8 in the CIFAR-100 recipe, 0.5 on ImageNet R34→R18"
    )
    temperature: float = Field(4.0, gt=0, description="temperature τ of both parts (τ² scaling applied)")
    warmup: int = Field(
        20, ge=0, description="epochs of linear warm-up of the DKD term: weight min((epoch+1)/warmup, 1); 0 = none"
    )
    ce_weight: float = Field(1.0, ge=0, description="weight of the label cross-entropy")


define_method(
    "dkd",
    params=DKDParams,
    description="Decoupled KD: w_ce·CE(s, y) + min((epoch+1)/warmup, 1)·τ²·mean_i(α·TCKD_i + β·NCKD_i), TCKD = binary "
    "target-vs-rest KL, NCKD = KL between the softmaxes over the non-target classes. Unlabelled samples: no CE, and "
    "the teacher's argmax is their target class.",
    reference="Zhao et al. 2022, Decoupled Knowledge Distillation, arXiv:2203.08679; docs/methods.md#dkd",
)


class EmbeddingMSEParams(MethodParams):
    pass


define_method(
    "embedding_mse",
    params=EmbeddingMSEParams,
    description="Mean squared error between the student's and the teacher's output vectors, averaged over every "
    "element: (1/(B·D)) Σ‖s − t‖². For sentence-embedding teachers; on logits it is Ba & Caruana's logit regression.",
    reference="Reimers & Gurevych 2020, Making Monolingual Sentence Embeddings Multilingual using Knowledge "
    "Distillation, arXiv:2004.09813",
    compares="vectors",
)


class EmbeddingCosineParams(MethodParams):
    pass


define_method(
    "embedding_cosine",
    params=EmbeddingCosineParams,
    description="One minus the cosine similarity between the student's and the teacher's vectors, averaged over "
    "the batch: (1/B) Σ (1 − cos(s, t)). Ignores the vectors' norms.",
    reference="Sanh et al. 2019, DistilBERT (cosine embedding loss), arXiv:1910.01108",
    compares="vectors",
)


class EmbeddingRelationalParams(MethodParams):
    relational_weight: float = Field(1.0, ge=0, description="weight of the similarity-matrix term (1/B²)Σ(S_s − S_t)²")
    cosine_weight: float = Field(
        1.0, ge=0, description="weight of the pointwise 1 − cos(s, t) term; 0 = relational only (the student's space "
        "may then be any rotation of the teacher's)",
    )


define_method(
    "embedding_relational",
    params=EmbeddingRelationalParams,
    description="Match the batch's cosine-similarity matrix: w_rel·(1/B²)Σ_ij(ŝ_i·ŝ_j − t̂_i·t̂_j)² + "
    "w_cos·(1/B)Σ(1 − cos(s_i, t_i)). Keeps the neighbourhood structure retrieval depends on.",
    reference="Tung & Mori 2019, Similarity-Preserving Knowledge Distillation, arXiv:1907.09682 (on normalised "
    "embeddings); Park et al. 2019, Relational Knowledge Distillation, arXiv:1904.05068",
    compares="vectors",
)


class FitNetParams(MethodParams):
    hint_weight: float = Field(100.0, ge=0, description="weight β of the hint MSE (mean over all elements)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the label cross-entropy")
    kd_weight: float = Field(
        0.0, ge=0, description="weight of an optional Hinton KD term τ²·KL(p^T_τ ‖ p^S_τ); 0 = none"
    )
    temperature: float = Field(4.0, gt=0, description="temperature τ of the optional KD term")
    student_layer: int = Field(
        -1, ge=-1, le=63,
        description="index of the student body module whose output is the hint (-1: the penultimate features)",
    )


define_method(
    "fitnet",
    params=FitNetParams,
    description="FitNets hints: w_ce·CE(s, y) + β·MSE_mean(r(F_S), F_T) (+ w_kd·τ²·KL KD when kd_weight > 0), with a "
    "learned regressor r (Linear for [B, D] / [B, L, D] features, mdistiller's ConvReg for [B, C, H, W]) owned by the "
    "loss. Needs extras 'student_features' and 'teacher_features' (one hint layer each). Unlabelled samples "
    "contribute the hint (and KD) terms only.",
    reference="Romero et al. 2015, FitNets: Hints for Thin Deep Nets, arXiv:1412.6550; docs/methods.md#fitnet",
    requires=("student_features", "teacher_features",),
)


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0, description="softening temperature τ of both distributions")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the τ²-scaled KL term; CE gets 1 − alpha")


define_method(
    "kd",
    params=KDParams,
    description="Hinton KD: (1−α)·CE(s, y) + α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), batchmean. "
    "Unlabelled samples contribute the KL term only.",
    reference="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
)


class CEParams(MethodParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")


define_method(
    "ce",
    params=CEParams,
    description="Plain supervised training on the labels, no teacher: the baseline every method is compared with.",
    reference="—",
    needs_teacher=False,
    needs_labels=True,
)


class LELPParams(MethodParams):
    num_subclasses: int = Field(
        4, ge=2, le=64, description="pseudo-subclasses S per class (not pinned by the paper: grid-searched)"
    )
    subclass_temperature: float = Field(
        1.0,
        gt=0,
        description="temperature β of the softmax over a class's standardised projections (grid-searched in the paper)",
    )
    temperature: float = Field(
        1.0, gt=0, description="temperature τ of the class part and of the student softmax (τ² scaling)"
    )
    alpha: float = Field(
        1.0,
        ge=0,
        le=1,
        description="weight of the subclass KL; CE on the aggregated class logits gets 1 − alpha "
        "(1 = pure distillation)",
    )
    seed: int = Field(0, ge=0, description="seed of the random rotations")


define_method(
    "lelp",
    params=LELPParams,
    description="LELP: each class is split into S pseudo-subclasses by the teacher's final-layer embedding projected "
    "on the null space of its output weights (per-class PCA, top S directions, seeded random rotation): P^T(c,k) = "
    "softmax(t/τ)_c·softmax_k(projection/β). The student has an S·C-way head (class logits = logsumexp over "
    "subclasses) and learns (1−α)·CE + α·τ²·KL over the S·C subclasses. Needs extras 'teacher_features' [B, d] and "
    "a fit() pass over the training set first. Meant for few-class problems.",
    reference="Loo, Iliopoulos, Hu, Vee 2024, Linear Projections of Teacher Embeddings for Few-Class Distillation, "
    "arXiv:2409.20449; docs/methods.md#lelp",
    requires=("teacher_features",),
)


class NKDParams(MethodParams):
    temperature: float = Field(
        3.0, gt=0, description="temperature τ of the non-target term (3 on CIFAR-100; 1 in the ImageNet configs)"
    )
    gamma: float = Field(3.5, ge=0, description="weight γ of the non-target term (3.5 on CIFAR-100; 1.5 on ImageNet)")


define_method(
    "nkd",
    params=NKDParams,
    description="Normalized KD: CE(s, y) − mean_i p^T_y·log p^S_y (τ = 1, teacher weight detached) − γτ²·mean_i "
    "Σ_{c≠y} q̂^T_c log q̂^S_c, q̂ = softmax over the non-target logits / τ (CE form, so it does not reach 0). "
    "Unlabelled samples: no CE, and the teacher's argmax is their target class. Defaults are the CIFAR-100 config.",
    reference="Yang et al. 2023, From KD to Self-KD: Normalized Loss and Customized Soft Labels, arXiv:2303.13005; "
    "docs/methods.md#nkd",
)


class USKDParams(MethodParams):
    alpha: float = Field(0.1, ge=0, description="weight α of the soft target term L_t (0.1 CIFAR-100; 1 ImageNet)")
    beta: float = Field(0.1, ge=0, description="weight β of the Zipf non-target term L_non (0.1)")
    mu: float = Field(0.1, ge=0, description="weight μ of the weak head's smoothed CE (0.1 CIFAR-100; 0.005 ImageNet)")
    rank_score: Literal["code", "prob"] = Field(
        "code",
        description="class-ranking score: 'code' uses the student's log-probabilities as the official code does; "
        "'prob' uses its probabilities as the paper describes",
    )


define_method(
    "uskd",
    params=USKDParams,
    description="Universal self-KD (no teacher): CE(s, y) + α·L_t + β·L_non + L_weak, with soft target weight "
    "σ_y² + 1 − mean σ_y², Zipf non-target soft labels ranked by the weak auxiliary head and the final logits, and "
    "μ·smoothed CE on the weak head (extras 'aux_logits' [B, C], a linear head on pooled stage-3 features). "
    "Unlabelled samples (label −1) contribute nothing: there is no teacher to stand in for their label.",
    reference="Yang et al. 2023, From KD to Self-KD: Normalized Loss and Customized Soft Labels, arXiv:2303.13005; "
    "docs/methods.md#uskd",
    needs_teacher=False,
    needs_labels=True,
    requires=("aux_logits",),
)


class PLDParams(MethodParams):
    temperature: float = Field(
        4.0,
        gt=0,
        description="teacher temperature τ_T of the step weights q = softmax(t/τ_T) (4 on CIFAR-100, 1 on ImageNet)",
    )


define_method(
    "pld",
    params=PLDParams,
    description="Plackett–Luce distillation: the student's PL negative log-likelihood of the teacher-optimal ranking "
    "(true label first, then classes by descending teacher logit), each step weighted by softmax(t/τ_T). Replaces "
    "CE + KD (no separate CE). Unlabelled samples rank the teacher's argmax first.",
    reference="Bassam, Zhu, Bian 2025, PLD: A Choice-Theoretic List-Wise Knowledge Distillation, arXiv:2506.12542; "
    "docs/methods.md#pld",
)


class PSKDParams(MethodParams):
    alpha_T: float = Field(
        0.8, ge=0, le=1, description="final weight α_T of the previous-epoch predictions; α_t = α_T·(epoch+1)/epochs"
    )


define_method(
    "pskd",
    params=PSKDParams,
    description="Progressive self-KD (no teacher): CE against ỹ = (1−α_t)·onehot(y) + α_t·P_prev, "
    "α_t = α_T·(epoch+1)/epochs, P_prev = the model's own detached softmax for the sample from the previous epoch "
    "(extras 'prev_probs' [B, C]; one-hot labels at epoch 0). Unlabelled samples contribute nothing.",
    reference="Kim et al. 2021, Self-Knowledge Distillation with Progressive Refinement of Targets, arXiv:2006.12000; "
    "docs/methods.md#pskd",
    needs_teacher=False,
    needs_labels=True,
    requires=("prev_probs",),
)


class SinKDParams(MethodParams):
    alpha: float = Field(0.8, ge=0, le=1, description="weight of the CE-form KD term; the label CE gets 1 − alpha")
    temperature: float = Field(2.0, gt=0, description="temperature τ of the CE-form KD term (no τ² factor)")
    beta: float = Field(1.0, ge=0, description="weight β of the Sinkhorn term")
    sinkhorn_weight: float = Field(
        0.001,
        ge=0,
        description="scale w inside the Sinkhorn term, L_Sink = w·⟨Π, M⟩ (0.001 BERT/GLUE, 0.0008 T0/GPT-Neo)",
    )
    sinkhorn_temperature: float = Field(
        2.0, gt=0, description="temperature τ_s of the distributions in the cost (2 in the code)"
    )
    epsilon: float = Field(0.1, gt=0, description="entropic regularisation ε of the Gibbs kernel exp(−M/ε)")
    n_iter: int = Field(20, ge=1, le=1000, description="number of (row, column) Sinkhorn normalisations")


define_method(
    "sinkd",
    params=SinKDParams,
    description="SinKD: (1−α)·CE(s, y) + α·mean_i(−Σ_c p^T_τ log p^S_τ) + β·w·⟨Π, M⟩, where Π is the batch-wise "
    "Sinkhorn plan (unit marginals, log-domain iterations) over the B×B L1 cost between softmax(s/τ_s) and "
    "softmax(t/τ_s) rows. The KD term is the CE form without τ², as in the reference GLUE trainer. Depends on batch "
    "composition; unlabelled samples contribute the KD and Sinkhorn terms only.",
    reference="Cui et al. 2024, Sinkhorn Distance Minimization for Knowledge Distillation, arXiv:2402.17110; "
    "docs/methods.md#sinkd",
)


# ---- teacher refinements --------------------------------------------------------------------


class MCMIParams(BaseModel):
    """Teacher fine-tuning recipe of the reference code (`FineTuneTeacher.py`)."""

    model_config = ConfigDict(extra="forbid")

    lam: float = Field(0.15, ge=0, description="weight λ of the CMI term, subtracted from CE (scripts use 0.1–0.25)")
    epochs: int = Field(20, ge=1, description="fine-tuning epochs")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (0.005 for MobileNetV2/ShuffleNet teachers)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay")
    batch_size: int = Field(64, ge=1, description="fine-tuning batch size")


@dataclass(frozen=True)
class RefinementSpec:
    name: str
    params: type[BaseModel]
    description: str
    reference: str

    def catalog_entry(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_json_schema(), "description": self.description,
                "reference": self.reference}


REFINEMENTS: dict[str, RefinementSpec] = {
    "mcmi": RefinementSpec("mcmi", MCMIParams, "MCMI: fine-tune the teacher on CE − λ·CMI first (docs/methods.md#mcmi)",
                           "Ye et al. 2024, arXiv:2401.08732"),
}
