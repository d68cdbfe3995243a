"""The model config a learner reads: TransformerConfig (the sizes and options every Transformer family shares)
and GPTConfig, each validated in __post_init__ from its rule table (`rules`, model/rules.py), then the checks
that relate two fields. A plug-in's options (hard attention's) are a nested config that it registers in `OPTIONS`;
model/options.py lets these classes take them as flat keys too (`hard_attention_*`, as checkpoints, config files
and the command line write them).

The other families' configs (BERT, encoder-decoder, RNN) are in model/config.py, which re-exports these.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass

from model.attention import SCORES, WEIGHTINGS
from model.layers import ACTIVATIONS, NORMS
from model.rules import check_fields, number, one_of, registered, size
from weights.errors import ConfigError

POSITIONS = ("learned", "rope")  # pos_emb: a learned wpe table added to the tokens, or rotary q and k
OPTIONS: dict[str, type] = {}  # a plug-in's own options, one nested config each, by field name: hard_attention


def plug_in_options(name: str):
    """A config field holding the options of plug-in `name`: the nested config it registered in OPTIONS."""
    return dataclasses.field(default_factory=lambda: OPTIONS[name]())


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
    # options of attn_weighting='hard' (model/hard_attention_config.py; flat keys hard_attention_*)
    hard_attention: object = plug_in_options("hard_attention")
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
        "hard_attention": registered(OPTIONS, "hard_attention"),
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


@dataclass
class GPTConfig(TransformerConfig):
    """A GPT-style decoder: causal self-attention, LM head tied to the token embedding."""


__all__ = ["ConfigError", "OPTIONS", "plug_in_options", "TransformerConfig", "GPTConfig", "POSITIONS"]
