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
from torch.utils.checkpoint import checkpoint

from model.hooks import HookPoint
from model.rotary import Rotary
from model.reinforce import BASELINES, CREDITS, ValueHead, leave_one_out, reach_of, rewards
from weights.common import IGNORE_INDEX, ConfigError

SCORES: dict[str, type] = {}
WEIGHTINGS: dict[str, type] = {}


def register(registry: dict, name: str):
    """Class decorator adding a score or weighting class to its registry under `name`."""

    def add(cls):
        registry[name] = cls
        cls.name = name
        return cls

    return add


HARD_OPTIONS = ("hard_attention_temperature", "hard_attention_estimator", "hard_attention_eval")
REINFORCE_OPTIONS = ("hard_attention_baseline", "hard_attention_baseline_momentum", "hard_attention_entropy",
                     "hard_attention_credit", "hard_attention_samples", "hard_attention_normalize")


def check_variant(score: str, weighting: str, prefix: str = "attn_") -> None:
    """Raise a ConfigError unless `score` and `weighting` name registered, compatible variants."""
    if not isinstance(score, str) or score not in SCORES:  # not a str: a list would not even hash
        raise ConfigError(f"{prefix}score must be one of {', '.join(SCORES)}, got {score!r}.")
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ConfigError(f"{prefix}weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}.")


def is_number(value) -> bool:
    """Whether value is an int or float (not a bool, a string or None)."""
    return type(value) in (int, float)


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    """A ConfigError unless config.<name> is one of the strings in `choices`."""
    value = getattr(config, name)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")


def check_variants(config) -> None:
    """Raise a ConfigError unless the config's self- and cross-attention variants and their options are valid."""
    check_variant(config.attn_score, config.attn_weighting, "attn_")
    check_variant(config.cross_attn_score, config.cross_attn_weighting, "cross_attn_")
    tau = config.hard_attention_temperature
    if not (is_number(tau) and 0 < tau < float("inf")):  # inf: -inf / inf = nan in the masked scores
        raise ConfigError(f"hard_attention_temperature must be > 0 and finite, got {tau!r}.")
    check_choice(config, "hard_attention_estimator", Hard.estimators)
    check_choice(config, "hard_attention_eval", Hard.eval_modes)
    check_choice(config, "hard_attention_baseline", Hard.baselines)
    momentum = config.hard_attention_baseline_momentum
    if not (is_number(momentum) and 0.0 <= momentum < 1.0):
        raise ConfigError(f"hard_attention_baseline_momentum must be in [0, 1), got {momentum!r}.")
    entropy = config.hard_attention_entropy
    if not (is_number(entropy) and 0.0 <= entropy < float("inf")):
        raise ConfigError(f"hard_attention_entropy must be >= 0 and finite, got {entropy!r}.")
    check_choice(config, "hard_attention_credit", Hard.credits)
    samples = config.hard_attention_samples
    if not (type(samples) is int and samples >= 1):
        raise ConfigError(f"hard_attention_samples must be a positive integer, got {samples!r}.")
    if config.hard_attention_estimator == "reinforce" and (samples > 1) != (config.hard_attention_baseline == "samples"):
        raise ConfigError("hard_attention_baseline=samples and hard_attention_samples >= 2 go together "
                          f"(got {config.hard_attention_baseline!r} and {samples}); set both or neither.")
    if type(config.hard_attention_normalize) is not bool:
        raise ConfigError(f"hard_attention_normalize must be True or False, got {config.hard_attention_normalize!r}.")


def check_options_apply(config) -> None:
    """A ConfigError for a hard_attention_* option changed from its default where nothing would read it.

    Checked for the settings of a new run (train.py), not in the config itself: a checkpoint that holds
    such an option still loads (the option changes nothing).
    """
    fields = type(config).__dataclass_fields__
    changed = [n for n in HARD_OPTIONS + REINFORCE_OPTIONS if getattr(config, n) != fields[n].default]
    hard = "hard" in (config.attn_weighting, config.cross_attn_weighting)
    for name in changed:
        if not hard:
            raise ConfigError(f"{name} applies to hard attention only, and no attention here is hard; "
                              "set attn_weighting=hard (or cross_attn_weighting=hard) or drop it.")
        if name in REINFORCE_OPTIONS and config.hard_attention_estimator != "reinforce":
            raise ConfigError(f"{name} applies to hard_attention_estimator=reinforce only, not "
                              f"{config.hard_attention_estimator!r}; set the estimator to reinforce or drop it.")


# ----------------------------------------------------------------------------------------------
# Scores: how a query is compared with each key


class Score(nn.Module):
    """Base score: scale * q.k. `sdpa_scale` not None means SDPA can compute it (on prepare_q(q))."""

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


@register(SCORES, "general")
class General(Score):
    """q^T W k with a learned (hs, hs) matrix W per head (Luong's general / bilinear score).

    q^T W k = (q^T W) . k, so W is folded into the queries and SDPA computes the rest (scale 1).
    W starts as I / sqrt(hs): the score begins as the scaled dot product and learns from there.
    """

    sdpa_scale = 1.0

    def __init__(self, n_head: int, head_dim: int):
        super().__init__(n_head, head_dim)
        self.weight = nn.Parameter(torch.empty(n_head, head_dim, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W = I / sqrt(head_dim) in every head."""
        hs = self.weight.size(-1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(hs).expand_as(self.weight) / math.sqrt(hs))

    def prepare_q(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.weight.to(q.dtype)  # (B, nh, T, hs) @ (nh, hs, hs) -> (B, nh, T, hs)


@register(SCORES, "additive")
class Additive(Score):
    """v^T tanh(W_q q + W_k k) with a small learned network per head (Bahdanau's additive score).

    The tanh features of every (query, key) pair, (B, nh, T, S, hidden), would not fit in memory at
    block_size 256, so they are computed for `chunk_elements` at a time over the queries; in training
    each chunk is recomputed in the backward pass (activation checkpointing) instead of being stored.
    Only the (B, nh, T, S) scores stay, as for every other score. No SDPA path: it is not a dot product.
    """

    chunk_elements = 1 << 24  # tanh features per chunk: 64 MiB in float32

    def __init__(self, n_head: int, head_dim: int, hidden: int | None = None):
        super().__init__(n_head, head_dim)
        hidden = hidden or head_dim
        self.w_q = nn.Parameter(torch.empty(n_head, head_dim, hidden))
        self.w_k = nn.Parameter(torch.empty(n_head, head_dim, hidden))
        self.v = nn.Parameter(torch.empty(n_head, hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-like: the tanh inputs keep the queries' scale; v sums the hidden units to order-1 scores."""
        hs, hidden = self.w_q.shape[1:]
        nn.init.normal_(self.w_q, std=1.0 / math.sqrt(hs))
        nn.init.normal_(self.w_k, std=1.0 / math.sqrt(hs))
        nn.init.normal_(self.v, std=1.0 / math.sqrt(hidden))

    @staticmethod
    def pair_scores(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, nh, t, h) and (B, nh, S, h) -> v . tanh(a_t + b_s): (B, nh, t, S)."""
        features = torch.tanh(a.unsqueeze(3) + b.unsqueeze(2))  # (B, nh, t, S, h)
        return features @ v[None, :, None, :, None]  # ... (nh, 1, h, 1) -> (B, nh, t, S, 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a = q @ self.w_q.to(q.dtype)  # (B, nh, T, h)
        b = k @ self.w_k.to(k.dtype)  # (B, nh, S, h)
        v = self.v.to(q.dtype)
        B, nh, T, h = a.shape
        S = b.size(2)
        step = max(1, self.chunk_elements // max(1, B * nh * S * h))  # queries per chunk
        recompute = torch.is_grad_enabled() and step < T
        chunks = []
        for start in range(0, T, step):
            a_chunk = a[:, :, start:start + step]
            if recompute:
                chunks.append(checkpoint(self.pair_scores, a_chunk, b, v, use_reentrant=False))
            else:
                chunks.append(self.pair_scores(a_chunk, b, v))
        return torch.cat(chunks, dim=2).squeeze(-1)  # (B, nh, T, S)


# ----------------------------------------------------------------------------------------------
# Weightings: how a row of scores becomes weights over the keys


class Weighting(nn.Module):
    """Base weighting. `fast` means SDPA computes the same thing (only softmax does)."""

    fast = False

    def __init__(self, config=None):
        super().__init__()


@register(WEIGHTINGS, "softmax")
class Softmax(Weighting):
    """Soft attention: a probability distribution over keys."""

    fast = True

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return F.softmax(scores, dim=-1)


@register(WEIGHTINGS, "hard")
class Hard(Weighting):
    """Hard attention: each query takes the value of exactly one key (a one-hot row of weights).

    Choosing is not differentiable, so training uses an estimator (temperature tau):
    - `gumbel`: straight-through Gumbel-softmax. The forward pass picks argmax(scores + Gumbel noise),
      a sample from softmax(scores); the backward pass uses the gradient of softmax((scores + noise) / tau).
    - `straight_through`: the forward pass picks argmax(scores); the backward pass uses softmax(scores / tau).
    - `reinforce`: the forward pass samples a key from p = softmax(scores / tau); no gradient flows
      through the choice. The scores learn from the score-function estimator (Williams, 1992; Xu et
      al., 2015): the model's forward hands the per-sequence losses to `reinforce_term`, whose
      gradient is sum_b w_b (loss_b - baseline) grad log p(choices of b), minus an entropy bonus.
    At evaluation `eval_mode` picks the argmax or a sample (Gumbel-max). Masked keys (score -inf) are
    never chosen; a row whose keys are all masked gets zero weights.
    """

    estimators = ("gumbel", "straight_through", "reinforce")
    eval_modes = ("argmax", "sample")
    baselines = BASELINES
    credits = CREDITS

    def __init__(self, config=None):
        super().__init__(config)
        self.temperature = getattr(config, "hard_attention_temperature", 1.0)
        self.estimator = getattr(config, "hard_attention_estimator", "gumbel")
        self.eval_mode = getattr(config, "hard_attention_eval", "argmax")
        self.log_prob = self.entropy = self.value = None  # (B, Q) of the last training forward pass (reinforce)
        if self.estimator == "reinforce":
            self.baseline_kind = getattr(config, "hard_attention_baseline", "batch")
            self.credit = getattr(config, "hard_attention_credit", "query")
            self.samples = getattr(config, "hard_attention_samples", 1)
            self.normalize = getattr(config, "hard_attention_normalize", False)
            self.momentum = getattr(config, "hard_attention_baseline_momentum", 0.9)
            self.entropy_weight = getattr(config, "hard_attention_entropy", 0.0)
            self.register_buffer("baseline", torch.tensor(float("nan")))  # nan: no step seen yet
            if self.normalize:
                self.register_buffer("advantage_rms", torch.tensor(float("nan")))
            if self.baseline_kind == "learned":
                self.value_head = ValueHead(config.n_head)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        has_key = scores.isfinite().any(dim=-1, keepdim=True)  # False for rows with every key masked
        dtype, scores = scores.dtype, scores.float().masked_fill(~has_key, 0.0)
        if self.training and self.estimator == "reinforce":
            return self.sample_for_reinforce(scores, has_key).to(dtype)
        noisy = self.training and self.estimator == "gumbel" or not self.training and self.eval_mode == "sample"
        if noisy:  # Gumbel(0, 1) noise: argmax(scores + noise) is a sample from softmax(scores)
            scores = scores + gumbel_noise(scores)
        choice = F.one_hot(scores.argmax(dim=-1), scores.size(-1)).to(scores.dtype)  # (B, nh, T, S)
        if self.training and torch.is_grad_enabled():
            soft = F.softmax(scores / self.temperature, dim=-1)
            choice = choice + (soft - soft.detach())  # the value of the choice, the gradient of soft
        return (choice * has_key).to(dtype)

    def sample_for_reinforce(self, scores: torch.Tensor, has_key: torch.Tensor) -> torch.Tensor:
        """One-hot sample from softmax(scores / tau); keep each query's log-probability and entropy (heads summed)."""
        log_p = F.log_softmax(scores / self.temperature, dim=-1)  # (B, nh, T, S)
        index = (log_p.detach() + gumbel_noise(log_p)).argmax(dim=-1, keepdim=True)  # (B, nh, T, 1)
        real = has_key.squeeze(-1)  # (B, nh, T): rows with a key to choose
        if torch.is_grad_enabled():
            chosen = log_p.gather(-1, index).squeeze(-1) * real
            entropy = -(log_p.exp() * log_p.masked_fill(log_p == float("-inf"), 0.0)).sum(-1) * real
            self.log_prob, self.entropy = chosen.sum(1), entropy.sum(1)  # (B, T): the query's heads together
            if self.baseline_kind == "learned":
                self.value = self.value_head(self.value_head.features(log_p))  # (B, T)
        choice = torch.zeros_like(scores).scatter_(-1, index, 1.0)  # (B, nh, T, S), no gradient
        return choice * has_key

    def advantages(self, token_loss: torch.Tensor, real: torch.Tensor, reach: str, n_queries: int,
                   value: torch.Tensor | None):
        """(advantage, count, reward per token) per query (B, Q); count: its target tokens in reach."""
        reach = reach if self.credit == "query" else "all"
        reward, count = rewards(token_loss, real, reach, n_queries)
        per_token = reward / count.clamp(min=1)
        first = self.baseline.isnan()  # no step seen yet (tensor ops, no Python branch: compiles)
        if self.baseline_kind == "moving_average":
            baseline = count * torch.where(first, 0.0, self.baseline)
        elif self.baseline_kind in ("batch", "samples"):
            groups = per_token.size(0) // self.samples if self.baseline_kind == "samples" else 1
            baseline = leave_one_out(per_token, count, groups)
        elif self.baseline_kind == "learned":
            baseline = count * value.detach()
        else:
            baseline = torch.zeros_like(reward)
        batch_mean = reward.sum() / count.sum().clamp(min=1)
        # a new tensor, not copy_: compiled (AOT autograd) backward passes may recompute the advantage
        # from the buffer after an in-place update, with the new baseline in place of the one used
        self.baseline = torch.where(first, batch_mean, self.momentum * self.baseline + (1 - self.momentum) * batch_mean)
        return (reward - baseline) * (count > 0), count, per_token

    def reinforce_term(self, token_loss: torch.Tensor, real: torch.Tensor, reach: str = "all") -> torch.Tensor:
        """Surrogate whose gradient is the REINFORCE estimate for the last forward pass; its value is 0.

        token_loss (B, T): each target's loss (the minus reward); real (B, T): whether it is scored; reach:
        which targets a choice can change (model/reinforce.py reach_of). The gradient is that of the mean
        loss over the real targets. Updates the running statistics after use.
        """
        log_prob, entropy, value = self.log_prob, self.entropy, self.value
        self.log_prob = self.entropy = self.value = None
        token_loss, n_targets = token_loss.detach().float(), real.sum().clamp(min=1)
        advantage, count, per_token = self.advantages(token_loss, real, reach, log_prob.size(1), value)
        if self.normalize:
            rms = advantage.square().sum().div(count.gt(0).sum().clamp(min=1)).sqrt()
            unset = self.advantage_rms.isnan()
            advantage = advantage / torch.where(unset, 1.0, self.advantage_rms).clamp(min=1e-8)
            self.advantage_rms = torch.where(unset, rms, self.momentum * self.advantage_rms + (1 - self.momentum) * rms)
        seq_weight = real.sum(1) / n_targets  # (B,) each sequence's share of the mean loss
        term = (advantage * log_prob).sum() / n_targets - self.entropy_weight * (seq_weight * entropy.sum(1)).sum()
        if value is not None:  # the value head's regression on each query's reward per token
            active = (count > 0).float()
            term = term + ((value - per_token).square() * active).sum() / active.sum().clamp(min=1)
        return term - term.detach()


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like `like`: argmax(logits + noise) is a sample from softmax(logits)."""
    uniform = torch.rand_like(like, dtype=torch.float).clamp_(min=torch.finfo(torch.float).tiny)
    return -torch.log(-torch.log(uniform))


def reinforce_term(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor | float:
    """Sum of the REINFORCE surrogates of every hard weighting that sampled in this forward pass (else 0).

    logits (B, T, V) and targets (B, T) give each target's loss (its minus reward); add the result to the
    mean loss (its value is 0, only its gradient counts).
    """
    pending = [m for m in model.modules() if isinstance(m, Hard) and m.log_prob is not None]
    if not pending:
        return 0.0
    token_loss = F.cross_entropy(logits.detach().flatten(0, 1).float(), targets.reshape(-1),
                                 ignore_index=ignore_index, reduction="none").view(targets.shape)  # (B, T)
    real = targets != ignore_index
    return sum(m.reinforce_term(token_loss, real, reach_of(model, m)) for m in pending)


# ----------------------------------------------------------------------------------------------
# Masks and the KV cache


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


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    A self-attention cache grows by the new positions at each call; a cross-attention cache is
    filled once from the encoder output and then reused at every decoding step.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k = self.v = None
        self.len = 0

    @classmethod
    def holding(cls, k: torch.Tensor, v: torch.Tensor, length: int) -> "KVCache":
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
        self.weighting = WEIGHTINGS[weighting or config.attn_weighting](config)
        # QK-norm: RMS-normalise each head's queries and keys (identity unless config.qk_norm)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        # rotary positions in self-attention only: a decoder position and an encoder position are in
        # different sequences, so cross-attention has no relative distance to encode
        rope = config.pos_emb == "rope" and not cross
        max_len = max(config.block_size, getattr(config, "source_block_size", 0))  # an encoder reads those
        self.rotary = Rotary(self.head_dim, max_len, config.rope_base) if rope else None
        self.dropout_p = config.dropout  # SDPA's dropout; the explicit path uses attn_dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # hook points, named after the tensor they carry
        self.q, self.k, self.v = HookPoint(), HookPoint(), HookPoint()  # (B, nh, T|S, hs)
        self.scores, self.pattern = HookPoint(), HookPoint()  # (B, nh, T, S)
        self.z = HookPoint()  # per-head output (B, nh, T, hs)
        self.out = HookPoint()  # (B, T, C)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, nh, T, hs)."""
        B, T, C = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, source: torch.Tensor | None, cache: KVCache | None, offset: int = 0,
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
                causal: bool = False, cache: KVCache | None = None, need_weights: bool = False,
                positions: torch.Tensor | None = None):
        """Attend from x (B, T, C) to itself or to `source` (B, S, C); return y (B, T, C) [, weights].

        `mask` (bool, broadcastable to (B, nh, T, S), True = may attend) is complete when given;
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
        if explicit:
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
                dropout_p=self.dropout_p if self.training else 0.0, scale=self.scorer.sdpa_scale)
        z = self.z(z)
        y = z.transpose(1, 2).contiguous().view(x.shape)  # re-assemble heads: (B, T, C)
        y = self.out(self.resid_dropout(self.c_proj(y)))
        return (y, weights) if need_weights else y
