"""The one entry of weights/ that the core calls: `GPT.from_pretrained` reads a Hugging Face folder (or Hub id)
through it, and `save_pretrained` writes one. A learner may skip it: what it gives are config dicts and state
dicts, and the readers behind it (one per family of weights/hf_families.py's table) are weight I/O, not the
network. It imports nothing of model/: the model and config classes are arguments."""

import torch

from weights.common import flatten
from weights.errors import ConfigError
from weights.hf_export import save_hf
from weights.hf_families import read_pretrained, read_pretrained_config
from weights.hf_folder import PretrainedError, check_state
from weights.hf_tokenizer import folder_tokenizer


def build_config(config_class: type, values: dict, source: str):
    """config_class(**values) from the keyword arguments a folder's reader gave; a PretrainedError if it is invalid."""
    try:
        return config_class(**values)
    except (ConfigError, TypeError) as e:
        raise PretrainedError(f"the config.json of {source} holds sizes our model cannot take ({e}).") from None


def load_decoder(model_class: type, config_class: type, name_or_dir: str, dropout: float = 0.0,
                 block_size: int | None = None):
    """A model_class (a decoder: GPT) with the weights of a GPT-2 name, Hub id or folder of weights/hf_families.py's
    table, in eval mode, `tokenizer` set from the folder (or None); a tied head is not read twice."""
    _, values, state, folder = read_pretrained(name_or_dir, "gpt", dropout, block_size)
    model = model_class(build_config(config_class, values, name_or_dir))
    own = {k: v for k, v in model.state_dict().items() if not (model.config.tie_embeddings and k == "lm_head.weight")}
    check_state(own, state, name_or_dir)
    with torch.no_grad():
        for key, param in own.items():
            param.copy_(state[key])
    model.tokenizer = folder_tokenizer(folder)
    return model.eval()  # as transformers and TransformerLens return it: dropout off


def decoder_config(config_class: type, name_or_dir: str, dropout: float = 0.0, block_size: int | None = None):
    """The config_class of a decoder's name or folder, without loading its weights (a smaller block_size keeps the
    first positions)."""
    values = read_pretrained_config(name_or_dir, "gpt")[1]
    if block_size is not None and not (type(block_size) is int and 1 <= block_size <= values["block_size"]):
        raise PretrainedError(f"block_size must be between 1 and this model's {values['block_size']} positions, "
                              f"got {block_size}.")
    return build_config(config_class, {**values, "dropout": dropout, "block_size": block_size or values["block_size"]},
                        name_or_dir)


def save_model(model, folder: str, tokenizer=None, overwrite: bool = False) -> None:
    """Family.save_pretrained's work: `model` (its model_type, config and state dict) as a Hugging Face folder,
    with the tokenizer's files given the tokenizer or its meta dict (weights/hf_export.py save_hf)."""
    meta = tokenizer.meta() if hasattr(tokenizer, "meta") else tokenizer
    save_hf(folder, model.model_type, flatten(model.config), model.state_dict(), meta, overwrite)


__all__ = ["PretrainedError", "build_config", "check_state", "decoder_config", "folder_tokenizer", "load_decoder",
           "read_pretrained", "read_pretrained_config", "save_hf", "save_model"]
