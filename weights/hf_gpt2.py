"""OpenAI's GPT-2 weights, from the Hugging Face Hub or a local Hugging Face-format folder, as our names.

Our GPT names its parameters as GPT-2 does, so the import is a rename loop: `transformer.h.N` ->
`blocks.N`, `transformer.wte` -> `wte`, ... . GPT-2 stores its linear layers as `Conv1D`, whose
weight is (in, out): those four matrices per block are transposed to nn.Linear's (out, in).
This module returns config dicts (GPTConfig's field names) and state dicts; model/gpt.py builds the model.
"""

import torch

from weights.hf_folder import PretrainedError, read_config, read_hf_folder, resolve_folder
from weights.hf_llama import MODEL_TYPES, llama_config, llama_state

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_IDS = {name: f"openai-community/{name}" for name in HUB_MODELS}
WHAT = "Hugging Face GPT-2 folder"
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF name -> ours


def check_options(hf: dict) -> None:
    """Raise a PretrainedError for a config.json that is not a GPT-2 our model can hold."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"config.json describes a {hf.get('model_type')!r} model; only GPT-2, Llama and Qwen3 weights load here.")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise PretrainedError(f"activation {act!r} of this GPT-2 is not supported (only {', '.join(ACTIVATIONS)}).")
    n_inner = hf.get("n_inner")
    if n_inner is not None and (type(n_inner) is not int or n_inner < 1):
        raise PretrainedError(f"config.json's n_inner must be a positive integer or null (4 * n_embd), got {n_inner!r}.")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False) \
            or hf.get("add_cross_attention", False):
        raise PretrainedError("this GPT-2 uses attention options our model does not have (unscaled, "
                              "layer-scaled or cross-attention).")


def gpt2_config(hf: dict, dropout: float = 0.0, block_size: int | None = None) -> dict:
    """GPTConfig's keyword arguments for a Hugging Face GPT-2 (or Llama, Qwen3) config.json; an error for
    options we lack."""
    if hf.get("model_type") in MODEL_TYPES:
        return llama_config(hf, dropout, block_size)
    check_options(hf)
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
    return dict(block_size=block_size or n_positions, vocab_size=sizes["vocab_size"], n_layer=sizes["n_layer"],
                n_head=sizes["n_head"], n_embd=sizes["n_embd"], dropout=dropout, bias=True,
                activation=ACTIVATIONS[hf.get("activation_function", "gelu_new")], norm_eps=float(eps),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                mlp_hidden=None if hf.get("n_inner") in (None, 4 * sizes["n_embd"]) else hf["n_inner"])


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
        if key.endswith(CONV1D) and tensor.dim() == 2:  # other shapes fail the shape check later
            tensor = tensor.t()
        state[key] = tensor
    return state


def pretrained_config(name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> dict:
    """GPTConfig's keyword arguments for a GPT-2 name or folder, without loading its weights."""
    return gpt2_config(read_config(resolve_folder(name_or_dir, WHAT, HUB_IDS), WHAT), dropout, block_size)


def read_gpt2(name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> tuple[dict, dict]:
    """(GPTConfig keyword arguments, state dict in our names) of a GPT-2 name or folder.

    A block_size below GPT-2's keeps the first position embeddings; a tied model's head is left out
    (it is the token embedding; a .bin file may hold a copy of it).
    """
    hf_config, hf_state = read_hf_folder(name_or_dir, WHAT, HUB_IDS)
    config = gpt2_config(hf_config, dropout, block_size)
    if hf_config.get("model_type") in MODEL_TYPES:
        return config, llama_state(hf_state, config["n_layer"], config["tie_embeddings"], config["qk_norm"])
    state = rename(hf_state)
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][:config["block_size"]]
    if config["tie_embeddings"]:
        state.pop("lm_head.weight", None)
    return config, state
