"""Request and response models: the HTTP contract (docs/api.md) in pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The card's parts, typed once (service/model_card.py): ModelOut is the card as served.
from kdserve.service.model_card import Artifact, Bundle, CardFields, OutputDiffOut, TensorSpec  # noqa: F401
from kdserve.service.vocab import OPTIMIZERS, QUANTIZE

Optimizer = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]  (the names of kdserve.service.vocab)
Quantize = Literal[QUANTIZE]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- errors -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- job request --------------------------------------------------------------------------


class StudentAuto(Strict):
    max_params: int | None = Field(None, ge=1, le=10**11, description="the most parameters the student may have")
    ratio: float | None = Field(None, ge=1, le=1e6, description="teacher parameters per student parameter (default "
                                "10); ignored when max_params is given")


class StudentSpec(Strict):
    architecture: str | None = Field(None, description="a name from GET /v1/architectures; left out, the service "
                                     "picks the student (see `auto`)")
    params: dict[str, Any] = Field(default_factory=dict)
    auto: StudentAuto | None = Field(None, description="pick the largest student of the family that fits the input "
                                     "within this budget (the default when `architecture` is left out: a tenth of the "
                                     "teacher's parameters)")
    reason: str | None = Field(None, description="set by the service when it picked the student: what and why")


class MethodSpec(Strict):
    name: str | None = Field(None, description="a name from GET /v1/methods; left out, the service picks it for the "
                             "teacher: for a classifier over tensors, kd or dist by a short trial (see `candidates`); "
                             "kd for a text classifier, embedding_cosine for an embedding model, ce without a teacher")
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = Field(None, description="set by the service when it picked the method: why")
    candidates: list[str] | None = Field(None, description="set by the service when it left the method to a short "
                                         "trial: the methods trained side by side (each at the rates learning_rate "
                                         "\"auto\" tries) and halved by validation score; `name` is the first until "
                                         "the trial has chosen, then the winner, and `reason` says why")


class TrainingSpec(Strict):
    epochs: Annotated[int, Field(ge=1, le=10_000)] | Literal["auto"] = Field(
        "auto", description="passes over the training split; \"auto\": about 3000 optimizer steps (10 to 200 epochs), "
        "resolved when the job is created")
    batch_size: int = Field(64, ge=1, le=65_536)
    learning_rate: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = Field(
        "auto", description="peak learning rate (linear warm-up over the first 5 % of the steps, then cosine decay to "
        "zero); \"auto\": chosen per job by successive halving over four rates on the validation split (the choice "
        "and the scores are in the job's events and on the model card)")
    optimizer: Optimizer = "adamw"
    weight_decay: float = Field(0.01, ge=0, le=1, description="on weight matrices and kernels only (never on biases "
                                "or normalisation scales)")
    grad_clip_norm: float | None = Field(1.0, gt=0, description="clip the gradients' global norm to this; null: no "
                                         "clipping")
    early_stopping_patience: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="stop when the validation score has not improved for this many epochs; \"auto\": a fifth "
        "of the epochs (at least 10); null: never stop early")
    publish: Literal["best", "last"] = Field("best", description="publish the weights of the epoch with the best "
                                             "validation score, or of the last epoch")
    standardize_inputs: bool | Literal["auto"] = Field(
        "auto", description="MLP students: standardise each feature with the training split's mean and standard "
        "deviation, inside the student (the exported ONNX takes the raw features); \"auto\": when the features are on "
        "very different scales (the largest standard deviation, or mean, over 10× the median standard deviation)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    max_duration_s: int | None = Field(None, ge=1, description="wall-clock limit of the job")


class ExportSpec(Strict):
    onnx: Literal[True] = Field(True, description="the student is always exported to ONNX")
    opset: int = Field(18, ge=13, le=21, description="ONNX opset; 18 is what the exporter targets natively (older "
                       "opsets go through a version converter that not every op survives)")
    quantize: list[Quantize] = Field(
        default_factory=list, max_length=2,
        description="extra precisions to publish: int8 (dynamic for MLP/transformer students, static QDQ calibrated "
        "on training samples for CNNs) and fp16 (for GPU serving); each is measured on the validation set and "
        "published only within max_accuracy_drop",
    )
    parity_tolerance: float = Field(1e-4, gt=0, description="max abs logit difference ORT vs PyTorch")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="a variant losing more is not published")


class TeacherRefinement(Strict):
    method: Literal["mcmi"] = Field("mcmi", description="fine-tune the teacher with this objective before distilling")
    params: dict[str, Any] = Field(default_factory=dict)


class TextSpec(Strict):
    max_length: int = Field(128, ge=2, le=8192, description="text jobs: tokens per text (or text pair) after the "
                            "teacher's tokenizer; longer texts are truncated (at most the teacher's position count)")


class FromCheckpoint(Strict):
    job_id: str = Field(description="the job that trained the weights (same student and method)")
    epoch: int = Field(ge=1, description="an epoch whose weights that job kept (GET /v1/jobs/{id}/checkpoints)")


class JobCreate(Strict):
    teacher_id: str | None = None
    teacher_features: str | None = Field(
        None, max_length=255,
        description="name of the teacher output to use as features, for methods that need them (fitnet, lelp); "
        "see the teacher's `outputs`",
    )
    teacher_refinement: TeacherRefinement | None = Field(
        None, description="refine a TorchScript teacher (e.g. MCMI) before distilling; the refined teacher is stored too",
    )
    dataset_id: str
    validation_dataset_id: str | None = None
    validation_split: float = Field(0.1, gt=0, lt=0.9)
    test_dataset_id: str | None = Field(None, description="rows nobody chose anything on (no epoch, no learning rate): "
                                        "the student, the teacher and their agreement are scored on them once, at the "
                                        "end (the card's `test`)")
    student: StudentSpec = Field(default_factory=StudentSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    text: TextSpec = Field(default_factory=TextSpec, description="tokenisation of text datasets (ignored otherwise)")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)
    baseline: bool = Field(False, description="also train the same student with ce alone on the same split and put "
                           "both on the card: what distillation bought (needs labels)")
    from_checkpoint: FromCheckpoint | None = Field(None, description="publish these kept weights instead of "
                                                   "training (POST /v1/jobs/{id}/checkpoints/{epoch}/publish)")


# ---- responses ----------------------------------------------------------------------------


class TeacherOut(BaseModel):
    id: str
    object: Literal["teacher"] = "teacher"
    name: str
    format: str
    sha256: str
    size_bytes: int
    input_shape: list[int]
    input_dtype: str
    num_classes: int
    num_parameters: int
    outputs: list[dict[str, Any]] = Field(default_factory=list, description="every output: name, per-sample shape, "
                                          "and whether it is the logits")
    created_at: int
    details: dict[str, Any] | None = Field(None, description="text teachers (format hf): task (classification or "
                                           "embedding), model_type, vocab_size, hidden_size, num_layers, max_positions, "
                                           "output_dim, pooling, normalize. ONNX teachers: input_name (the student "
                                           "takes the teacher's input and logits names). Tensor teachers: `adaptations`, what "
                                           "was changed so that a stock export runs (probabilities: softmax outputs "
                                           "taken as log-probabilities; batch: a fixed batch of 1 made symbolic or run "
                                           "row by row; dtype: float64 weights fed float64 inputs), each with its reason")


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    format: str
    sha256: str = Field(description="of the uploaded file")
    size_bytes: int = Field(description="bytes stored: the canonical npz the upload was parsed into (x float32, y "
                            "int64), which the tenant's storage quota charges")
    num_rows: int
    feature_shape: list[int]
    labeled: bool
    num_classes: int | None
    class_counts: dict[str, int] | None
    created_at: int
    details: dict[str, Any] | None = Field(None, description="text datasets (jsonl): kind, text_pairs, mean_chars, "
                                           "max_chars; CSV and npz: what parsing decided for you (label_column "
                                           "found, dropped_columns, the npz arrays read, and messages saying so)")


class JobMetrics(BaseModel):
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None
    agreement: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    mean_cosine: float | None = Field(None, description="embedding students: mean cosine to the teacher's vectors "
                                      "on the validation set")
    neighbour_overlap_at_10: float | None = Field(None, description="embedding students: share of each validation "
                                                  "text's 10 nearest neighbours the student and teacher agree on")
    learning_rate: float | None = Field(None, description="the peak learning rate the student trained at (chosen by "
                                        "the job when training.learning_rate is \"auto\")")
    best_epoch: int | None = Field(None, description="the epoch with the best validation score")
    val_kl: float | None = Field(None, description="the published epoch's mean KL(teacher ‖ student) at temperature "
                                 "1 over every validation row: how faithful the student is, on a continuous scale "
                                 "(searches break score ties by it)")
    val_score: float | None = Field(None, description="the published epoch's validation score: accuracy and "
                                    "agreement weighted by the rows each is measured on (what epochs, learning rates "
                                    "and a search's trials are chosen by)")
    baseline_accuracy: float | None = Field(None, description="baseline: true: the ce-only student's accuracy")
    baseline_agreement: float | None = Field(None, description="baseline: true: the ce-only student's agreement")


class JobWarning(BaseModel):
    code: str = Field(description="variant_withheld, far_below_teacher, small_validation, feature_scales, "
                      "teacher_probabilities, teacher_row_by_row")
    message: str


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    stage: str | None
    progress: float
    epoch: int
    epochs: int
    teacher_id: str | None
    dataset_id: str
    validation_dataset_id: str | None
    test_dataset_id: str | None = None
    student: dict[str, Any]
    method: dict[str, Any]
    training: dict[str, Any]
    export: dict[str, Any]
    metrics: JobMetrics
    model_id: str | None
    error: ErrorBody | None
    attempts: int
    created_at: int
    started_at: int | None
    finished_at: int | None
    estimated_finish: int | None
    metadata: dict[str, str]
    warnings: list[JobWarning] = Field(default_factory=list, description="what you should know about the run: a "
                                     "variant not published and why, the student far below its teacher, a tiny "
                                     "validation split, features on very different scales left unscaled")


class CheckpointOut(BaseModel):
    object: Literal["job.checkpoint"] = "job.checkpoint"
    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    val_agreement: float | None
    val_cosine: float | None
    val_kl: float | None = Field(None, description="mean KL(teacher ‖ student) at temperature 1 over every "
                                 "validation row")
    val_score: float | None = Field(description="what the job chose its epoch and learning rate by: validation "
                                    "accuracy and agreement weighted by the rows each is measured on (embedding "
                                    "students: mean cosine)")
    lr: float | None
    best: bool = Field(description="the epoch with the best validation score")
    published: bool = Field(description="the epoch whose weights the job's model holds")
    weights: bool = Field(description="its weights are kept (the best three epochs and the last): it can be "
                          "published with POST …/checkpoints/{epoch}/publish")


class EventOut(BaseModel):
    id: int
    object: Literal["job.event"] = "job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class ModelHead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    job_id: str


class ModelOut(CardFields, ModelHead):  # served: id, object, name, job_id, the card's fields, its files
    artifacts: list[Artifact]
    created_at: int
    inputs: list[TensorSpec] | None = Field(None, description="every input, when there is more than one (text students: "
                                            "input_ids and attention_mask)")
    bundles: list[Bundle] | None = Field(None, description="text students: per precision, a zip of the ONNX file and "
                                         "the tokenizer (GET …/download?format=zip&precision=…)")
    text: dict[str, Any] | None = Field(None, description="text students: task, max_length, output, normalized, "
                                        "pooling, text_pairs, vocab_size, tokenizer_files")
    usage: dict[str, str] | None = Field(None, description="how to call this model, ready to paste once "
                                         "$KDSERVE_URL and $KDSERVE_API_KEY are set: download, predict and v2_infer "
                                         "(curl), onnxruntime (Python, tensor students), sdk (Python)")


class ListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool


class PredictIn(Strict):
    inputs: list[Any] = Field(min_length=1, description="a batch of samples, each of the model's input shape "
                              "(text students: a list of strings)")
    text_pairs: list[Any] | None = Field(None, description="text students trained on pairs: the second text of each")

    def pack_numbers(self) -> None:
        """Samples as a numpy array, for the trip back from a parsing child (service/bodies.py)."""
        from kdserve.service.bodies import number_array  # bodies imports FastAPI; the schemas stay importable without

        self.inputs = number_array(self.inputs)


class ModelPatch(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the model's name: /v2/models/{name} serves it (the caller's newest model of that "
                      "name), so a client written for the teacher's name can keep it")


Precision = Literal["fp32", "int8", "fp16"]


class ModelEvaluate(Strict):
    dataset_id: str = Field(description="a stored dataset of the model's input shape, e.g. a test set uploaded with "
                            "POST /v1/datasets; labels given as class names are matched to the model's by name")
    precision: Precision = Field("fp32", description="which published file to score")


class EvaluationOut(BaseModel):
    model_id: str
    dataset_id: str
    precision: str
    rows: int
    labelled: int
    accuracy: float | None = Field(description="on the labelled rows; null when none is labelled")
    predicted_counts: dict[str, int] = Field(description="how many rows each class was predicted for (class names "
                                             "when the model has them)")


class PredictOut(BaseModel):
    logits: list[list[float]]
    predictions: list[int]
    labels: list[str] | None = Field(None, description="the predictions as class names, when the dataset's labels "
                                     "were names (the card's class_names)")
    embeddings: list[list[float]] | None = Field(None, description="embedding text students: the sentence vectors "
                                                 "(logits and predictions are then empty)")


# ---- searches -----------------------------------------------------------------------------


class SearchTargets(Strict):
    latency_ms: float | None = Field(None, gt=0, description="the most a batch of `batch_size` may take: median "
                                     "onnxruntime latency in ms, measured as the model card measures it (on CUDA "
                                     "where the worker's session really ran there, else CPU)")
    batch_size: Literal[1, 64] = Field(1, description="the batch the latency target is for (the card measures 1 and 64)")
    max_parameters: int | None = Field(None, ge=1, description="the most parameters the student may have")
    max_size_bytes: int | None = Field(None, ge=1, description="the largest ONNX file")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="validation accuracy of the exported file")
    min_agreement: float | None = Field(None, ge=0, le=1, description="agreement with the teacher on the validation set")


class StudentChoice(Strict):
    architecture: str
    params: dict[str, Any] = Field(default_factory=dict)


class SearchSpace(Strict):
    methods: list[str] | None = Field(None, min_length=1, max_length=16, description="methods to try (GET "
                                      "/v1/methods); default: kd, dist and dkd for a classifier teacher, "
                                      "embedding_cosine for an embedding teacher")
    students: list[StudentChoice] | None = Field(
        None, min_length=1, max_length=16, description="students to try; default: the family a job would pick "
        "from (MLP, CNN, transformer), at up to four sizes: the largest within max_params, a quarter, a sixteenth "
        "and a sixty-fourth of it")
    max_params: int | None = Field(None, ge=1, description="the default students' budget: targets.max_parameters, "
                                   "else a tenth of the teacher's parameters")
    learning_rate: tuple[Annotated[float, Field(gt=0, le=10)], Annotated[float, Field(gt=0, le=10)]] | None = Field(
        None, description="[low, high], sampled log-uniformly; default: the range the job's \"auto\" rate chooses from")
    temperature: tuple[Annotated[float, Field(gt=0, le=100)], Annotated[float, Field(gt=0, le=100)]] = Field(
        (1.0, 8.0), description="[low, high] for methods that have a temperature")
    precisions: list[Precision] = Field(["fp32", "int8", "fp16"], min_length=1, description="every trial exports "
                                        "these; each file is a candidate of its own (int8 and fp16 kept only within "
                                        "the export's max_accuracy_drop)")
    epochs: Annotated[int, Field(ge=1, le=10_000)] | Literal["auto"] = Field(
        "auto", description="each trial's epochs (pruned trials stop sooner)")
    batch_size: int = Field(64, ge=1, le=65_536)


class SearchBudget(Strict):
    trials: int = Field(20, ge=1, le=500, description="trials to run (pruned and failed ones count)")
    max_duration_s: int | None = Field(None, ge=1, description="no trial starts after this many seconds, and the "
                                       "trials running then are stopped at it")
    parallel: int = Field(2, ge=1, le=32, description="trials queued or running at once (one per free worker)")


class SearchCreate(Strict):
    teacher_id: str
    dataset_id: str
    validation_dataset_id: str | None = None
    validation_split: float = Field(0.1, gt=0, lt=0.9)
    targets: SearchTargets = Field(default_factory=SearchTargets)
    space: SearchSpace = Field(default_factory=SearchSpace)
    budget: SearchBudget = Field(default_factory=SearchBudget)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the optimizer's and every trial's seed")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)


class Candidate(BaseModel):
    """One exported file of one trial: what the targets are checked on."""

    trial: int
    job_id: str
    model_id: str
    precision: str
    score: float | None = Field(description="what files are ranked by: the trial's validation score (accuracy and "
                                "agreement weighted by their rows), less this file's accuracy drop from fp32")
    val_kl: float | None = Field(None, description="the trial's mean KL(teacher ‖ student) on the validation split: "
                                 "among files of equal score, the lower is ranked first")
    accuracy: float | None
    agreement: float | None
    latency_ms: float | None
    size_bytes: int
    num_parameters: int
    method: str
    student: dict[str, Any]
    meets_targets: bool
    violations: dict[str, float] = Field(default_factory=dict, description="target → how far the file misses it "
                                         "(a fraction of the target)")


class SearchResult(BaseModel):
    recommended: Candidate | None = Field(None, description="the cheapest file that meets every target (with no "
                                          "accuracy or agreement target: the most accurate one that meets the "
                                          "cost targets)")
    meets_targets: bool = Field(False, description="false: no file met every target yet; `closest` is the nearest")
    closest: Candidate | None = Field(None, description="when no file meets every target: the one that misses "
                                      "them by least (sum of relative misses)")
    pareto: list[Candidate] = Field(default_factory=list, description="the files no other file beats on accuracy, "
                                    "latency and size at once, by latency")
    leaderboard: list[Candidate] = Field(default_factory=list, description="the 20 files with the best score")


class TrialCounts(BaseModel):
    started: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    pruned: int = 0
    failed: int = 0
    cancelled: int = 0


class SearchOut(BaseModel):
    id: str
    object: Literal["search"] = "search"
    status: str
    teacher_id: str
    dataset_id: str
    validation_dataset_id: str | None
    targets: dict[str, Any]
    space: dict[str, Any]
    budget: dict[str, Any]
    trials: TrialCounts
    result: SearchResult
    error: ErrorBody | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    metadata: dict[str, str]


class TrialOut(BaseModel):
    object: Literal["search.trial"] = "search.trial"
    number: int
    job_id: str
    status: str = Field(description="queued, running, succeeded, pruned, failed or cancelled")
    params: dict[str, Any] = Field(description="what the optimizer chose: method, student, learning_rate, temperature")
    value: float | None = Field(description="the best validation score the trial reached (what the optimizer maximises)")
    epochs_run: int | None
    model_id: str | None
    candidates: list[Candidate] = Field(default_factory=list)
    error: ErrorBody | None = None
