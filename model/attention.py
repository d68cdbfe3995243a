"""The one multi-head attention of headscope: self-attention (causal or bidirectional) and cross-attention.

Attention maps queries to a weighted sum of values. Everything here is shared by every variant;
a variant from the literature changes only two plug points, each a small class in a registry:

- a *score* compares each query with each key:        scores = score(q, k)          (B, nh, T, S)
- a *weighting* turns a row of scores into weights:   weights = weighting(scores)   (B, nh, T, S)

Self- and cross-attention differ only in where keys and values come from (the same sequence, or an
encoder's output) and in the mask. When nobody asks for the weights and the variant allows it, the
whole computation runs in ``F.scaled_dot_product_attention`` (the fast path); otherwise the explicit
path below computes the weight matrix, runs the hook points and returns it on request.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.hooks import HookPoint
from model.rotary import Rotary

SCORES: dict[str, type] = {}
WEIGHTINGS: dict[str, type] = {}


def register(registry: dict, name: str):
    """Class decorator adding a score or weighting class to its registry under `name`."""

    def add(cls):
        registry[name] = cls
        cls.name = name
        return cls

    return add


# ----------------------------------------------------------------------------------------------
# Scores: how a query is compared with each key


class Score(nn.Module):
    """Base score: scale * q.k. `sdpa_scale` not None means SDPA can compute it (on prepare_q(q)).

    Attention builds every score as cls(n_head, head_dim); the scores with weights (general, additive: plug-ins
    in model/scores.py) and the scaled dot product read the sizes, the base and the plain dot product need neither."""

    sdpa_scale: float | None = None

    def __init__(self, n_head: int, head_dim: int):
        super().__init__()

    def prepare_q(self, q: torch.Tensor) -> torch.Tensor:
        """Transform queries before the dot product (identity unless a variant folds a matrix in)."""
        return q

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # q (B, nh, T, hs), k (B, nh, S, hs) -> (B, nh, T, S)
        return (self.prepare_q(q) @ k.transpose(-2, -1)) * self.sdpa_scale


@register(SCORES, "scaled_dot")
class ScaledDot(Score):
    """q.k / sqrt(head_dim), as in the Transformer: keeps score variance near 1 as heads widen."""

    def __init__(self, n_head: int, head_dim: int):
        super().__init__(n_head, head_dim)
        self.sdpa_scale = 1.0 / math.sqrt(head_dim)


@register(SCORES, "dot")
class Dot(Score):
    """q.k without scaling (Luong's dot score)."""

    sdpa_scale = 1.0


# ----------------------------------------------------------------------------------------------
# Weightings: how a row of scores becomes weights over the keys


class Weighting(nn.Module):
    """Base weighting. `fast` means SDPA computes the same thing (only softmax does).

    A weighting with options of its own reads them from the model config in `from_config` (hard attention:
    model/hard_attention.py); one that trains through an extra loss term implements
    `auxiliary_loss` (model/layers.py AuxiliaryLoss)."""

    fast = False

    @classmethod
    def from_config(cls, config) -> "Weighting":
        """The weighting for a model config (its own options, if any, are read from there)."""
        return cls()


@register(WEIGHTINGS, "softmax")
class Softmax(Weighting):
    """Soft attention: a probability distribution over keys."""

    fast = True

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return F.softmax(scores, dim=-1)


# ----------------------------------------------------------------------------------------------
# Masks and the KV cache (the keys and values of past positions; the *activation* cache is lens/cache.py)


def make_mask(q_len: int, k_len: int, causal: bool, key_padding_mask: torch.Tensor | None = None,
              offset: int = 0, device=None) -> torch.Tensor | None:
    """Boolean mask (B|1, 1, T, S), True where a query may attend, or None when nothing is masked.

    `offset` is the number of keys before the first query (cached positions); `key_padding_mask`
    is (B, S) with True at real tokens. Rows that would attend to nothing get zero weights.
    """
    mask = None
    if causal:
        q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
        mask = (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]  # (1, 1, T, S)
    if key_padding_mask is not None:
        pad = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        mask = pad if mask is None else mask & pad
    return mask


class PastKeyValues:
    """The KV cache of one attention layer: keys and values of the positions seen so far (Hugging Face's
    past_key_values). Named so that it cannot be taken for the activation cache (lens/cache.py).

    A self-attention cache grows by the new positions at each call; a cross-attention cache is
    filled once from the encoder output and then reused at every decoding step.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k = self.v = None
        self.len = 0

    @classmethod
    def holding(cls, k: torch.Tensor, v: torch.Tensor, length: int) -> "PastKeyValues":
        """A cache of k.size(2) positions whose first `length` are k, v (B, nh, L, hs); it writes the next
        positions into these tensors, so pass ones nothing else reads."""
        cache = cls(k.size(2))
        cache.k, cache.v, cache.len = k, v, length
        return cache

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached ones; return all keys and values so far."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        if self.len + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.len + T} were asked for.")
        self.k[:, :, self.len:self.len + T] = k
        self.v[:, :, self.len:self.len + T] = v
        self.len += T
        return self.k[:, :, :self.len], self.v[:, :, :self.len]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in `index` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


# ----------------------------------------------------------------------------------------------
# The attention module


class Attention(nn.Module):
    """Multi-head attention; self-attention when `source` is None, cross-attention over `source` otherwise."""

    def __init__(self, config, cross: bool = False, score: str | None = None, weighting: str | None = None):
        super().__init__()
        self.n_head, self.head_dim, self.cross = config.n_head, config.head_dim, cross
        C = config.n_embd
        if cross:  # queries from the decoder, keys and values from the encoder output
            self.q_attn = nn.Linear(C, C, bias=config.bias)
            self.kv_attn = nn.Linear(C, 2 * C, bias=config.bias)
        else:
            self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.scorer = SCORES[score or config.attn_score](self.n_head, self.head_dim)
        self.weighting = WEIGHTINGS[weighting or config.attn_weighting].from_config(config)
        # QK-norm: RMS-normalise each head's queries and keys (identity unless config.qk_norm)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        # rotary positions in self-attention only: a decoder position and an encoder position are in
        # different sequences, so cross-attention has no relative distance to encode
        rope = config.pos_emb == "rope" and not cross
        max_len = max(config.block_size, getattr(config, "source_block_size", 0))  # an encoder reads those
        rotary_dim = getattr(config, "rotary_dim", 0) or self.head_dim
        self.rotary = Rotary(rotary_dim, max_len, config.rope_base) if rope else None
        self.dropout_p = config.dropout  # SDPA's dropout; the explicit path uses attn_dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # hook points, named after the tensor they carry
        self.q, self.k, self.v = HookPoint(), HookPoint(), HookPoint()  # (B, nh, T|S, hs)
        self.scores, self.pattern = HookPoint(), HookPoint()  # (B, nh, T, S)
        self.z = HookPoint()  # per-head output (B, nh, T, hs)
        self.result = HookPoint()  # each head's output after c_proj (B, nh, T, C): computed only when hooked
        self.out = HookPoint()  # (B, T, C)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, nh, T, hs)."""
        B, T, C = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, source: torch.Tensor | None, cache: PastKeyValues | None, offset: int = 0,
                positions: torch.Tensor | None = None):
        """Queries from x; keys and values from x (self) or source (cross), through the cache.

        QK-norm and rotary positions (queries and new keys at offset .., or at `positions` (B, T)
        when given) apply before keys are cached.
        """
        if not self.cross:
            q, k, v = self.c_attn(x).split(x.size(-1), dim=2)
            q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
            q, k = self.q_norm(q), self.k_norm(k)
            if self.rotary is not None:
                q, k = self.rotary(q, offset, positions), self.rotary(k, offset, positions)
            if cache is not None:
                k, v = cache.append(k, v)
            return q, k, v
        q = self.q_norm(self.split_heads(self.q_attn(x)))
        if cache is not None and cache.len > 0:  # encoder keys/values: computed once per sequence
            return q, cache.k[:, :, :cache.len], cache.v[:, :, :cache.len]
        k, v = self.kv_attn(source).split(x.size(-1), dim=2)
        k, v = self.k_norm(self.split_heads(k)), self.split_heads(v)
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                causal: bool = False, cache: PastKeyValues | None = None, need_weights: bool = False,
                positions: torch.Tensor | None = None):
        """Attend from x (B, T, C) to itself or to `source` (B, S, C); return y (B, T, C) [, weights].

        `mask` (bool, broadcastable to (B, nh, T, S), True = may attend; or a mask with its own kernel, `attend` and
        `dense`: FlexAttention's, model/documents.py FlexMask) is complete when given;
        otherwise `causal` asks for a causal mask, offset by the positions already in `cache`.
        `positions` (B, T) are the rows' own rotary positions (a left-padded batch).
        """
        if self.cross and source is None and (cache is None or cache.len == 0):
            raise ValueError("cross-attention needs a source sequence (the encoder output).")
        offset = cache.len if cache is not None and not self.cross else 0
        q, k, v = self.project(x, source, cache, offset, positions)
        q, k, v = self.q(q), self.k(k), self.v(v)
        T, S = q.size(2), k.size(2)
        if mask is None and causal and T > 1 and offset > 0:
            mask = make_mask(T, S, causal=True, offset=offset, device=x.device)
        sdpa_causal = causal and mask is None and offset == 0  # T == S here (a Python bool, also for symbolic T)

        explicit = need_weights or self.scores.active or self.pattern.active or not self.weighting.fast \
            or self.scorer.sdpa_scale is None
        dropout_p = self.dropout_p if self.training else 0.0
        if hasattr(mask, "attend") and (explicit or dropout_p > 0):  # its kernel gives no weights, has no dropout
            mask = mask.dense()
        if hasattr(mask, "attend"):  # a mask with its own kernel (packed documents on CUDA: FlexAttention)
            weights = None
            z = mask.attend(self.scorer.prepare_q(q), k, v, self.scorer.sdpa_scale)
        elif explicit:
            scores = self.scorer(q, k)  # (B, nh, T, S)
            if sdpa_causal:
                mask = make_mask(T, S, causal=True, device=x.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            scores = self.scores(scores)
            weights = self.weighting(scores)
            if mask is not None:  # a row with every key masked has no weights, not NaN
                weights = weights.masked_fill(~mask, 0.0)
            weights = self.pattern(weights)
            z = self.attn_dropout(weights) @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        else:
            weights = None
            z = F.scaled_dot_product_attention(
                self.scorer.prepare_q(q), k, v, attn_mask=mask, is_causal=sdpa_causal,
                dropout_p=dropout_p, scale=self.scorer.sdpa_scale)
        z = self.z(z)
        if self.result.active:  # per-head results (TransformerLens' hook_result), summed by hand
            W_O = self.c_proj.weight.view(-1, self.n_head, self.head_dim)  # (C, nh, hs)
            y = self.result(torch.einsum("bhtd,chd->bhtc", z, W_O)).sum(1)  # (B, nh, T, C) -> (B, T, C)
            y = y + self.c_proj.bias if self.c_proj.bias is not None else y
        else:
            y = self.c_proj(z.transpose(1, 2).contiguous().view(x.shape))  # re-assemble heads: (B, T, C)
        y = self.out(self.resid_dropout(y))
        return (y, weights) if need_weights else y
