"""OpenAI's GPT-2 weights, from the Hugging Face Hub or a local Hugging Face-format folder.

Our GPT names its parameters as GPT-2 does, so the import is a rename loop: `transformer.h.N` ->
`blocks.N`, `transformer.wte` -> `wte`, ... . GPT-2 stores its linear layers as `Conv1D`, whose
weight is (in, out): those four matrices per block are transposed to nn.Linear's (out, in).
"""

import json
import os

import torch

from model.checkpoint import CheckpointError
from model.config import ConfigError, GPTConfig

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF name -> ours
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedError(CheckpointError):
    """Pretrained weights that cannot be found, downloaded or used."""


def model_dir(name_or_dir: str) -> str:
    """A local folder as is; a GPT-2 name downloaded (config and weights only) through huggingface_hub."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if name_or_dir not in HUB_MODELS:
        raise PretrainedError(f"{name_or_dir!r} is neither a folder nor one of {', '.join(HUB_MODELS)}; "
                              "pass a GPT-2 name or a Hugging Face folder with config.json and model.safetensors.")
    try:
        from huggingface_hub import snapshot_download  # lazy: only downloads need it
    except ImportError:
        raise PretrainedError("downloading GPT-2 needs huggingface_hub: pip install huggingface_hub "
                              "(or pass a local Hugging Face folder).") from None
    try:
        return snapshot_download(f"openai-community/{name_or_dir}", allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, hub errors, ...
        raise PretrainedError(f"cannot download {name_or_dir} from the Hugging Face Hub ({type(e).__name__}); check "
                              "your connection, or pass a local folder with config.json and model.safetensors.") from None


def gpt2_config(hf: dict, dropout: float = 0.0, block_size: int | None = None) -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT-2 config.json; an error for options our model does not have."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"config.json describes a {hf.get('model_type')!r} model; only GPT-2 weights load here.")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise PretrainedError(f"activation {act!r} of this GPT-2 is not supported (only {', '.join(ACTIVATIONS)}).")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise PretrainedError(f"n_inner={hf['n_inner']} is not 4 * n_embd; this model's MLP cannot hold it.")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False) \
            or hf.get("add_cross_attention", False):
        raise PretrainedError("this GPT-2 uses attention options our model does not have (unscaled, "
                              "layer-scaled or cross-attention).")
    sizes = {k: hf.get(k, d) for k, d in (("n_positions", 1024), ("vocab_size", 50257), ("n_layer", 12),
                                            ("n_head", 12), ("n_embd", 768))}
    if any(type(v) is not int for v in sizes.values()):
        raise PretrainedError(f"config.json's sizes must be integers, got {sizes}; pass a Hugging Face GPT-2 folder.")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if type(eps) not in (int, float) or not eps > 0:
        raise PretrainedError(f"config.json's layer_norm_epsilon must be a positive number, got {eps!r}.")
    n_positions = sizes["n_positions"]
    if block_size is not None and not 1 <= block_size <= n_positions:
        raise PretrainedError(f"block_size must be between 1 and this GPT-2's {n_positions} positions, got {block_size}.")
    try:
        return GPTConfig(block_size=block_size or n_positions, vocab_size=sizes["vocab_size"],
                         n_layer=sizes["n_layer"], n_head=sizes["n_head"], n_embd=sizes["n_embd"],
                         dropout=dropout, bias=True, activation=ACTIVATIONS[act],
                         norm_eps=float(eps),
                         tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    except (ConfigError, TypeError) as e:
        raise PretrainedError(f"config.json holds sizes our model cannot take ({e}).") from None


def read_weights(folder: str) -> dict:
    """The state dict in folder: model.safetensors, else pytorch_model.bin (read with weights_only)."""
    for file in WEIGHT_FILES:
        path = os.path.join(folder, file)
        if os.path.exists(path):
            break
    else:
        raise PretrainedError(f"{folder} holds no {' or '.join(WEIGHT_FILES)}; pass a Hugging Face GPT-2 folder.")
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file  # lazy: installed with huggingface_hub/transformers

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise PretrainedError("reading model.safetensors needs safetensors: pip install safetensors.") from None
    except Exception:
        raise PretrainedError(f"{path} is corrupt or not a weights file; download it again.") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path} holds no state dict; download it again.")
    return state


def rename(hf_state: dict) -> dict:
    """Hugging Face GPT-2 names and layouts -> ours (the attention mask buffers dropped)."""
    state = {}
    for key, tensor in hf_state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise PretrainedError("the weights file holds entries that are not named tensors; download it again.")
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if key.startswith("h."):
            key = "blocks." + key[2:]
        if key.endswith(CONV1D) and tensor.dim() == 2:  # other shapes fail the shape check below
            tensor = tensor.t()
        state[key] = tensor
    return state


def read_config(folder: str) -> dict:
    """The folder's Hugging Face config.json."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            hf = json.load(f)
        if isinstance(hf, dict):
            return hf
    except (OSError, ValueError):
        pass
    raise PretrainedError(f"{folder} has no readable config.json; pass a Hugging Face GPT-2 folder.")


def pretrained_config(name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> GPTConfig:
    """The GPTConfig of a GPT-2 name or folder, without loading its weights."""
    return gpt2_config(read_config(model_dir(name_or_dir)), dropout, block_size)


def load_gpt2(cls, name_or_dir: str, dropout: float = 0.0, block_size: int | None = None):
    """Build `cls` (GPT) with GPT-2's config and weights; a smaller block_size keeps the first positions."""
    folder = model_dir(name_or_dir)
    model = cls(gpt2_config(read_config(folder), dropout, block_size))
    state = rename(read_weights(folder))
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][:model.config.block_size]
    tied = model.config.tie_embeddings
    if tied:  # the head is the embedding (a .bin file may hold a copy of it)
        state.pop("lm_head.weight", None)
    own = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise PretrainedError(f"the weights in {folder} do not fit config.json ({what}); download them again.")
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise PretrainedError(f"the weights in {folder} do not fit config.json ({key} is {tuple(tensor.shape)}, "
                                  f"expected {tuple(own[key].shape)}); download them again.")
    with torch.no_grad():
        for key, param in own.items():
            param.copy_(state[key])
    return model
