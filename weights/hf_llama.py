"""Llama and Qwen3 folders (the modern recipe: rotary positions, RMSNorm, SwiGLU, QK-norm in Qwen3) as a GPT.

Only what our GPT computes is accepted: as many key/value heads as query heads, no biases, plain
rotary angles (no scaling), no sliding window. q, k and v are fused into `c_attn` (rows q, k, v), the
gate and up projections into `c_fc` (rows gate, then up: SwiGLU's silu(first half) * second half).
"""

import math

import torch

from weights.hf_folder import PretrainedError

def positive_int(hf: dict, key: str) -> int:
    """hf[key] as a positive integer; a PretrainedError if it is missing or not one."""
    value = hf.get(key)
    if type(value) is not int or value < 1:
        raise PretrainedError(f"config.json's {key} must be a positive integer, got {value!r}; "
                              f"it is not a {hf.get('model_type')} config.")
    return value


def positive_number(value, key: str) -> float:
    """config.json's value of `key` as a float; a PretrainedError unless it is a positive number."""
    if type(value) not in (int, float) or not value > 0:
        raise PretrainedError(f"config.json's {key} must be a positive number, got {value!r}.")
    return float(value)


def check_llama(hf: dict, n_embd: int, n_head: int) -> None:
    """A PretrainedError for a Llama/Qwen3 option our GPT does not have."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    problems = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "num_key_value_heads": hf.get("num_key_value_heads", n_head) != n_head,
        "head_dim": (hf.get("head_dim") or n_embd // n_head) * n_head != n_embd,  # None: transformers' default
        "attention_bias": bool(hf.get("attention_bias", False)),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "rope_parameters": rope.get("rope_type", rope.get("type", "default")) != "default",
        "use_sliding_window": bool(hf.get("use_sliding_window", False)),
    }
    for key, bad in problems.items():
        if bad:
            raise PretrainedError(f"config.json's {key}={hf.get(key)!r} has no equivalent in our GPT; only Llama/Qwen3 "
                                  "models with full multi-head attention, no biases and plain rotary angles load.")


def llama_config(hf: dict) -> dict:
    """GPTConfig's keyword arguments for a Llama or Qwen3 config.json."""
    n_embd, n_head = positive_int(hf, "hidden_size"), positive_int(hf, "num_attention_heads")
    check_llama(hf, n_embd, n_head)
    width, positions = positive_int(hf, "intermediate_size"), positive_int(hf, "max_position_embeddings")
    rope = hf.get("rope_parameters") or {}
    default_width = 8 * math.ceil(8 * n_embd / 3 / 8)  # model/config.py's SwiGLU rule
    return dict(vocab_size=positive_int(hf, "vocab_size"), n_layer=positive_int(hf, "num_hidden_layers"),
                n_head=n_head, n_embd=n_embd, block_size=positions, dropout=0.0, bias=False,
                activation="swiglu", norm="rmsnorm", norm_eps=positive_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
                pos_emb="rope", rope_base=positive_number(rope.get("rope_theta", hf.get("rope_theta", 10000.0)), "rope_theta"),
                qk_norm=hf["model_type"] == "qwen3", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                mlp_hidden=None if width == default_width else width)


def llama_state(hf_state: dict, config: dict) -> dict:
    """Our GPT's parameter names -> tensors, from a Llama/Qwen3 state dict."""
    n_layer, tie_embeddings, qk_norm = config["n_layer"], config["tie_embeddings"], config["qk_norm"]
    def take(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise PretrainedError(f"the weights have no {name!r}; the folder is incomplete or not this config's model.")
        return hf_state[name]

    state = {"wte.weight": take("model.embed_tokens.weight"), "ln_f.weight": take("model.norm.weight")}
    if not tie_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    for i in range(n_layer):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        attn = [take(f"{hf}self_attn.{p}_proj.weight") for p in ("q", "k", "v")]
        mlp = [take(f"{hf}mlp.{p}_proj.weight") for p in ("gate", "up")]
        if len({t.shape for t in attn}) > 1 or len({t.shape for t in mlp}) > 1:
            raise PretrainedError(f"layer {i}'s projections differ in shape; the weights do not fit config.json.")
        state.update({ours + "ln_1.weight": take(hf + "input_layernorm.weight"),
                      ours + "attn.c_attn.weight": torch.cat(attn), ours + "attn.c_proj.weight": take(hf + "self_attn.o_proj.weight"),
                      ours + "ln_2.weight": take(hf + "post_attention_layernorm.weight"),
                      ours + "mlp.c_fc.weight": torch.cat(mlp), ours + "mlp.c_proj.weight": take(hf + "mlp.down_proj.weight")})
        if qk_norm:
            state[ours + "attn.q_norm.weight"] = take(hf + "self_attn.q_norm.weight")
            state[ours + "attn.k_norm.weight"] = take(hf + "self_attn.k_norm.weight")
    return state
