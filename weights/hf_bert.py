"""Hugging Face BERT and RoBERTa folders (config.json + weights) as BERTConfig keyword arguments and our names.

Both are post-norm encoders with learned positions. A folder may hold the MLM head (BertForMaskedLM,
BertForPreTraining, RobertaForMaskedLM) or not (BertModel, RobertaModel: what sentence-transformers and
most published encoders ship); without it the model loads as an encoder alone (mlm_head=False).
RoBERTa counts its positions from its padding id + 1 (position_offset) and has one segment type.
Hugging Face keeps query, key and value as three Linear layers; headscope fuses them into one
`c_attn` (rows q, then k, then v), so their weights are concatenated. Everything else is a rename.
"""

import json
import os

import torch

from weights.hf_folder import PretrainedError

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
EMBEDDING_NAMES = {  # headscope <- Hugging Face (after its "bert." or "roberta." prefix is dropped)
    "wte.weight": "embeddings.word_embeddings.weight",
    "wpe.weight": "embeddings.position_embeddings.weight",
    "ln_emb.weight": "embeddings.LayerNorm.weight",
    "ln_emb.bias": "embeddings.LayerNorm.bias",
}
HEAD_NAMES = {  # the MLM head: BERT's names, then RoBERTa's
    "bert": {"head.dense.weight": "cls.predictions.transform.dense.weight",
             "head.dense.bias": "cls.predictions.transform.dense.bias",
             "head.ln.weight": "cls.predictions.transform.LayerNorm.weight",
             "head.ln.bias": "cls.predictions.transform.LayerNorm.bias",
             "head.decoder.bias": "cls.predictions.bias"},
    "roberta": {"head.dense.weight": "lm_head.dense.weight", "head.dense.bias": "lm_head.dense.bias",
                "head.ln.weight": "lm_head.layer_norm.weight", "head.ln.bias": "lm_head.layer_norm.bias",
                "head.decoder.bias": "lm_head.bias"},
}
DECODER = {"bert": "cls.predictions.decoder.weight", "roberta": "lm_head.decoder.weight"}
BLOCK_NAMES = {  # within blocks.N <- encoder.layer.N; each has .weight and .bias
    "attn.c_proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",  # post-norm: norm(x + attention(x))
    "mlp.c_fc": "intermediate.dense",
    "mlp.c_proj": "output.dense",
    "ln_2": "output.LayerNorm",
}


def bert_config(hf: dict) -> dict:
    """BERTConfig's keyword arguments for a Hugging Face BertConfig dict (or RobertaConfig's, which adds offsets)."""
    kind = hf.get("model_type", "bert")
    try:
        n_embd = hf["hidden_size"]
        values = dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                      n_embd=n_embd)
    except KeyError as e:
        raise PretrainedError(f"config.json lacks {e.args[0]!r}; it is not a {kind} config.") from None
    width = hf.get("intermediate_size", 4 * n_embd)
    if type(width) is not int or width < 1:
        raise PretrainedError(f"config.json's intermediate_size must be a positive integer, got {width!r}.")
    activation = ACTIVATIONS.get(hf.get("hidden_act", "gelu"))
    if activation is None:
        raise PretrainedError(f"hidden_act {hf['hidden_act']!r} is not supported; use one of {', '.join(ACTIVATIONS)}.")
    for key in ("is_decoder", "add_cross_attention"):  # a BertLMHeadModel has our names but causal attention
        if hf.get(key):
            raise PretrainedError(f"config.json sets {key}=True, which our BERT (a bidirectional encoder) does not "
                                  "compute; load an encoder (BertModel or BertForMaskedLM) folder.")
    if (hf.get("position_embedding_type") or "absolute") != "absolute":
        raise PretrainedError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                              "only absolute (learned) positions are.")
    values.update(block_size=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
                  dropout=hf.get("hidden_dropout_prob", 0.1), norm_eps=hf.get("layer_norm_eps", 1e-12),
                  activation=activation, bias=True, post_norm=True, mlp_hidden=None if width == 4 * n_embd else width)
    return values


def roberta_config(hf: dict) -> dict:
    """BERTConfig's keyword arguments for a RobertaConfig dict: positions start after the padding id."""
    values = bert_config(hf)
    pad = hf.get("pad_token_id", 1)
    if type(pad) is not int or not 0 <= pad < values["block_size"] - 1:
        raise PretrainedError(f"config.json's pad_token_id must be a small non-negative integer (RoBERTa counts "
                              f"positions from it), got {pad!r}.")
    values.update(position_offset=pad + 1, block_size=values["block_size"] - pad - 1)
    return values


def bert_state(hf_state: dict, config: dict, kind: str = "bert") -> dict:
    """headscope BERT parameter names -> tensors, from a Hugging Face BERT (kind='bert') or RoBERTa state dict.

    The MLM head's weights are taken when the folder has them (their absence: an encoder alone)."""
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix(f"{kind}.")
        if key.endswith(".gamma") or key.endswith(".beta"):  # checkpoints converted from TensorFlow
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        state[key] = value

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise PretrainedError(f"the checkpoint has no {name!r}; it is not a {kind} encoder of this config.")
        return state[name]

    heads = HEAD_NAMES[kind]
    names = dict(EMBEDDING_NAMES, **(heads if next(iter(heads.values())) in state else {}))
    if config.get("type_vocab_size", 2):
        names["wtt.weight"] = "embeddings.token_type_embeddings.weight"
    if "pooler.dense.weight" in state:
        names.update({"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"})
    ours = {mine: take(theirs) for mine, theirs in names.items()}
    for i in range(config["n_layer"]):
        hf = f"encoder.layer.{i}."
        for k in ("weight", "bias"):
            ours[f"blocks.{i}.attn.c_attn.{k}"] = torch.cat(
                [take(f"{hf}attention.self.{proj}.{k}") for proj in ("query", "key", "value")])
            for mine, theirs in BLOCK_NAMES.items():
                ours[f"blocks.{i}.{mine}.{k}"] = take(f"{hf}{theirs}.{k}")
    decoder = state.get(DECODER[kind])
    if decoder is not None and not torch.equal(decoder, ours["wte.weight"]):
        raise PretrainedError("the checkpoint's MLM decoder is not tied to its word embeddings; headscope's BERT ties them.")
    return ours


def roberta_state(hf_state: dict, config: dict) -> dict:
    """headscope BERT parameter names -> tensors, from a Hugging Face RoBERTa state dict."""
    return bert_state(hf_state, config, "roberta")


POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
                 "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean",
                 "pooling_mode_lasttoken": "lasttoken"}
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def read_pooling(folder: str) -> dict | None:
    """sentence-transformers' pooling of a folder (modules.json and its Pooling module's config.json) as
    {"mode": "mean" | "cls" | ..., "normalize": bool, "unsupported": a module we lack or None}; None without one."""
    modules = read_json_list(os.path.join(folder, "modules.json"))
    pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is None:
        return None
    try:
        with open(os.path.join(folder, str(pooling.get("path", "")), "config.json"), encoding="utf-8") as f:
            options = json.load(f)
    except (OSError, ValueError):
        raise PretrainedError(f"{folder}'s modules.json names a Pooling module whose config.json is unreadable; "
                              "restore the folder.") from None
    modes = [mode for key, mode in POOLING_MODES.items() if isinstance(options, dict) and options.get(key)]
    others = [str(m.get("type")) for m in modules if not str(m.get("type", "")).endswith(KNOWN_MODULES)]
    return {"mode": "+".join(modes) or "none", "unsupported": others[0] if others else None,
            "normalize": any(str(m.get("type", "")).endswith(".Normalize") for m in modules)}


def read_json_list(path: str) -> list[dict]:
    """A JSON file's list of objects (modules.json), or [] when it is missing or not one."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
