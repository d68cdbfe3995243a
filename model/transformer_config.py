"""The model config a learner reads: TransformerConfig (the sizes and options every Transformer family shares)
and GPTConfig, each validated in __post_init__ from its rule table (`rules`, model/rules.py), then the checks
that relate two fields. The options of hard attention are a nested config (flat `hard_attention_*` keys on the
command line, in config files and checkpoints: `flatten` / `unflatten`).

The other families' configs (BERT, encoder-decoder, RNN) are in model/config.py, which re-exports these.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass

from model.attention import SCORES, WEIGHTINGS
from model.layers import ACTIVATIONS, NORMS
from model.rules import check_fields, flag, instance, number, one_of, size
from weights.errors import ConfigError

POSITIONS = ("learned", "rope")  # pos_emb: a learned wpe table added to the tokens, or rotary q and k


@dataclass
class HardAttentionConfig:
    """The options of hard attention (attn_weighting='hard', model/hard_attention.py), nested in the model
    configs as `hard_attention`. On the command line and in checkpoints each is a flat key with the
    prefix `hard_attention_` (--hard_attention_estimator=reinforce): see `flatten` / `unflatten`."""

    temperature: float = 1.0  # tau of the training estimator
    estimator: str = "gumbel"  # 'gumbel' (straight-through Gumbel-softmax), 'straight_through' or 'reinforce'
    eval: str = "argmax"  # at evaluation: 'argmax' or 'sample'
    # REINFORCE estimator only
    credit: str = "query"  # 'query': each choice gets the target losses it can change; 'own': its own target's
    # only (biased where a choice also changes later targets); 'sequence': its sequence's
    baseline: str = "batch"  # 'batch', 'moving_average', 'samples', 'learned' or 'none' (model/reinforce.py)
    baseline_momentum: float = 0.9  # decay per training step of the moving average (and of normalize's RMS)
    samples: int = 1  # each training sequence this many times per batch (with baseline='samples', RLOO)
    normalize: bool = False  # divide advantages by a running RMS of past steps' advantages
    entropy: float = 0.0  # weight of the entropy bonus on the sampling distribution

    estimators = ("gumbel", "straight_through", "reinforce")
    eval_modes = ("argmax", "sample")
    baselines = ("batch", "moving_average", "samples", "learned", "none")
    credits = ("query", "own", "sequence")
    reinforce_only = ("credit", "baseline", "baseline_momentum", "samples", "normalize", "entropy")
    rules = {  # messages name the flat keys (hard_attention_temperature)
        "temperature": number("must be > 0 and finite", above=0, below=math.inf),  # inf: -inf / inf = nan
        "estimator": one_of(estimators), "eval": one_of(eval_modes), "baseline": one_of(baselines),
        "credit": one_of(credits), "samples": size(), "normalize": flag(),
        "baseline_momentum": number("must be in [0, 1)", at_least=0, below=1),
        "entropy": number("must be >= 0 and finite", at_least=0, below=math.inf),
    }

    def __post_init__(self):
        check_fields(self, prefix="hard_attention_")
        if self.estimator == "reinforce" and (self.samples > 1) != (self.baseline == "samples"):
            raise ConfigError("hard_attention_baseline=samples and hard_attention_samples >= 2 go together "
                              f"(got {self.baseline!r} and {self.samples}); set both or neither.")


def nested_configs(cls) -> dict[str, type]:
    """The fields of a config class that hold a config themselves (e.g. hard_attention), with its class."""
    return {f.name: f.default_factory for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default_factory)}


def flatten(config) -> dict:
    """A config as a flat dict, a nested config's fields as `<field>_<name>` (hard_attention_estimator):
    the keys of the command line, config files and checkpoints."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            values.update({f"{f.name}_{k}": v for k, v in flatten(value).items()})
        else:
            values[f.name] = value
    return values


def unflatten(cls, values: dict) -> dict:
    """Keyword arguments for config class `cls` from flat values: `<field>_<name>` keys become the nested
    config `<field>`. Other keys pass through unchanged (the caller decides about unknown ones)."""
    kwargs = dict(values)
    for name, sub in nested_configs(cls).items():
        given = kwargs.pop(name, None)
        inner = dict(flatten(given)) if dataclasses.is_dataclass(given) else dict(given or {})
        for f in dataclasses.fields(sub):
            if f"{name}_{f.name}" in kwargs:
                inner[f.name] = kwargs.pop(f"{name}_{f.name}")
        kwargs[name] = sub(**inner)
    return kwargs


def from_flat(cls, values: dict):
    """Build config class `cls` from flat keyword values (`hard_attention_estimator=...` included)."""
    return cls(**unflatten(cls, values))


def flat_keys_too(cls):
    """Let the config class also take the flat keys of checkpoints and the command line as keywords, so that
    nanoGPT's habit `GPTConfig(**checkpoint["model_args"])` builds the nested configs."""
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **unflatten(type(self), kwargs))

    cls.__init__ = __init__
    return cls


@flat_keys_too
@dataclass
class TransformerConfig:
    """Sizes and options shared by every model family (decoder, encoder, encoder-decoder)."""

    # defaults: the small char-level model that `python train.py` trains on 2 CPU cores in minutes
    block_size: int = 64  # longest sequence the position embedding covers
    vocab_size: int = 65  # set from the dataset's meta.json by train.py
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # bias in Linear layers and LayerNorms (GPT-2 has them; faster without)
    attn_score: str = "scaled_dot"  # how a query is compared with a key (see model/attention.py)
    attn_weighting: str = "softmax"  # how scores become weights
    cross_attn_score: str = "scaled_dot"  # the same two choices for cross-attention (encoder-decoder only)
    cross_attn_weighting: str = "softmax"
    # options of attn_weighting='hard' (flat keys hard_attention_*; model/hard_attention.py)
    hard_attention: HardAttentionConfig = dataclasses.field(default_factory=HardAttentionConfig)
    activation: str = "gelu"  # MLP non-linearity (model/layers.py ACTIVATIONS); GPT-2 uses gelu_tanh
    # MLP hidden width (BERT's intermediate_size, GPT-2's n_inner); None: 4 * n_embd, or for a gated
    # activation (SwiGLU) 2/3 of that rounded up to a multiple of 8, which keeps the parameter count
    mlp_hidden: typing.Optional[int] = None
    norm: str = "layernorm"  # normalisation layer (model/layers.py NORMS)
    norm_eps: float = 1e-5
    post_norm: bool = False  # False: pre-norm blocks (GPT-2); True: norm after each residual add (BERT)
    attn_only: bool = False  # blocks without an MLP (attention-only models, as in Olsson et al. 2022)
    parallel_residual: bool = False  # the MLP reads the block's input, not the attention's output (GPT-NeoX/Pythia)
    # options of the modern recipe (config/shakespeare_char_cpu_modern.py); the defaults are GPT-2's
    pos_emb: str = "learned"  # 'learned' (a wpe table added to the tokens) or 'rope' (rotary q and k)
    rope_base: float = 10000.0  # rotary angle base: position m turns feature pair i by m * base^(-2i/head_dim)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before the scores
    zero_init: bool = False  # residual output projections (and an untied head) start at zero
    tie_embeddings: bool = True  # LM head shares the token embedding's weights
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0 disables
    rotary_dim: int = 0  # features of each head that rope rotates, from the first (GPT-NeoX: a part); 0: all

    rules = {
        "block_size": size(), "vocab_size": size(), "n_layer": size(), "n_head": size(), "n_embd": size(),
        "dropout": number("must be a number in [0, 1)", at_least=0, below=1),
        "attn_score": one_of(SCORES), "attn_weighting": one_of(WEIGHTINGS),
        "cross_attn_score": one_of(SCORES), "cross_attn_weighting": one_of(WEIGHTINGS),
        "hard_attention": instance(HardAttentionConfig),
        "activation": one_of(ACTIVATIONS), "mlp_hidden": size(none=True, text="must be a positive integer or None "
                                                                          "(4 * n_embd)"),
        "norm": one_of(NORMS),
        "norm_eps": number("must be a positive number (the norms add it to the variance)", above=0, below=math.inf),
        "pos_emb": one_of(POSITIONS, "must be 'learned' or 'rope'"),
        "rope_base": number("must be greater than 1", above=1),
        "logit_softcap": number("must be >= 0 (0 disables it)", at_least=0),
        "rotary_dim": size(0, "must be an even number of features up to head_dim (0: all of them)"),
    }

    def __post_init__(self):
        check_fields(self)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick n_head among {[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0][:12]}."
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope rotates pairs of features, so head_dim (n_embd / n_head = {self.head_dim}) "
                              "must be even; change n_embd or n_head.")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ConfigError(f"rotary_dim must be an even number of features up to head_dim {self.head_dim} "
                              f"(0: all of them), got {self.rotary_dim!r}.")
        if self.parallel_residual and (self.post_norm or self.attn_only):
            raise ConfigError("parallel_residual adds attention and MLP to one pre-norm stream; drop it, or "
                              "post_norm / attn_only.")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width (each half's, for a gated activation): mlp_hidden, or the default rule."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if getattr(ACTIVATIONS[self.activation], "gated", False):
            return 8 * math.ceil(8 * self.n_embd / 3 / 8)
        return 4 * self.n_embd

    def with_vocab_size(self, vocab_size: int) -> "TransformerConfig":
        """A copy for another vocabulary (train.py sets the dataset's)."""
        return dataclasses.replace(self, vocab_size=vocab_size)


@flat_keys_too
@dataclass
class GPTConfig(TransformerConfig):
    """A GPT-style decoder: causal self-attention, LM head tied to the token embedding."""


__all__ = ["ConfigError", "HardAttentionConfig", "flatten", "unflatten", "from_flat", "flat_keys_too",
           "nested_configs", "TransformerConfig", "GPTConfig", "POSITIONS"]
