"""The table of Hugging Face model families headscope loads: one row per `model_type` of config.json.

A row names our family that holds it (GPT or BERT), the function reading its config.json into our
config's keyword arguments and the one renaming its weights into our parameter names. Adding a family
that our blocks express exactly is one row (and those two functions); what a row's model has and our
blocks lack is refused by its config function with one line naming the option.

    model_type   our family   what maps onto our options
    gpt2         gpt          learned positions, LayerNorm, GELU (tanh), tied head
    llama        gpt          rope, RMSNorm, SwiGLU, no biases
    qwen3        gpt          llama + QK-norm
    gpt_neox     gpt          parallel attention + MLP, partial rotary (rotary_dim), untied head (Pythia)
    bert         bert         post-norm encoder, learned positions, segments; MLM head optional
    roberta      bert         bert with positions counted from the padding id + 1 (position_offset)
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

from weights.hf_bert import bert_config, bert_state, roberta_config, roberta_state
from weights.hf_folder import PretrainedError, read_config, read_weights, resolve_folder
from weights.hf_gpt2 import HUB_IDS, gpt2_config, gpt2_state
from weights.hf_llama import llama_config, llama_state
from weights.hf_neox import neox_config, neox_state

WHAT = "Hugging Face model folder (config.json and weights)"


@dataclass(frozen=True)
class Row:
    """One loadable Hugging Face family."""

    family: str  # our model_type: "gpt" or "bert"
    config: Callable[[dict], dict]  # config.json -> our config's keyword arguments
    state: Callable[[dict, dict], dict]  # (their state dict, our config's keyword arguments) -> our state dict
    example: str  # a model people study, for the README and messages


ROWS: dict[str, Row] = {
    "gpt2": Row("gpt", gpt2_config, gpt2_state, "gpt2"),
    "llama": Row("gpt", llama_config, llama_state, "TinyLlama, SmolLM"),
    "qwen3": Row("gpt", llama_config, llama_state, "Qwen3-0.6B"),
    "gpt_neox": Row("gpt", neox_config, neox_state, "EleutherAI/pythia-70m"),
    "bert": Row("bert", bert_config, bert_state, "bert-base-uncased, all-MiniLM-L6-v2"),
    "roberta": Row("bert", roberta_config, roberta_state, "roberta-base"),
}
DEFAULT_TYPE = {"gpt": "gpt2", "bert": "bert"}  # an old config.json without model_type


def row_for(hf: dict, family: str | None) -> tuple[str, Row]:
    """(model_type, its row) of a config.json; a PretrainedError for a type not in the table or of another family."""
    model_type = hf.get("model_type") or DEFAULT_TYPE.get(family, "")
    row = ROWS.get(model_type)
    if row is None:
        loadable = ", ".join(ROWS)
        raise PretrainedError(f"config.json describes a {model_type!r} model; the families that load are {loadable} "
                              "(README: 'Pretrained models').")
    if family is not None and row.family != family:
        raise PretrainedError(f"this is a {model_type!r} model, which loads as our {row.family.upper()}; use "
                              f"{row.family.upper()}.from_pretrained (or training.families.load_pretrained).")
    return model_type, row


def pretrained_folder(name_or_dir: str) -> str:
    """A local folder as is; GPT-2's short names (gpt2, gpt2-medium, ...) and other Hub ids downloaded."""
    if name_or_dir in HUB_IDS and not os.path.isdir(name_or_dir):
        return resolve_folder(HUB_IDS[name_or_dir], WHAT)
    return resolve_folder(name_or_dir, WHAT)


def read_pretrained_config(name_or_dir: str, family: str | None = None) -> tuple[str, dict, str]:
    """(model_type, our config's keyword arguments, the local folder) of a folder or Hub id, without its weights."""
    folder = pretrained_folder(name_or_dir)
    hf = read_config(folder, WHAT)
    model_type, row = row_for(hf, family)
    return model_type, row.config(hf), folder


def read_pretrained(name_or_dir: str, family: str | None = None, dropout: float | None = None,
                    block_size: int | None = None) -> tuple[str, dict, dict, str]:
    """(model_type, config keyword arguments, state dict in our names, the local folder) of a folder or Hub id.

    `dropout` replaces the folder's; a `block_size` below the model's keeps the first position embeddings.
    """
    model_type, values, folder = read_pretrained_config(name_or_dir, family)
    state = ROWS[model_type].state(read_weights(folder, WHAT), values)
    if dropout is not None:
        values["dropout"] = dropout
    if block_size is not None:
        if not (type(block_size) is int and 1 <= block_size <= values["block_size"]):
            raise PretrainedError(f"block_size must be between 1 and this model's {values['block_size']} positions, "
                                  f"got {block_size}.")
        values["block_size"] = block_size
    if "wpe.weight" in state:  # the table may hold more rows than the positions used (GPT-2 cropped, RoBERTa's offset)
        state["wpe.weight"] = state["wpe.weight"][:values["block_size"] + values.get("position_offset", 0)]
    return model_type, values, state, folder
