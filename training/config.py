"""Training and sampling options, and reading them: config files and --key=value overrides.

A config file (``config/NAME.py``) is data, not code: every statement must be ``name = literal``
(numbers, strings, booleans, None, lists, dicts), where a number may be written as arithmetic on numbers
(``batch_size = 5 * 8``, as nanoGPT's configs do). It is parsed with ``ast``, never executed.
The model's own sizes are the model configs of model/config.py.
"""

import ast
import dataclasses
import operator
import os
import re
import textwrap
import typing
from dataclasses import dataclass

from model.config import flatten, nested_configs, unflatten
from model.rules import Rule, check_fields, number, one_of, size
from data.documents import ALIGNS, Packing
from model.sampling import Sampling
from training.muon import ORTHOGONALIZERS
from weights.common import ConfigError
from weights.hf_gpt2 import HUB_MODELS


DTYPES = ("auto", "float32", "bfloat16", "float16")
ACCUMULATION = "must be a positive integer, or None for one micro-batch per process"


@dataclass
class TrainConfig:
    """Everything train.py needs besides the model's own sizes (nanoGPT's names where it has one)."""

    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"  # 'scratch', 'resume', a GPT-2 name (gpt2, gpt2-medium, ...) or a Hugging Face folder
    overwrite: bool = False  # allow a fresh run to replace a checkpoint already in out_dir
    eval_interval: int = 250
    log_interval: int = 50
    eval_iters: typing.Union[int, typing.Literal["all"]] = 20  # batches per split, or 'all': every window of val
    eval_only: bool = False
    eval_file: str = ""  # with --eval_only: also every window of this UTF-8 text file (a GPT)
    always_save_checkpoint: bool = True
    keep_best: bool = False  # also keep the best model (lowest val loss) as out_dir/best.pt
    # data
    model_type: str = "gpt"
    dataset: str = "shakespeare_plays_char"  # the 38 plays (data/loader.py DATASET_FOLDERS), not tiny shakespeare
    data_dir: str = ""  # defaults to data/<dataset>
    batch_size: int = 16
    # documents of sharded data (separated by <|endoftext|> or [EOS]; GPT and BERT; data/documents.py)
    doc_mask: bool = False  # a token attends only to its own document; positions restart at each document
    batch_align: str = "window"  # 'window': rows start anywhere; 'doc': at a document, packing whole documents
    doc_boundary_loss: bool = False  # with doc_mask: still train a document's last token to predict the next separator
    # micro-batches per optimizer step, summed over all ranks (global): a step sees batch_size *
    # gradient_accumulation_steps sequences however many processes share it; divisible by their number.
    # None: one per process (train.py derives it, or a resumed run takes its checkpoint's; training/distributed.py)
    gradient_accumulation_steps: typing.Optional[int] = None
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
    lr_schedule: str = "cosine"  # after warmup: 'cosine' decay, or 'wsd': stable, then a linear cooldown to min_lr
    cooldown_frac: float = 0.4  # wsd: the share of lr_decay_iters spent cooling down
    optimizer: str = "adamw"  # 'adamw', or 'muon': Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (the schedule scales it like learning_rate)
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_method: str = "newton_schulz"  # orthogonaliser: 'newton_schulz' (Jordan's quintic) or 'polar_express'
    muon_bf16: bool = False  # its products in bfloat16 on the CPU too (as always on CUDA): faster with AMX/avx512_bf16
    normuon: float = 0.0  # NorMuon: decay of each neuron's running mean of squared updates (0.95); 0: plain Muon
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
    head_probe: bool = False  # at every evaluation: each head's induction/previous-token score and the in-context score

    rules = {
        "batch_size": size(), "gradient_accumulation_steps": size(none=True, text=ACCUMULATION),
        "eval_interval": size(), "log_interval": size(), "max_nonfinite_steps": size(),
        "eval_iters": Rule(lambda v: v == "all" or (type(v) is int and v >= 1),
                           lambda: "must be a positive integer or 'all'"),
        "max_iters": size(0, "must not be negative"), "warmup_iters": size(0, "must not be negative"),
        "learning_rate": number("must be > 0", above=0), "min_lr": number("must be >= 0", at_least=0),
        "beta1": number("must be in [0, 1)", at_least=0, below=1), "beta2": number("must be in [0, 1)", at_least=0, below=1),
        "weight_decay": number("must be >= 0", at_least=0), "grad_clip": number("must be >= 0 (0 = no clipping)", at_least=0),
        "attn_stats_interval": size(0, "must be 0 (off) or positive"),
        "lr_schedule": one_of(("cosine", "wsd")), "cooldown_frac": number("must be in [0, 1]", at_least=0, at_most=1),
        "optimizer": one_of(("adamw", "muon")), "muon_method": one_of(ORTHOGONALIZERS),
        "normuon": number("must be in [0, 1) (0: plain Muon)", at_least=0, below=1), "batch_align": one_of(ALIGNS), "dtype": one_of(DTYPES),
        "device": Rule(lambda v: v == "auto" or (isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda", "mps")),
                       lambda: "must be auto, cpu, cuda, cuda:N or mps"),
    }

    def __post_init__(self):
        check_fields(self)
        if self.optimizer == "muon" and not (self.muon_lr > 0 and 0 <= self.muon_momentum < 1
                                             and self.muon_weight_decay >= 0):
            raise ConfigError("muon needs muon_lr > 0, muon_momentum in [0, 1) and muon_weight_decay >= 0.")
        self.packing  # Packing refuses doc_boundary_loss without doc_mask
        if self.eval_file and not self.eval_only:
            raise ConfigError("--eval_file is evaluated by --eval_only=True (with --init_from=resume or a GPT-2); "
                              "add --eval_only=True.")

    @property
    def packing(self) -> Packing:
        """How the batch makers treat documents (data/documents.py)."""
        return Packing(self.doc_mask, self.batch_align, self.doc_boundary_loss)


@dataclass
class SampleConfig:
    """Options of sample.py."""

    out_dir: str = "out"  # folder holding ckpt.pt
    checkpoint: str = "ckpt.pt"  # the file in out_dir to sample from (best.pt: train.py --keep_best=True)
    init_from: str = "resume"  # 'resume' (the checkpoint in out_dir), a GPT-2 name, a Hugging Face folder or Hub id
    tokenizer: str = ""  # for --init_from=<folder> without tokenizer files: 'gpt2' or a folder holding them
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    prompt_prefix: bool = True  # GPT: start prompts as the tokenizer's template does (Llama's <s>; ours add none)
    prompts: str = ""  # a file of prompts, one per line, continued together in one padded batch (GPT)
    num_samples: int = 2
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 is greedy
    top_k: typing.Optional[int] = 200  # 1 is greedy; None keeps every token
    top_p: typing.Optional[float] = None  # nucleus sampling: keep the smallest set of tokens with this mass
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    use_cache: bool = True
    fast_decode: bool = False  # GPT: static KV cache + compiled one-token step (compiles first: seconds to minutes)
    # GPT: continue each prompt's last document (from its last <|endoftext|> or [EOS]), all that a model trained
    # with --doc_mask sees; None: as the checkpoint was trained
    doc_mask: typing.Optional[bool] = None
    attention_dir: str = ""  # write attention maps (PNG, HTML, npz) of the first sample here
    attention_top_k: int = 8  # a long prompt's viewer keeps each query row's k largest weights (npz: all)
    ablate: str = ""  # heads to knock out while sampling: LAYER.HEAD,... e.g. 0.1,2.3
    ablate_mode: str = "zero"  # 'zero' or 'mean' (each head's mean output over the prompt)
    candidates: int = 5  # fill-mask (BERT): candidates printed for each [MASK]
    # encoder-decoder only: how the output is chosen
    decoding: str = "greedy"  # greedy, sample (temperature, top_k, top_p) or beam
    beam_size: int = 4
    length_penalty: float = 1.0  # beam scores are log-probability / length ** length_penalty

    rules = {
        "num_samples": Rule(lambda v: type(v) is int and v >= 1, lambda: "must be at least 1"),
        "max_new_tokens": size(0, "must not be negative"), "attention_top_k": size(), "candidates": size(),
        "ablate_mode": one_of(("zero", "mean")), "decoding": one_of(("greedy", "sample", "beam")), "beam_size": size(),
        "device": TrainConfig.rules["device"], "dtype": one_of(DTYPES),
    }

    def __post_init__(self):
        check_fields(self)
        Sampling(self.temperature, self.top_k, self.top_p)  # a ConfigError names a bad setting


def check_init_from(init_from: str, own: tuple[str, ...]) -> None:
    """init_from must be one of `own`, a GPT-2 name, an existing folder (of Hugging Face weights) or a Hub id.

    It reads the filesystem, so the scripts call it where a run starts (before out_dir is touched), not the
    config's constructor: building a config never depends on what exists on disk."""
    hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w-][\w.-]*", init_from) and not os.path.exists(init_from)
    if init_from not in own + HUB_MODELS and not os.path.isdir(init_from) and not hub_id:
        raise ConfigError(f"init_from must be {', '.join(own)}, one of {', '.join(HUB_MODELS)}, a folder with "
                          f"Hugging Face weights or a Hub id (owner/name), got {init_from!r}.")


def field_types(cls) -> dict[str, type]:
    """Map each key of a config class to its resolved type; a nested config's fields as `<field>_<name>`."""
    hints = typing.get_type_hints(cls)
    nested = nested_configs(cls)
    types = {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            types.update({f"{f.name}_{k}": t for k, t in field_types(nested[f.name]).items()})
        else:
            types[f.name] = hints[f.name]
    return types


def field_defaults(cls) -> dict[str, object]:
    """Each key of a config class (as in field_types) with its default value."""
    defaults = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(value):
            defaults.update({f"{f.name}_{k}": v for k, v in flatten(value).items()})
        else:
            defaults[f.name] = value
    return defaults


def coerce(key: str, value, typ):
    """Return value converted to typ (from a string when it came from the command line), or raise."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X], or e.g. Union[int, Literal["all"]]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) < len(typing.get_args(typ)) and (value is None or (isinstance(value, str)
                                                                         and value.lower() == "none")):
            return None
        for arg in args:
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key} expects a value of type {' or '.join(map(type_text, args))}, got {value!r}.")
    if origin is typing.Literal:
        if value in typing.get_args(typ):
            return value
        raise ConfigError(f"{key} expects {type_text(typ)}, got {value!r}.")
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


def type_text(typ) -> str:
    """A type as an error message names it: int, or 'all' for Literal['all']."""
    if typing.get_origin(typ) is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(typ))
    return typ.__name__


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
            values[node.targets[0].id] = ast.literal_eval(FoldArithmetic().visit(node.value))
        except (ValueError, TypeError):  # TypeError: an unhashable key, e.g. {[1]: 2}
            raise ConfigError(f"{path} line {node.lineno}: the value must be a literal (number, string, True/False, "
                              "None, list, dict) or arithmetic on numbers such as 5 * 8.")
        except (ArithmeticError, RecursionError) as e:  # 1 / 0, 10.0 ** 400
            raise ConfigError(f"{path} line {node.lineno}: the arithmetic cannot be computed ({e}); write the number.")
    return values


ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
INT_LIMIT = 2 ** 64  # a larger integer is no setting; 10 ** 10 ** 10 would take the memory


def is_plain_number(value) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FoldArithmetic(ast.NodeTransformer):
    """Replace arithmetic on number literals (``5 * 8``, ``-(-7)``, ``2 ** 3``) and string concatenation by its
    value, bottom up, computing nothing else; what remains is left to ast.literal_eval, which refuses it."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, (ast.UAdd, ast.USub)) and isinstance(node.operand, ast.Constant) \
                and is_plain_number(node.operand.value):
            value = node.operand.value
            return ast.copy_location(ast.Constant(-value if isinstance(node.op, ast.USub) else value), node)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if not (isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant)):
            return node
        a, b = node.left.value, node.right.value
        if isinstance(a, str) and isinstance(b, str) and isinstance(node.op, ast.Add):
            return ast.copy_location(ast.Constant(a + b), node)
        if not (is_plain_number(a) and is_plain_number(b) and type(node.op) in ARITHMETIC):
            return node
        if isinstance(node.op, ast.Pow) and abs(b) > 64 and abs(a) > 1:
            return node  # too large to be a setting
        value = ARITHMETIC[type(node.op)](a, b)
        if isinstance(value, int) and abs(value) > INT_LIMIT or not is_plain_number(value):
            return node  # a complex power such as (-8) ** 0.5 is no setting either
        return ast.copy_location(ast.Constant(value), node)


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


def wants_help(argv: list[str]) -> bool:
    """Whether the command line asks for the usage text (-h or --help anywhere)."""
    return any(arg in ("-h", "--help") for arg in argv)


def usage(doc: str, defaults: dict[str, type], notes: tuple[str, ...] = ()) -> str:
    """A script's --help: its docstring, every --key=default of each titled config class, then the notes."""
    parts = [doc.strip(), ""]
    for title, cls in defaults.items():
        parts += [f"{title}:"] + [f"  --{k}={default_text(v)}" for k, v in field_defaults(cls).items()] + [""]
    for note in notes:
        parts += textwrap.wrap(note, width=100, subsequent_indent="  ") + [""]
    return "\n".join(parts).rstrip() + "\n"


def default_text(value) -> str:
    """A default as typed on the command line (a string's repr shows an empty or newline default)."""
    return repr(value) if isinstance(value, str) and (not value or not value.isprintable()) else str(value)


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
        built.append(cls(**unflatten(cls, kwargs)))
    return built


def to_dict(cfg) -> dict:
    """A config as a plain flat dict (safe to store in a weights_only checkpoint; nested configs' fields
    under their flat keys, hard_attention_estimator, as every version has stored them)."""
    return flatten(cfg)


def from_dict(cls, values: dict):
    """Rebuild a config from a stored flat dict, ignoring keys this version no longer has."""
    names = set(field_types(cls)) | {f.name for f in dataclasses.fields(cls)}
    return cls(**unflatten(cls, {k: v for k, v in values.items() if k in names}))


__all__ = ["ConfigError", "TrainConfig", "SampleConfig", "check_init_from", "read_config_file", "parse_args", "build", "to_dict",
           "from_dict", "coerce", "field_types", "usage", "wants_help"]
