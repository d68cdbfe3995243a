"""Typed configuration: model and training dataclasses, config files and --key=value overrides.

A config file (``config/NAME.py``) is data, not code: every statement must be ``name = literal``
(numbers, strings, booleans, None, lists, dicts). It is parsed with ``ast``, never executed.
"""

import ast
import dataclasses
import os
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """A user-caused configuration mistake; its message is one sentence saying what to do."""


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
    hard_attention_temperature: float = 1.0  # tau of the hard weighting's training estimator
    hard_attention_estimator: str = "gumbel"  # 'gumbel' (straight-through Gumbel-softmax), 'straight_through' or 'reinforce'
    hard_attention_eval: str = "argmax"  # hard attention at evaluation: 'argmax' or 'sample'
    # REINFORCE estimator only (hard_attention_estimator='reinforce'; model/attention.py Hard)
    hard_attention_baseline: str = "moving_average"  # subtracted from the per-sequence loss: 'moving_average' or 'none'
    hard_attention_baseline_momentum: float = 0.9  # the moving average's decay per training step
    hard_attention_entropy: float = 0.0  # weight of the entropy bonus on the sampling distribution
    activation: str = "gelu"  # MLP non-linearity (model/layers.py ACTIVATIONS); GPT-2 uses gelu_tanh
    norm: str = "layernorm"  # normalisation layer (model/layers.py NORMS)
    norm_eps: float = 1e-5
    post_norm: bool = False  # False: pre-norm blocks (GPT-2); True: norm after each residual add (BERT)
    # options of the modern recipe (config/shakespeare_char_cpu_modern.py); the defaults are GPT-2's
    pos_emb: str = "learned"  # 'learned' (a wpe table added to the tokens) or 'rope' (rotary q and k)
    rope_base: float = 10000.0  # rotary angle base: position m turns feature pair i by m * base^(-2i/head_dim)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before the scores
    zero_init: bool = False  # residual output projections (and an untied head) start at zero
    tie_embeddings: bool = True  # LM head shares the token embedding's weights
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0 disables

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick n_head among {[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0][:12]}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        from model.attention import check_variants  # late imports: those modules import this one
        from model.layers import ACTIVATIONS, NORMS

        check_variants(self)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}.")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}.")
        if self.pos_emb not in ("learned", "rope"):
            raise ConfigError(f"pos_emb must be 'learned' or 'rope', got {self.pos_emb!r}.")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope rotates pairs of features, so head_dim (n_embd / n_head = {self.head_dim}) "
                              "must be even; change n_embd or n_head.")
        if not self.rope_base > 1.0:
            raise ConfigError(f"rope_base must be greater than 1, got {self.rope_base}.")
        if not self.logit_softcap >= 0.0:
            raise ConfigError(f"logit_softcap must be >= 0 (0 disables it), got {self.logit_softcap}.")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


@dataclass
class GPTConfig(TransformerConfig):
    """A GPT-style decoder: causal self-attention, LM head tied to the token embedding."""


@dataclass
class BERTConfig(TransformerConfig):
    """A BERT-style encoder: bidirectional self-attention, MLM head tied to the token embedding.

    Defaults follow BERT: post-norm blocks, exact GELU, LayerNorm eps 1e-12, biases everywhere.
    """

    bias: bool = True
    norm_eps: float = 1e-12
    post_norm: bool = True
    type_vocab_size: int = 2  # segment (sentence A/B) embeddings; 0 leaves them out

    def __post_init__(self):
        super().__post_init__()
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size must be 0 (no segment embeddings) or more, got {self.type_vocab_size}.")


@dataclass
class Seq2SeqConfig(TransformerConfig):
    """An encoder-decoder: bidirectional encoder, decoder with causal self- and cross-attention.

    block_size and vocab_size are the decoder's (target side); the source side has its own sizes,
    0 meaning "the same as the target's". Equal vocabularies share one token embedding.
    """

    n_encoder_layer: int = 0  # 0: n_layer
    source_block_size: int = 0  # longest source sequence; 0: block_size
    source_vocab_size: int = 0  # 0: one vocabulary (and embedding) for source and target

    def __post_init__(self):
        super().__post_init__()
        for name in ("n_encoder_layer", "source_block_size", "source_vocab_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a positive integer, or 0 for the target side's value.")

    # resolved sizes (properties, so that dataclasses.replace(vocab_size=...) keeps "same as target")
    @property
    def encoder_layers(self) -> int:
        """Number of encoder blocks."""
        return self.n_encoder_layer or self.n_layer

    @property
    def source_len(self) -> int:
        """Longest source sequence the encoder's position embedding covers."""
        return self.source_block_size or self.block_size

    @property
    def source_vocab(self) -> int:
        """Size of the source vocabulary."""
        return self.source_vocab_size or self.vocab_size

    @property
    def shared_vocab(self) -> bool:
        """True when source and target use one vocabulary and one embedding table."""
        return self.source_vocab == self.vocab_size


@dataclass
class RNNConfig:
    """An RNN encoder-decoder (model/rnn.py): a GRU or LSTM encoder (bidirectional by default) and decoder.

    attention=False: the decoder starts from, and reads at every step, one fixed-size summary of the
    source (Cho et al., 2014). attention=True: each decoder state queries the encoder states through
    the shared Attention module (Luong et al., 2015; attn_score='additive' is Bahdanau et al.'s score).
    Sizes follow Seq2SeqConfig: block_size/vocab_size are the target side's, 0 means "the same".
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
    hard_attention_temperature: float = 1.0  # the options of attn_weighting='hard', as in TransformerConfig
    hard_attention_estimator: str = "gumbel"
    hard_attention_eval: str = "argmax"
    hard_attention_baseline: str = "moving_average"
    hard_attention_baseline_momentum: float = 0.9
    hard_attention_entropy: float = 0.0
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True  # the output layer shares the target embedding's weights
    # what the shared Attention module reads; fixed for this family (no positions, no QK-norm)
    qk_norm = False
    pos_emb = "none"
    norm_eps = 1e-5
    logit_softcap = 0.0
    cells = ("gru", "lstm")

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_embd", "n_head"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("source_block_size", "source_vocab_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a positive integer, or 0 for the target side's value.")
        if self.cell not in self.cells:
            raise ConfigError(f"cell must be one of {', '.join(self.cells)}, got {self.cell!r}.")
        if self.bidirectional and self.n_embd % 2:
            raise ConfigError(f"a bidirectional encoder gives n_embd / 2 to each direction; make n_embd "
                              f"({self.n_embd}) even or set bidirectional=False.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        defaults = RNNConfig.__dataclass_fields__
        if not self.attention and any(getattr(self, k) != defaults[k].default for k in ("attn_score", "attn_weighting")):
            raise ConfigError("attn_score and attn_weighting choose the attention, which attention=False turns off; "
                              "drop them or set attention=True.")
        from model.attention import check_variants  # late import: that module imports this one

        check_variants(self)

    # the decoder's attention is cross-attention: check_variants reads these names
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
    def source_len(self) -> int:
        """Longest source sequence."""
        return self.source_block_size or self.block_size

    @property
    def source_vocab(self) -> int:
        """Size of the source vocabulary."""
        return self.source_vocab_size or self.vocab_size

    @property
    def shared_vocab(self) -> bool:
        """True when source and target use one vocabulary and one embedding table."""
        return self.source_vocab == self.vocab_size


@dataclass
class TrainConfig:
    """Everything train.py needs besides the model's own sizes (nanoGPT's names where it has one)."""

    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"  # 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, ...) or a Hugging Face folder
    overwrite: bool = False  # allow a fresh run to replace a checkpoint already in out_dir
    eval_interval: int = 250
    log_interval: int = 50
    eval_iters: int = 20
    eval_only: bool = False
    always_save_checkpoint: bool = True
    # data
    model_type: str = "gpt"
    dataset: str = "shakespeare_char"
    data_dir: str = ""  # defaults to data/<dataset>
    batch_size: int = 16
    # micro-batches per optimizer step, summed over all ranks (global): a step sees batch_size *
    # gradient_accumulation_steps sequences however many processes share it; divisible by their number
    gradient_accumulation_steps: int = 1
    # optimizer and schedule
    learning_rate: float = 1e-3
    max_iters: int = 2500
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 2500
    min_lr: float = 1e-4
    optimizer: str = "adamw"  # 'adamw', or 'muon': Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (the schedule scales it like learning_rate)
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # system
    device: str = "auto"  # 'auto' picks cuda, then mps, then cpu
    dtype: str = "auto"  # 'auto': bfloat16 on CUDA where supported, else float32
    compile: bool = False
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (else DDP)
    seed: int = 1337
    max_nonfinite_steps: int = 5  # stop after this many steps in a row with a NaN/inf loss (each is skipped)
    # logging
    wandb_log: bool = False
    wandb_project: str = "headscope"
    wandb_run_name: str = "run"
    attn_stats_interval: int = 0  # every N iterations: per-head attention statistics (+ heatmaps to wandb); 0 = off

    def __post_init__(self):
        check_init_from(self.init_from, ("scratch", "resume"))
        for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "log_interval", "eval_iters",
                     "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.max_iters < 0 or self.warmup_iters < 0:
            raise ConfigError("max_iters and warmup_iters must not be negative.")
        for name, ok, rule in (("learning_rate", self.learning_rate > 0, "> 0"), ("min_lr", self.min_lr >= 0, ">= 0"),
                               ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"), ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = no clipping)")):
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)}.")
        if self.attn_stats_interval < 0:
            raise ConfigError(f"attn_stats_interval must be 0 (off) or positive, got {self.attn_stats_interval}.")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}.")
        if self.optimizer == "muon" and not (self.muon_lr > 0 and 0 <= self.muon_momentum < 1
                                             and self.muon_weight_decay >= 0):
            raise ConfigError("muon needs muon_lr > 0, muon_momentum in [0, 1) and muon_weight_decay >= 0.")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be one of auto, float32, bfloat16, float16, got {self.dtype!r}.")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}.")


@dataclass
class SampleConfig:
    """Options of sample.py."""

    out_dir: str = "out"  # folder holding ckpt.pt
    init_from: str = "resume"  # 'resume' (the checkpoint in out_dir), a GPT-2 name or a Hugging Face folder
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 2
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 is greedy
    top_k: typing.Optional[int] = 200  # 1 is greedy; None keeps every token
    top_p: typing.Optional[float] = None  # nucleus sampling: keep the smallest set of tokens with this mass
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    use_cache: bool = True
    attention_dir: str = ""  # write attention maps (PNG, HTML, npz) of the first sample here
    ablate: str = ""  # heads to knock out while sampling: LAYER.HEAD,... e.g. 0.1,2.3
    ablate_mode: str = "zero"  # 'zero' or 'mean' (each head's mean output over the prompt)
    candidates: int = 5  # fill-mask (BERT): candidates printed for each [MASK]
    # encoder-decoder only: how the output is chosen
    decoding: str = "greedy"  # greedy, sample (temperature, top_k, top_p) or beam
    beam_size: int = 4
    length_penalty: float = 1.0  # beam scores are log-probability / length ** length_penalty

    def __post_init__(self):
        if self.ablate_mode not in ("zero", "mean"):
            raise ConfigError(f"ablate_mode must be 'zero' or 'mean', got {self.ablate_mode!r}.")
        if self.candidates < 1:
            raise ConfigError(f"candidates must be a positive integer, got {self.candidates}.")
        if self.decoding not in ("greedy", "sample", "beam"):
            raise ConfigError(f"decoding must be greedy, sample or beam, got {self.decoding!r}.")
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be a positive integer, got {self.beam_size}.")
        check_init_from(self.init_from, ("resume",))
        if self.num_samples < 1 or self.max_new_tokens < 0:
            raise ConfigError("num_samples must be at least 1 and max_new_tokens not negative.")
        if not self.temperature >= 0:  # also rejects nan
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be a positive integer or None, got {self.top_k}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}.")


MODEL_CONFIGS: dict[str, type] = {"gpt": GPTConfig, "bert": BERTConfig}
MODEL_CONFIGS["seq2seq"] = Seq2SeqConfig
MODEL_CONFIGS["rnn"] = RNNConfig


def check_family_keys(values: dict, model_type: str) -> None:
    """Raise a ConfigError for a model option that belongs to another family than model_type."""
    own = set(field_types(TrainConfig)) | set(field_types(MODEL_CONFIGS.get(model_type, GPTConfig)))
    for key in values:
        if key in own:
            continue
        owners = [name for name, cls in MODEL_CONFIGS.items() if key in field_types(cls)]
        if owners:
            raise ConfigError(f"{key} is an option of model_type={' or '.join(owners)}, not of "
                              f"model_type={model_type}; drop --{key} or pick another --model_type.")


def check_init_from(init_from: str, own: tuple[str, ...]) -> None:
    """init_from must be one of `own`, a GPT-2 name or an existing folder (of Hugging Face weights)."""
    from model.pretrained import HUB_MODELS  # late import: that module imports this one

    if init_from not in own + HUB_MODELS and not os.path.isdir(init_from):
        raise ConfigError(f"init_from must be {', '.join(own)}, one of {', '.join(HUB_MODELS)} or a folder with "
                          f"Hugging Face GPT-2 weights, got {init_from!r}.")


def field_types(cls) -> dict[str, type]:
    """Map each dataclass field name to its resolved type."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, value, typ):
    """Return value converted to typ (from a string when it came from the command line), or raise."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return coerce(key, value, args[0])
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key} expects a value of type {typ.__name__}, got {value!r}.")


def read_config_file(path: str) -> dict:
    """Read `name = literal` assignments from a config file without executing it."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"config file {path} cannot be read; pass an existing UTF-8 file such as "
                          "config/shakespeare_char.py.")
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as e:  # a NUL byte: SyntaxError without a line, or ValueError
        line = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
        raise ConfigError(f"{path}{line}: syntax error; a config file holds only `name = value` lines.")
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path} line {node.lineno}: only `name = value` assignments are allowed in a config file.")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError):  # TypeError: an unhashable key, e.g. {[1]: 2}
            raise ConfigError(f"{path} line {node.lineno}: the value must be a literal (number, string, True/False, None).")
    return values


def parse_args(argv: list[str]) -> dict:
    """Turn `[config/NAME.py] [--key=value ...]` into one dict of raw values, the file read first."""
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                value = True  # `--compile` alone means --compile=True; a non-boolean key then fails its type check
            values[key] = value
        elif arg.endswith(".py") or "/" in arg:
            values.update(read_config_file(arg))
        else:
            raise ConfigError(f"unexpected argument {arg!r}; use a config file path or --key=value.")
    return values


def build(values: dict, *classes: type) -> list:
    """Split raw values among dataclasses by field name, type-check them and build each one."""
    types = [field_types(cls) for cls in classes]
    known = set().union(*types)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys are: {', '.join(sorted(known))}.")
    built = []
    for cls, typs in zip(classes, types):
        kwargs = {k: coerce(k, v, typs[k]) for k, v in values.items() if k in typs}
        built.append(cls(**kwargs))
    return built


def to_dict(cfg) -> dict:
    """A dataclass as a plain dict (safe to store in a weights_only checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, values: dict):
    """Rebuild a dataclass from a stored dict, ignoring keys this version no longer has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


__all__ = ["ConfigError", "TransformerConfig", "GPTConfig", "BERTConfig", "Seq2SeqConfig", "RNNConfig", "TrainConfig",
           "SampleConfig", "MODEL_CONFIGS", "check_family_keys",
           "read_config_file", "parse_args", "build", "to_dict", "from_dict", "coerce"]
