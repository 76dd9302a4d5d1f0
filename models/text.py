"""Transformer students for text: a BERT-style encoder written out here (not transformers' classes),
built from scratch (`transformer`) or as a layer-dropped copy of a BERT teacher (`layer_dropped`).

    student = build_layer_dropped(source, keep=[1, 3, 5], hidden_size=None, dropout=0.1)
    out = student(input_ids, attention_mask)          # int64 [B, L] each → [B, num_labels | dim]

Why our own encoder rather than a copy of the teacher's Hugging Face modules:
- the residual width can shrink independently of the attention width (HF's BERT ties
  `all_head_size` to `hidden_size`), which is what a narrower student initialised from the
  teacher needs;
- the exported graph is ours: two int64 inputs with a dynamic batch and sequence, no
  `token_type_ids` input (segments are derived from the [SEP] positions inside the graph, so a
  text pair still gets its segment embeddings), no cache or output-attention plumbing;
- it does not change when transformers does. With every layer kept and full width it reproduces
  the teacher's outputs to float rounding (tested), so a layer-dropped student starts exactly where
  DistilBERT-style initialisation says it should.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdserve.models.student import Student


@dataclass
class TextSource:
    """What a text student is built from: facts about the teacher's tokenizer and head, and for
    `layer_dropped` its weights. Filled by the worker from the loaded teacher."""

    vocab_size: int                    # ids the tokenizer can produce (its length, added tokens included)
    pad_token_id: int
    sep_token_id: int | None
    max_positions: int                 # the teacher's position-embedding count
    task: str                          # "classification" | "embedding"
    output_dim: int                    # num_labels, or the embedding width
    pooling: str = "mean"              # embedding teachers: "mean" | "cls"
    normalize: bool = True             # embedding teachers: L2-normalised output
    model_type: str | None = None
    config: dict[str, Any] = field(default_factory=dict)       # the teacher's config.json
    state_dict: dict[str, torch.Tensor] | None = None          # the teacher's weights (HF names)
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None  # (input_ids, attention_mask) of training texts
    token_counts: torch.Tensor | None = None  # [vocab] occurrences of each id in all the training texts


# ---- the encoder -------------------------------------------------------------------------------


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 0/1 → [B, 1, 1, L] additive: 0 for tokens, the dtype's minimum for padding (as BERT)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors where mask is 1 (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


class LowRankEmbedding(nn.Embedding):
    """A token-embedding table factorised as [V, r] @ [r, H] (ALBERT's factorised embedding):
    `weight` is the [V, r] table (the part `freeze_embeddings` freezes), `up` the shared map to the
    hidden width. Exported as a Gather followed by a MatMul with a constant weight, both of which
    dynamic int8 quantizes.

    With `full_rows` K, the K tokens a job's texts use most also get a full-width correction row
    (`full`, [K + 1, H]; `slot` [V] maps a token id to its row, 0 — a zero row that never trains —
    for every other token): those tokens are represented as well as in the full table, the rest
    of the vocabulary by the low-rank table alone. Two more Gathers in the exported graph."""

    def __init__(self, vocab: int, rank: int, hidden: int, full_rows: int = 0):
        super().__init__(vocab, rank)
        self.up = nn.Linear(rank, hidden, bias=False)
        self.full = nn.Embedding(full_rows + 1, hidden, padding_idx=0) if full_rows else None
        if full_rows:
            self.register_buffer("slot", torch.zeros(vocab, dtype=torch.int32))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.up(super().forward(input_ids))
        return h if self.full is None else h + self.full(self.slot[input_ids])

    @torch.no_grad()
    def set_full_rows(self, tokens: torch.Tensor, table: torch.Tensor) -> None:
        """Give `tokens` (ids, at most K) full rows that make them start exact: each row is the
        token's row of `table` [V, H] minus its low-rank approximation."""
        rows = torch.arange(1, len(tokens) + 1, dtype=torch.int32)
        self.slot.zero_()
        self.slot[tokens] = rows
        self.full.weight.zero_()
        self.full.weight[rows.long()] = table[tokens] - self.up(self.weight[tokens])


class Embeddings(nn.Module):
    """Word + position (+ segment) embeddings, LayerNorm, dropout: BERT's input layer; the word
    table is a `LowRankEmbedding` when `rank` is given (with `full_rows` full-width rows).

    Segments are derived from the ids: a token belongs to segment 1 once a [SEP] has gone by (the
    BERT pair template `[CLS] a [SEP] b [SEP]`), so the exported student needs no token_type_ids
    input and a text pair still gets its segment embeddings."""

    def __init__(self, vocab: int, hidden: int, max_positions: int, type_vocab: int, sep_id: int | None,
                 eps: float, dropout: float, rank: int | None = None, full_rows: int = 0):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden) if rank is None else LowRankEmbedding(vocab, rank, hidden, full_rows)
        self.position = nn.Embedding(max_positions, hidden)
        self.segment = nn.Embedding(type_vocab, hidden) if type_vocab > 0 else None
        self.sep_id = sep_id if type_vocab > 1 else None
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.word(input_ids) + self.position(positions).unsqueeze(0)
        if self.segment is not None:
            if self.sep_id is None:
                segments = torch.zeros_like(input_ids)
            else:
                is_sep = (input_ids == self.sep_id).long()
                segments = ((torch.cumsum(is_sep, 1) - is_sep) > 0).long() * attention_mask.long()
            h = h + self.segment(segments)
        return self.dropout(self.norm(h))


class EncoderLayer(nn.Module):
    """A post-LayerNorm BERT layer. The attention width (heads × head_dim) is its own number, so a
    narrow residual stream can keep the teacher's attention."""

    def __init__(self, hidden: int, heads: int, head_dim: int, intermediate: int, eps: float, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        width = heads * head_dim
        self.query, self.key, self.value = (nn.Linear(hidden, width) for _ in range(3))
        self.attn_out = nn.Linear(width, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        probs = self.dropout(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(h.shape[0], h.shape[1], self.heads * self.head_dim)
        h = self.attn_norm(h + self.dropout(self.attn_out(ctx)))
        return self.ffn_norm(h + self.dropout(self.ffn_out(F.gelu(self.ffn_in(h)))))


class MeanPool(nn.Module):
    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(h, mask)


class FirstTokenPool(nn.Module):
    """The first ([CLS]) token, optionally through BERT's pooler (dense + tanh)."""

    def __init__(self, hidden: int, dense: bool):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden) if dense else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        first = h[:, 0]
        return first if self.dense is None else torch.tanh(self.dense(first))


class TextStudent(Student):
    """input_ids + attention_mask → logits (classification) or a sentence embedding.

    Follows the zoo's `Student` contract: `body` is the sequence of encoder layers (a feature hint
    such as FitNets' `student_layer` indexes it; the hint of a layer is its masked-mean token
    vector), `feature_dim` is the pooled width, `head` the last Linear. For embeddings the head is
    the learned projection into the teacher's embedding space (identity-initialised at full width,
    the PCA basis when narrower), then L2 normalisation when the teacher normalises."""

    inputs = "text"

    def __init__(self, embeddings: Embeddings, layers: Sequence[EncoderLayer], pool: nn.Module, head: nn.Linear,
                 normalize: bool, pad_token_id: int):
        nn.Module.__init__(self)
        self.embeddings = embeddings
        self.body = nn.ModuleList(layers)
        self.pool = pool
        self.head = head
        self.feature_dim = head.in_features
        self.normalize = normalize
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_features(input_ids, attention_mask)[2]

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         layer: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hint, pooled features, output) in one pass; the hint is layer `layer`'s masked-mean
        token vector (-1: the pooled features)."""
        h = self.embeddings(input_ids, attention_mask)
        bias = attention_bias(attention_mask, h.dtype)
        hint = None
        for i, block in enumerate(self.body):
            h = block(h, bias)
            if i == layer:
                hint = masked_mean(h, attention_mask)
        features = self.pool(h, attention_mask)
        out = self.head(features)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return (features if hint is None else hint), features, out


# ---- from scratch --------------------------------------------------------------------------------


def _init_bert(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_transformer(source: TextSource, *, layers: int, hidden: int, heads: int, intermediate: int,
                      max_positions: int, vocab_size: int, pooling: str, dropout: float) -> TextStudent:
    """A small encoder with random BERT initialisation; its vocabulary is the teacher tokenizer's."""
    emb = Embeddings(vocab_size, hidden, max_positions, 2 if source.sep_token_id is not None else 1,
                     source.sep_token_id, 1e-12, dropout)
    blocks = [EncoderLayer(hidden, heads, hidden // heads, intermediate, 1e-12, dropout) for _ in range(layers)]
    pool = MeanPool() if pooling == "mean" else FirstTokenPool(hidden, dense=source.task == "classification")
    head = nn.Linear(hidden, source.output_dim)
    student = TextStudent(emb, blocks, pool, head, source.task == "embedding" and source.normalize,
                          source.pad_token_id)
    _init_bert(student)
    return student


# ---- from a BERT teacher ---------------------------------------------------------------------------


def bert_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's weights with the task model's prefix removed (`bert.` in …ForSequenceClassification)."""
    out = {}
    for k, v in state_dict.items():
        out[k[5:] if k.startswith("bert.") else k] = v
    return out


def _teacher_dims(cfg: dict[str, Any]) -> dict[str, Any]:
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return {"hidden": hidden, "heads": heads, "head_dim": hidden // heads, "intermediate": int(cfg["intermediate_size"]),
            "layers": int(cfg["num_hidden_layers"]), "eps": float(cfg.get("layer_norm_eps", 1e-12)),
            "type_vocab": int(cfg.get("type_vocab_size", 2)), "vocab": int(cfg["vocab_size"]),
            "max_positions": int(cfg.get("max_position_embeddings", 512))}


def _copy_layer(block: EncoderLayer, w: dict[str, torch.Tensor], prefix: str) -> None:
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
    with torch.no_grad():
        for ours, theirs in names.items():
            module = getattr(block, ours)
            module.weight.copy_(w[f"{prefix}.{theirs}.weight"])
            module.bias.copy_(w[f"{prefix}.{theirs}.bias"])


def full_teacher_encoder(source: TextSource) -> tuple[Embeddings, list[EncoderLayer]]:
    """The teacher's embeddings and every layer as our modules, with its weights (eval mode)."""
    d = _teacher_dims(source.config)
    w = bert_weights(source.state_dict or {})
    emb = Embeddings(d["vocab"], d["hidden"], d["max_positions"], d["type_vocab"], source.sep_token_id, d["eps"], 0.0)
    with torch.no_grad():
        emb.word.weight.copy_(w["embeddings.word_embeddings.weight"])
        emb.position.weight.copy_(w["embeddings.position_embeddings.weight"])
        if emb.segment is not None:
            emb.segment.weight.copy_(w["embeddings.token_type_embeddings.weight"])
        emb.norm.weight.copy_(w["embeddings.LayerNorm.weight"])
        emb.norm.bias.copy_(w["embeddings.LayerNorm.bias"])
    blocks = []
    for i in range(d["layers"]):
        block = EncoderLayer(d["hidden"], d["heads"], d["head_dim"], d["intermediate"], d["eps"], 0.0)
        _copy_layer(block, w, f"encoder.layer.{i}")
        blocks.append(block)
    return emb.eval(), [b.eval() for b in blocks]


@torch.no_grad()
def projection_basis(source: TextSource, width: int, max_tokens: int = 20_000) -> torch.Tensor:
    """P [hidden, width] with orthonormal columns spanning the all-ones direction and the top
    principal directions of the teacher's residual stream (every layer's token vectors on the
    calibration texts, or the embedding layer's output for every vocabulary entry when there are
    none), rotated so that P maps the narrow all-ones vector onto the wide one. The narrow student
    lives in span(P): its weights are the teacher's, expressed in that basis."""
    emb, blocks = full_teacher_encoder(source)
    rows: list[torch.Tensor] = []
    if source.calibration is not None:
        ids, mask = source.calibration
        h = emb(ids, mask)
        bias = attention_bias(mask, h.dtype)
        keep = mask.bool()
        rows.append(h[keep])
        for block in blocks:
            h = block(h, bias)
            rows.append(h[keep])
    if sum(len(r) for r in rows) < 4 * width:  # too few texts to pin down `width` directions
        rows.append(emb.norm(emb.word.weight + emb.position.weight[:1] +
                             (emb.segment.weight[:1] if emb.segment is not None else 0.0)))
    x = torch.cat(rows).double()
    if len(x) > max_tokens:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_tokens]]
    # LayerNorm removes each vector's component along the all-ones direction u. The narrow
    # LayerNorm removes the component along its own all-ones direction a, so P must map a onto u:
    # otherwise every narrow LayerNorm would delete one principal direction of the stream instead.
    h = x.shape[1]
    u = torch.full((h,), 1.0 / math.sqrt(h), dtype=torch.float64)
    centred = x - (x @ u)[:, None] * u
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = torch.cat([u[:, None], vh[: width - 1].T], dim=1)  # [h, width], orthonormal, first column u
    a = torch.full((width,), 1.0 / math.sqrt(width), dtype=torch.float64)
    v = a - torch.eye(width, dtype=torch.float64)[0]
    householder = torch.eye(width, dtype=torch.float64) - 2.0 * torch.outer(v, v) / v.dot(v).clamp_min(1e-30)
    return (basis @ householder).float().contiguous()  # P a = basis · e₁ = u


def _project_norm(norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor, p: torch.Tensor) -> None:
    """LayerNorm of the narrow stream ≈ Pᵀ·LayerNorm of the wide one: the diagonal of Pᵀ diag(γ) P,
    scaled by √(h/h') because a normalised h'-vector carries h'/h of a normalised h-vector's norm."""
    h, narrow = p.shape
    with torch.no_grad():
        norm.weight.copy_(math.sqrt(h / narrow) * (p.pow(2) * weight[:, None]).sum(0))
        norm.bias.copy_(p.T @ bias)


def token_counts(source: TextSource, vocab: int) -> torch.Tensor | None:
    """[vocab] occurrences of each token id in the training texts (all of them when the worker
    counted them, else the calibration texts); None without texts."""
    if source.token_counts is not None:
        counts = source.token_counts
    elif source.calibration is not None:
        ids, mask = source.calibration
        counts = torch.bincount(ids[mask.bool()].flatten(), minlength=vocab)
    else:
        return None
    counts = counts[:vocab].double()
    return counts if counts.sum() > 0 else None


# Token weights of the factorised table's fit: this share spread evenly over the vocabulary, the
# rest in proportion to the tokens' counts in the training texts (tokens the training texts
# never show still get a say, the frequent ones most of it).
UNIFORM_TOKEN_SHARE = 0.2


def token_weights(source: TextSource, vocab: int) -> torch.Tensor | None:
    """Per-row weights [vocab] summing to 1 for the factorised table's fit: the training texts'
    token frequencies mixed with the uniform distribution; None without texts."""
    counts = token_counts(source, vocab)
    if counts is None:
        return None
    return (1 - UNIFORM_TOKEN_SHARE) * counts / counts.sum() + UNIFORM_TOKEN_SHARE / vocab


@torch.no_grad()
def low_rank_factors(table: torch.Tensor, rank: int, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [V, r], B [r, H]) whose product A·B is the best rank-r approximation of `table` [V, H]
    in the row-weighted norm Σ_v w_v‖row_v‖² (Eckart–Young on diag(√w)·table; without weights
    the plain truncated SVD, A = U_r·S_r, B = V_rᵀ). B holds the top right-singular vectors, and
    A = table·Bᵀ projects every row onto them, rows of weight zero included."""
    v, h = table.shape
    if not 1 <= rank < min(v, h):
        raise ValueError(f"embedding rank {rank} must be between 1 and {min(v, h) - 1} for a {v}×{h} table "
                         "(a factorisation of full rank saves nothing)")
    x = table.double()
    scaled = x if weights is None else x * weights.double().sqrt()[:, None]
    _, _, vh = torch.linalg.svd(scaled, full_matrices=False)
    b = vh[:rank]
    return (x @ b.T).float().contiguous(), b.float().contiguous()


def build_layer_dropped(source: TextSource, *, keep: Sequence[int], hidden_size: int | None,
                        dropout: float, embedding_rank: int | None = None, full_rows: int = 0) -> TextStudent:
    """A copy of the teacher keeping the layers `keep` (0-based, in order), initialised from its
    weights (DistilBERT-style). With `hidden_size` below the teacher's, the residual stream is
    projected onto the teacher's top principal directions P: every weight reading the stream is
    right-multiplied by P, every weight writing it left-multiplied by Pᵀ, attention and feed-forward
    widths stay the teacher's; an embedding student's head (the learned projection back to the
    teacher's width) starts as P. With `embedding_rank` r the token table (usually most of a small
    BERT's parameters) is factorised as [V, r] @ [r, width], initialised with the best rank-r
    approximation of the teacher's (projected) table, weighting each token by its frequency in the
    training texts (`low_rank_factors`, `token_weights`); with `full_rows` K the K tokens those
    texts use most keep a full-width row besides (`LowRankEmbedding`), so they start exact."""
    if source.state_dict is None:
        raise ValueError("layer_dropped needs the teacher's weights")
    d = _teacher_dims(source.config)
    w = bert_weights(source.state_dict)
    width = hidden_size or d["hidden"]
    p = projection_basis(source, width) if width != d["hidden"] else None

    def rd(t: torch.Tensor) -> torch.Tensor:  # a weight [out, hidden] that reads the stream
        return t if p is None else t @ p

    def wr(t: torch.Tensor) -> torch.Tensor:  # a weight [hidden, …] or bias [hidden] that writes it
        return t if p is None else p.T @ t

    emb = Embeddings(d["vocab"], width, d["max_positions"], d["type_vocab"], source.sep_token_id, d["eps"], dropout,
                     embedding_rank, full_rows)
    with torch.no_grad():
        table = rd(w["embeddings.word_embeddings.weight"])
        if embedding_rank is None:
            emb.word.weight.copy_(table)
        else:
            a, b = low_rank_factors(table, embedding_rank, token_weights(source, d["vocab"]))
            emb.word.weight.copy_(a)
            emb.word.up.weight.copy_(b.T)
            if full_rows:
                counts = token_counts(source, d["vocab"])
                if counts is None:
                    raise ValueError("embedding_full_rows picks the tokens the training texts use most: it needs texts")
                frequent = torch.argsort(counts, descending=True, stable=True)[:full_rows]
                emb.word.set_full_rows(frequent[counts[frequent] > 0], table)
        emb.position.weight.copy_(rd(w["embeddings.position_embeddings.weight"]))
        if emb.segment is not None:
            emb.segment.weight.copy_(rd(w["embeddings.token_type_embeddings.weight"]))
    _set_norm(emb.norm, w, "embeddings.LayerNorm", p)
    blocks = []
    for i in keep:
        block = EncoderLayer(width, d["heads"], d["head_dim"], d["intermediate"], d["eps"], dropout)
        pre = f"encoder.layer.{i}"
        with torch.no_grad():
            for ours, theirs in (("query", "attention.self.query"), ("key", "attention.self.key"),
                                 ("value", "attention.self.value"), ("ffn_in", "intermediate.dense")):
                getattr(block, ours).weight.copy_(rd(w[f"{pre}.{theirs}.weight"]))
                getattr(block, ours).bias.copy_(w[f"{pre}.{theirs}.bias"])
            for ours, theirs in (("attn_out", "attention.output.dense"), ("ffn_out", "output.dense")):
                getattr(block, ours).weight.copy_(wr(w[f"{pre}.{theirs}.weight"]))
                getattr(block, ours).bias.copy_(wr(w[f"{pre}.{theirs}.bias"]))
        _set_norm(block.attn_norm, w, f"{pre}.attention.output.LayerNorm", p)
        _set_norm(block.ffn_norm, w, f"{pre}.output.LayerNorm", p)
        blocks.append(block)

    if source.task == "classification":
        pool = FirstTokenPool(width, dense=True)
        head = nn.Linear(width, source.output_dim)
        with torch.no_grad():
            if "pooler.dense.weight" in w:
                pool.dense.weight.copy_(wr(rd(w["pooler.dense.weight"])))
                pool.dense.bias.copy_(wr(w["pooler.dense.bias"]))
            if "classifier.weight" in w and w["classifier.weight"].shape[0] == source.output_dim:
                head.weight.copy_(rd(w["classifier.weight"]))
                head.bias.copy_(w["classifier.bias"])
    else:
        pool = MeanPool() if source.pooling == "mean" else FirstTokenPool(width, dense=False)
        head = nn.Linear(width, source.output_dim)
        with torch.no_grad():
            head.weight.copy_(torch.eye(d["hidden"], width) if p is None else p)
            head.bias.zero_()
    return TextStudent(emb, blocks, pool, head, source.task == "embedding" and source.normalize, source.pad_token_id)


def _set_norm(norm: nn.LayerNorm, w: dict[str, torch.Tensor], name: str, p: torch.Tensor | None) -> None:
    if p is None:
        with torch.no_grad():
            norm.weight.copy_(w[f"{name}.weight"])
            norm.bias.copy_(w[f"{name}.bias"])
    else:
        _project_norm(norm, w[f"{name}.weight"], w[f"{name}.bias"], p)
