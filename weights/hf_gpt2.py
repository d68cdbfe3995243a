"""OpenAI's GPT-2 weights, from the Hugging Face Hub or a local Hugging Face-format folder, as our names.

Our GPT names its parameters as GPT-2 does, so the import is a rename loop: `transformer.h.N` ->
`blocks.N`, `transformer.wte` -> `wte`, ... . GPT-2 stores its linear layers as `Conv1D`, whose
weight is (in, out): those four matrices per block are transposed to nn.Linear's (out, in).
This module returns config dicts (GPTConfig's field names) and state dicts; model/gpt.py builds the model.
"""

import torch

from weights.hf_folder import PretrainedError

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_IDS = {name: f"openai-community/{name}" for name in HUB_MODELS}
WHAT = "Hugging Face GPT-2 folder"
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF name -> ours


def check_options(hf: dict) -> None:
    """Raise a PretrainedError for a config.json that is not a GPT-2 our model can hold."""
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


def gpt2_config(hf: dict) -> dict:
    """GPTConfig's keyword arguments for a Hugging Face GPT-2 config.json; an error for options we lack."""
    check_options(hf)
    sizes = {k: hf.get(k, d) for k, d in (("n_positions", 1024), ("vocab_size", 50257), ("n_layer", 12),
                                            ("n_head", 12), ("n_embd", 768))}
    if any(type(v) is not int for v in sizes.values()):
        raise PretrainedError(f"config.json's sizes must be integers, got {sizes}; pass a Hugging Face GPT-2 folder.")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if type(eps) not in (int, float) or not eps > 0:
        raise PretrainedError(f"config.json's layer_norm_epsilon must be a positive number, got {eps!r}.")
    return dict(block_size=sizes["n_positions"], vocab_size=sizes["vocab_size"], n_layer=sizes["n_layer"],
                n_head=sizes["n_head"], n_embd=sizes["n_embd"], dropout=0.0, bias=True,
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


def gpt2_state(hf_state: dict, config: dict) -> dict:
    """Our GPT's parameter names -> tensors, from a GPT-2 state dict (a tied head left out: it is the token
    embedding, of which a .bin file may hold a copy)."""
    state = rename(hf_state)
    if config["tie_embeddings"]:
        state.pop("lm_head.weight", None)
    return state
