"""Export to Hugging Face: a headscope config dict and state dict -> a transformers config.json and state dict.

    GPT, GPT-2 recipe (learned positions, LayerNorm, GELU)   -> GPT2LMHeadModel
    GPT, modern recipe (rope, RMSNorm, SwiGLU, no biases)    -> LlamaForCausalLM (Qwen3ForCausalLM with qk_norm)
    BERT (post-norm, LayerNorm, GELU, tied head)              -> BertForMaskedLM

What a Hugging Face class cannot express (another attention score or weighting, relu2, soft-capped
logits, blocks without an MLP, ...) is refused with an ExportError naming the option. A model without biases exports to
GPT-2 or BERT with zero biases, which computes the same function. Like the import modules, this works
on dicts only: it imports nothing of model/.
"""

import json
import os

import torch

from weights.common import UserError, atomic_folder, atomic_write
from weights.hf_tokenizer import GPT2_EOT_ID, special_id, tokenizer_files

EXPORT_MARKER = ".headscope_export"  # in every folder we export: what we wrote, so a later export may replace it
GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # ours -> Hugging Face
BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


class ExportError(UserError, ValueError):
    """A model that a Hugging Face class cannot hold."""


def refuse_unless(config: dict, target: str, **required) -> None:
    """An ExportError naming the first option whose value is not the required one (a tuple: one of them)."""
    for name, allowed in required.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if config.get(name) not in allowed:
            raise ExportError(f"option {name}={config.get(name)!r} has no equivalent in Hugging Face's {target}; "
                              f"export needs {name} in {list(allowed)}.")


def common_checks(config: dict, target: str) -> None:
    """Options that no exported class expresses (every one has an MLP in each block)."""
    refuse_unless(config, target, attn_score="scaled_dot", attn_weighting="softmax", logit_softcap=(0, 0.0),
                  parallel_residual=False, rotary_dim=0, position_offset=(0, None), mlm_head=(True, None),
                  attn_only=False)


def mlp_width(state: dict) -> int:
    """The MLP's hidden width (each half's, for SwiGLU), read off the weights."""
    return state["blocks.0.mlp.c_proj.weight"].shape[1]


def or_zeros(state: dict, key: str, size: int) -> torch.Tensor:
    """state[key], or zeros of `size` for a model built without biases."""
    return state[key] if key in state else torch.zeros(size, dtype=state["wte.weight"].dtype)


def gpt2_export(config: dict, state: dict, eos_id: int | None = None) -> tuple[dict, dict]:
    """(GPT2LMHeadModel config.json, its state dict) of a GPT with GPT-2's recipe."""
    common_checks(config, "GPT2LMHeadModel")
    refuse_unless(config, "GPT2LMHeadModel", pos_emb="learned", norm="layernorm", post_norm=False, qk_norm=False,
                  activation=tuple(GPT2_ACTIVATIONS))
    n, L = config["n_embd"], config["n_layer"]
    width = mlp_width(state)
    hf = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=config["vocab_size"],
              n_positions=config["block_size"], n_embd=n, n_layer=L, n_head=config["n_head"],
              n_inner=None if width == 4 * n else width, activation_function=GPT2_ACTIVATIONS[config["activation"]],
              layer_norm_epsilon=config["norm_eps"], resid_pdrop=config["dropout"], embd_pdrop=config["dropout"],
              attn_pdrop=config["dropout"], tie_word_embeddings=config["tie_embeddings"],
              bos_token_id=eos_id, eos_token_id=eos_id)
    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["ln_f.weight"], "transformer.ln_f.bias": or_zeros(state, "ln_f.bias", n)}
    sizes = {"ln_1": n, "attn.c_attn": 3 * n, "attn.c_proj": n, "ln_2": n, "mlp.c_fc": width, "mlp.c_proj": n}
    for i in range(L):
        for name, size in sizes.items():
            ours, theirs = f"blocks.{i}.{name}", f"transformer.h.{i}.{name}"
            weight = state[f"{ours}.weight"]
            out[f"{theirs}.weight"] = weight.t() if weight.dim() == 2 else weight  # Conv1D keeps (in, out)
            out[f"{theirs}.bias"] = or_zeros(state, f"{ours}.bias", size)
    if not config["tie_embeddings"]:
        out["lm_head.weight"] = state["lm_head.weight"]
    return hf, out


def llama_export(config: dict, state: dict, eos_id: int | None = None) -> tuple[dict, dict]:
    """(LlamaForCausalLM or, with qk_norm, Qwen3ForCausalLM config.json, its state dict) of a modern-recipe GPT."""
    target = "Qwen3ForCausalLM" if config["qk_norm"] else "LlamaForCausalLM"
    common_checks(config, target)
    refuse_unless(config, target, pos_emb="rope", norm="rmsnorm", post_norm=False, activation="swiglu", bias=False)
    n, L, width = config["n_embd"], config["n_layer"], mlp_width(state)
    hf = dict(model_type="qwen3" if config["qk_norm"] else "llama", architectures=[target],
              vocab_size=config["vocab_size"], hidden_size=n, intermediate_size=width, num_hidden_layers=L,
              num_attention_heads=config["n_head"], num_key_value_heads=config["n_head"],
              head_dim=n // config["n_head"], hidden_act="silu", max_position_embeddings=config["block_size"],
              rms_norm_eps=config["norm_eps"], rope_parameters={"rope_type": "default", "rope_theta": config["rope_base"]},
              rope_theta=config["rope_base"], attention_bias=False, mlp_bias=False, attention_dropout=config["dropout"],
              tie_word_embeddings=config["tie_embeddings"], bos_token_id=eos_id, eos_token_id=eos_id)
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["ln_f.weight"]}
    for i in range(L):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.c_attn.weight"].split(n)  # rows q, then k, then v
        gate, up = state[ours + "mlp.c_fc.weight"].split(width)  # SwiGLU: silu(first half) * second half
        out.update({theirs + "input_layernorm.weight": state[ours + "ln_1.weight"],
                    theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                    theirs + "self_attn.v_proj.weight": v, theirs + "self_attn.o_proj.weight": state[ours + "attn.c_proj.weight"],
                    theirs + "post_attention_layernorm.weight": state[ours + "ln_2.weight"],
                    theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
                    theirs + "mlp.down_proj.weight": state[ours + "mlp.c_proj.weight"]})
        if config["qk_norm"]:
            out[theirs + "self_attn.q_norm.weight"] = state[ours + "attn.q_norm.weight"]
            out[theirs + "self_attn.k_norm.weight"] = state[ours + "attn.k_norm.weight"]
    if not config["tie_embeddings"]:
        out["lm_head.weight"] = state["lm_head.weight"]
    return hf, out


def bert_export(config: dict, state: dict, pad_id: int = 0) -> tuple[dict, dict]:
    """(BertForMaskedLM config.json, its state dict) of a BERT (the pooler kept, for a round trip)."""
    common_checks(config, "BertForMaskedLM")
    refuse_unless(config, "BertForMaskedLM", pos_emb="learned", norm="layernorm", post_norm=True, qk_norm=False,
                  tie_embeddings=True, activation=tuple(BERT_ACTIVATIONS))
    n, L, width = config["n_embd"], config["n_layer"], mlp_width(state)
    types = config["type_vocab_size"]
    hf = dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=config["vocab_size"], hidden_size=n,
              num_hidden_layers=L, num_attention_heads=config["n_head"], intermediate_size=width,
              hidden_act=BERT_ACTIVATIONS[config["activation"]], hidden_dropout_prob=config["dropout"],
              attention_probs_dropout_prob=config["dropout"], max_position_embeddings=config["block_size"],
              type_vocab_size=max(types, 1), layer_norm_eps=config["norm_eps"], pad_token_id=pad_id,
              position_embedding_type="absolute")
    wte = state["wte.weight"]
    # no segment embeddings: one all-zero segment row adds nothing, as our model does
    segments = state["wtt.weight"] if types else torch.zeros(1, n, dtype=wte.dtype)
    out = {"bert.embeddings.word_embeddings.weight": wte, "bert.embeddings.position_embeddings.weight": state["wpe.weight"],
           "bert.embeddings.token_type_embeddings.weight": segments,
           "bert.embeddings.LayerNorm.weight": state["ln_emb.weight"],
           "bert.embeddings.LayerNorm.bias": or_zeros(state, "ln_emb.bias", n),
           "bert.pooler.dense.weight": state["pooler.weight"], "bert.pooler.dense.bias": or_zeros(state, "pooler.bias", n),
           "cls.predictions.transform.dense.weight": state["head.dense.weight"],
           "cls.predictions.transform.dense.bias": or_zeros(state, "head.dense.bias", n),
           "cls.predictions.transform.LayerNorm.weight": state["head.ln.weight"],
           "cls.predictions.transform.LayerNorm.bias": or_zeros(state, "head.ln.bias", n),
           "cls.predictions.bias": state["head.decoder.bias"]}
    names = {"attn.c_proj": ("attention.output.dense", n), "ln_1": ("attention.output.LayerNorm", n),
             "mlp.c_fc": ("intermediate.dense", width), "mlp.c_proj": ("output.dense", n), "ln_2": ("output.LayerNorm", n)}
    for i in range(L):
        ours, theirs = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        qkv_bias = or_zeros(state, ours + "attn.c_attn.bias", 3 * n).split(n)
        for proj, weight, bias in zip(("query", "key", "value"), state[ours + "attn.c_attn.weight"].split(n), qkv_bias):
            out[f"{theirs}attention.self.{proj}.weight"], out[f"{theirs}attention.self.{proj}.bias"] = weight, bias
        for mine, (hf_name, size) in names.items():
            out[f"{theirs}{hf_name}.weight"] = state[ours + mine + ".weight"]
            out[f"{theirs}{hf_name}.bias"] = or_zeros(state, ours + mine + ".bias", size)
    return hf, out


def to_hf(model_type: str, config: dict, state: dict, pad_id: int = 0, eos_id: int | None = None) -> tuple[dict, dict]:
    """(config.json dict, state dict in Hugging Face's names) for a headscope model; ExportError if none fits.

    pad_id is BERT's [PAD] token; eos_id a GPT's end-of-text token (GPT-2 BPE's <|endoftext|>), if any.
    """
    if model_type == "bert":
        return bert_export(config, state, pad_id)
    if model_type == "gpt":
        export = llama_export if config["pos_emb"] == "rope" else gpt2_export
        return export(config, state, eos_id)
    raise ExportError(f"model type {model_type!r} has no Hugging Face export; export a GPT or a BERT.")


def save_hf(folder: str, model_type: str, config: dict, state: dict, tokenizer: dict | None = None,
            overwrite: bool = False) -> None:
    """Write config.json, model.safetensors and the tokenizer's files (tokenizer: a headscope meta dict) to folder.

    Everything is checked before the first file is written. The folder is built whole beside `folder`, then
    swapped in: no file of what it held before stays. A folder that holds anything but an earlier export of
    ours is refused unless `overwrite`.
    """
    try:
        from safetensors.torch import save  # lazy: installed with transformers / huggingface_hub
    except ImportError:
        raise ExportError("writing model.safetensors needs the safetensors package: pip install safetensors.") from None
    eos_id = GPT2_EOT_ID if (tokenizer or {}).get("tokenizer") == "gpt2" else None
    hf_config, hf_state = to_hf(model_type, config, state, special_id(tokenizer, "[PAD]"), eos_id)
    files = tokenizer_files(tokenizer, config["block_size"])
    # safetensors wants every tensor contiguous and in its own memory (a tied head is written once)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in hf_state.items()}
    texts = {"config.json": json.dumps(hf_config, indent=2), **files}
    try:
        check_target(folder, overwrite)
        with atomic_folder(folder) as staging:
            write_folder(staging, save(tensors, metadata={"format": "pt"}), texts)
    except OSError as e:
        raise ExportError(f"cannot write {folder} ({e.strerror or e}); export to a folder you can write.") from None


def check_target(folder: str, overwrite: bool) -> None:
    """An ExportError unless folder is new, empty, an earlier export of ours, or `overwrite` allows replacing it."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ExportError(f"{folder} is a file; pass a folder to export into.")
    here = os.path.join(os.path.abspath(os.getcwd()), "")
    if here.startswith(os.path.join(os.path.abspath(folder), "")):
        raise ExportError(f"{folder} holds the current folder; export to a folder of its own.")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite \
            and not os.path.isfile(os.path.join(folder, EXPORT_MARKER)):
        raise ExportError(f"{folder} is not empty and holds no earlier headscope export; export to a new or empty "
                          "folder, or pass overwrite=True (--overwrite=True) to replace everything in it.")


def write_folder(folder: str, weights: bytes, texts: dict[str, str]) -> None:
    """model.safetensors, the text files and the marker of our exports, each written atomically into folder."""
    with atomic_write(os.path.join(folder, "model.safetensors")) as f:
        f.write(weights)
    marker = json.dumps({"written_by": "headscope", "files": sorted(["model.safetensors", *texts])})
    for name, text in {**texts, EXPORT_MARKER: marker}.items():
        with atomic_write(os.path.join(folder, name), "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
