"""GPT-NeoX folders (EleutherAI's Pythia suite, GPT-NeoX-20B) as a GPT.

GPT-NeoX is GPT-2's pre-norm block with three differences, each an option of our config:
- parallel attention and MLP (`use_parallel_residual`): x + attn(ln_1(x)) + mlp(ln_2(x)) -> parallel_residual;
- rotary positions on the first `partial_rotary_factor` (older configs: `rotary_pct`) of each head's
  features -> pos_emb='rope', rotary_dim;
- an untied output layer (`embed_out`).
Its fused query_key_value holds each head's q, k and v side by side ((n_head, 3, head_dim) rows); ours
holds every head's q, then k, then v, so the rows are regrouped.
"""

import torch

from weights.hf_folder import PretrainedError
from weights.hf_llama import positive_int, positive_number

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
BLOCK_NAMES = {  # ours <- Hugging Face, within blocks.N <- gpt_neox.layers.N; each has .weight and .bias
    "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "attention.dense",
    "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h",
}


def rope_options(hf: dict) -> tuple[float, float]:
    """(rope base, share of each head rotated), from rope_parameters or the older top-level keys."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise PretrainedError(f"config.json's rope type {rope.get('rope_type', rope.get('type'))!r} (scaled rotary "
                              "angles) has no equivalent in our GPT; only plain rotary angles load.")
    base = positive_number(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0)), "rope_theta")
    share = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    if type(share) not in (int, float) or not 0 < share <= 1:
        raise PretrainedError(f"config.json's partial_rotary_factor must be in (0, 1], got {share!r}.")
    return base, float(share)


def neox_config(hf: dict) -> dict:
    """GPTConfig's keyword arguments for a GPT-NeoX config.json; an error naming an option we lack."""
    n_embd, n_head = positive_int(hf, "hidden_size"), positive_int(hf, "num_attention_heads")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise PretrainedError(f"config.json's hidden_act={act!r} has no equivalent in our GPT; "
                              f"one of {', '.join(ACTIVATIONS)} loads.")
    if not hf.get("attention_bias", True):  # our bias option covers every Linear layer and norm at once
        raise PretrainedError("config.json's attention_bias=False (biases in the MLP and norms but not in attention) "
                              "has no equivalent in our GPT.")
    if n_embd % n_head:
        raise PretrainedError(f"config.json's hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}.")
    base, share = rope_options(hf)
    head_dim = n_embd // n_head
    rotary_dim = int(head_dim * share)
    if rotary_dim % 2 or rotary_dim == 0:
        raise PretrainedError(f"this model rotates {rotary_dim} of each head's {head_dim} features; rotary "
                              "positions turn pairs, so our GPT needs an even, non-zero number.")
    return dict(vocab_size=positive_int(hf, "vocab_size"), n_layer=positive_int(hf, "num_hidden_layers"),
                n_head=n_head, n_embd=n_embd, block_size=positive_int(hf, "max_position_embeddings"), dropout=0.0,
                bias=True, activation=ACTIVATIONS[act], norm="layernorm",
                norm_eps=positive_number(hf.get("layer_norm_eps", 1e-5), "layer_norm_eps"), pos_emb="rope",
                rope_base=base, rotary_dim=0 if rotary_dim == head_dim else rotary_dim,
                parallel_residual=bool(hf.get("use_parallel_residual", True)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                mlp_hidden=None if hf.get("intermediate_size", 4 * n_embd) == 4 * n_embd else hf["intermediate_size"])


def by_projection(tensor: torch.Tensor, n_head: int) -> torch.Tensor:
    """query_key_value's rows (n_head, 3, head_dim, ...) regrouped as ours: (3, n_head, head_dim, ...)."""
    rest = tensor.shape[1:]
    return tensor.reshape(n_head, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def neox_state(hf_state: dict, config: dict) -> dict:
    """Our GPT's parameter names -> tensors, from a GPT-NeoX state dict."""
    state = {key.removeprefix("gpt_neox."): value for key, value in hf_state.items()}

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise PretrainedError(f"the weights have no {name!r}; the folder is incomplete or not this config's model.")
        return state[name]

    ours = {"wte.weight": take("embed_in.weight"), "ln_f.weight": take("final_layer_norm.weight"),
            "ln_f.bias": take("final_layer_norm.bias")}
    if not config["tie_embeddings"]:
        ours["lm_head.weight"] = take("embed_out.weight" if "embed_out.weight" in state else "lm_head.weight")
    for i in range(config["n_layer"]):
        hf = f"layers.{i}."
        for kind in ("weight", "bias"):
            ours[f"blocks.{i}.attn.c_attn.{kind}"] = by_projection(take(f"{hf}attention.query_key_value.{kind}"),
                                                                  config["n_head"])
            for mine, theirs in BLOCK_NAMES.items():
                ours[f"blocks.{i}.{mine}.{kind}"] = take(f"{hf}{theirs}.{kind}")
    return ours
