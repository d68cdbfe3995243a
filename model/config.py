"""The model configs of every family: GPTConfig and TransformerConfig (model/transformer_config.py, the one a
learner reads, re-exported here), and the configs of BERT, the encoder-decoder and the RNN encoder-decoder.
Each validates itself in __post_init__ from its rule table (`rules`, model/rules.py), then the checks that
relate two fields.

Training and sampling options, and the config-file / --key=value parser, are in training/config.py.
"""

import dataclasses
from dataclasses import dataclass

from model.attention import SCORES, WEIGHTINGS
from model.hard_attention_config import HardAttentionConfig
from model.options import flat_keys_too, flatten, from_flat, nested_configs, unflatten
from model.rules import check_fields, one_of, registered, size
from model.transformer_config import OPTIONS, POSITIONS, GPTConfig, TransformerConfig, plug_in_options
from weights.errors import ConfigError

SOURCE_SIZE = size(0, "must be a positive integer, or 0 for the target side's value")  # 0: the target side's
# the learner's configs take the flat keys of checkpoints and the command line too, as every config here does
flat_keys_too(TransformerConfig)
flat_keys_too(GPTConfig)


@flat_keys_too
@dataclass
class BERTConfig(TransformerConfig):
    """A BERT-style encoder: bidirectional self-attention, MLM head tied to the token embedding.

    Defaults follow BERT: post-norm blocks, exact GELU, LayerNorm eps 1e-12, biases everywhere.
    """

    bias: bool = True
    norm_eps: float = 1e-12
    post_norm: bool = True
    type_vocab_size: int = 2  # segment (sentence A/B) embeddings; 0 leaves them out
    position_offset: int = 0  # the first position's row in wpe (RoBERTa: its padding id + 1)
    mlm_head: bool = True  # False: an encoder alone (Hugging Face's BertModel), its forward gives hidden states

    rules = {**TransformerConfig.rules, "type_vocab_size": size(0, "must be 0 (no segment embeddings) or more"),
             "position_offset": size(0, "must be 0 or more")}


@flat_keys_too
@dataclass
class Seq2SeqConfig(TransformerConfig):
    """An encoder-decoder: bidirectional encoder, decoder with causal self- and cross-attention.

    block_size and vocab_size are the decoder's (target side); the source side has its own sizes.
    Given as 0, each source size is set to the target side's in __post_init__. Equal vocabularies share
    one token embedding.
    """

    n_encoder_layer: int = 0  # 0: n_layer
    source_block_size: int = 0  # longest source sequence; 0: block_size
    source_vocab_size: int = 0  # 0: one vocabulary (and embedding) for source and target

    rules = {**TransformerConfig.rules, "n_encoder_layer": SOURCE_SIZE, "source_block_size": SOURCE_SIZE,
             "source_vocab_size": SOURCE_SIZE}

    def __post_init__(self):
        super().__post_init__()
        self.n_encoder_layer = self.n_encoder_layer or self.n_layer
        self.source_block_size = self.source_block_size or self.block_size
        self.source_vocab_size = self.source_vocab_size or self.vocab_size

    def with_vocab_size(self, vocab_size: int) -> "Seq2SeqConfig":
        """A copy for another vocabulary; a source vocabulary shared with the target follows it."""
        source = vocab_size if self.shared_vocab else self.source_vocab_size
        return dataclasses.replace(self, vocab_size=vocab_size, source_vocab_size=source)

    @property
    def shared_vocab(self) -> bool:
        """True when source and target use one vocabulary and one embedding table."""
        return self.source_vocab_size == self.vocab_size


@flat_keys_too
@dataclass
class RNNConfig:
    """An RNN encoder-decoder (model/rnn.py): a GRU or LSTM encoder (bidirectional by default) and decoder.

    attention=False: the decoder starts from, and reads at every step, one fixed-size summary of the
    source (Cho et al., 2014). attention=True: each decoder state queries the encoder states through
    the shared Attention module (Luong et al., 2015; attn_score='additive' is Bahdanau et al.'s score).
    Sizes follow Seq2SeqConfig: block_size/vocab_size are the target side's; each source size given
    as 0 is set to the target side's in __post_init__.
    """

    block_size: int = 64  # longest target (BOS + tokens, or tokens + EOS) decoded
    vocab_size: int = 65  # set from the dataset's meta.json by train.py
    source_block_size: int = 0  # longest source; 0: block_size
    source_vocab_size: int = 0  # 0: one vocabulary (and embedding) for source and target
    cell: str = "gru"  # recurrent cell: 'gru' or 'lstm'
    n_layer: int = 1  # stacked recurrent layers, in the encoder and in the decoder
    n_embd: int = 128  # token embeddings, decoder state and encoder states (both directions together)
    bidirectional: bool = True  # encoder reads the source both ways (n_embd / 2 per direction)
    attention: bool = True
    n_head: int = 1  # heads of the decoder's attention over the encoder states
    attn_score: str = "additive"  # how a decoder state is compared with an encoder state
    attn_weighting: str = "softmax"
    hard_attention: HardAttentionConfig = plug_in_options("hard_attention")  # as in TransformerConfig
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True  # the output layer shares the target embedding's weights
    # what the shared Attention module reads; fixed for this family (no positions, no QK-norm)
    qk_norm = False
    pos_emb = "none"
    norm_eps = 1e-5
    logit_softcap = 0.0
    cells = ("gru", "lstm")
    rules = {
        "block_size": size(), "vocab_size": size(), "n_layer": size(), "n_embd": size(), "n_head": size(),
        "source_block_size": SOURCE_SIZE, "source_vocab_size": SOURCE_SIZE, "cell": one_of(cells),
        "dropout": TransformerConfig.rules["dropout"], "attn_score": one_of(SCORES), "attn_weighting": one_of(WEIGHTINGS),
        "hard_attention": registered(OPTIONS, "hard_attention"),
    }

    def __post_init__(self):
        check_fields(self)
        if self.bidirectional and self.n_embd % 2:
            raise ConfigError(f"a bidirectional encoder gives n_embd / 2 to each direction; make n_embd "
                              f"({self.n_embd}) even or set bidirectional=False.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")
        defaults = RNNConfig.__dataclass_fields__
        if not self.attention and any(getattr(self, k) != defaults[k].default for k in ("attn_score", "attn_weighting")):
            raise ConfigError("attn_score and attn_weighting choose the attention, which attention=False turns off; "
                              "drop them or set attention=True.")
        self.source_block_size = self.source_block_size or self.block_size
        self.source_vocab_size = self.source_vocab_size or self.vocab_size

    # the decoder's attention is cross-attention (the shared Attention module reads these names)
    @property
    def cross_attn_score(self) -> str:
        """The score of the decoder's attention over the encoder states (= attn_score)."""
        return self.attn_score

    @property
    def cross_attn_weighting(self) -> str:
        """The weighting of the decoder's attention (= attn_weighting)."""
        return self.attn_weighting

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def shared_vocab(self) -> bool:
        """True when source and target use one vocabulary and one embedding table."""
        return self.source_vocab_size == self.vocab_size

    def with_vocab_size(self, vocab_size: int) -> "RNNConfig":
        """A copy for another vocabulary; a source vocabulary shared with the target follows it."""
        source = vocab_size if self.shared_vocab else self.source_vocab_size
        return dataclasses.replace(self, vocab_size=vocab_size, source_vocab_size=source)


__all__ = ["ConfigError", "HardAttentionConfig", "flatten", "unflatten", "from_flat", "flat_keys_too", "nested_configs",
           "POSITIONS", "TransformerConfig", "GPTConfig", "BERTConfig", "Seq2SeqConfig", "RNNConfig"]
