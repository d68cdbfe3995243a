"""A Hugging Face BertForMaskedLM (config.json + weights) as BERTConfig keyword arguments and our parameter names.

Hugging Face keeps query, key and value as three Linear layers; headscope fuses them into one
`c_attn` (rows q, then k, then v), so their weights are concatenated. Everything else is a rename.
"""

import torch

from weights.hf_folder import PretrainedError, read_hf_folder

WHAT = "folder holding a BertForMaskedLM's config.json and weights"
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
EMBEDDING_NAMES = {  # headscope <- Hugging Face (after its "bert." prefix is dropped)
    "wte.weight": "embeddings.word_embeddings.weight",
    "wpe.weight": "embeddings.position_embeddings.weight",
    "ln_emb.weight": "embeddings.LayerNorm.weight",
    "ln_emb.bias": "embeddings.LayerNorm.bias",
}
HEAD_NAMES = {
    "head.dense.weight": "cls.predictions.transform.dense.weight",
    "head.dense.bias": "cls.predictions.transform.dense.bias",
    "head.ln.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.ln.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.decoder.bias": "cls.predictions.bias",
}
BLOCK_NAMES = {  # within blocks.N <- encoder.layer.N; each has .weight and .bias
    "attn.c_proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",  # post-norm: norm(x + attention(x))
    "mlp.c_fc": "intermediate.dense",
    "mlp.c_proj": "output.dense",
    "ln_2": "output.LayerNorm",
}


def read_bert(name_or_dir: str) -> tuple[dict, dict]:
    """(config.json, every tensor) of a BertForMaskedLM folder or Hub id."""
    return read_hf_folder(name_or_dir, WHAT)


def config_from_hf(hf: dict) -> dict:
    """BERTConfig's keyword arguments for a Hugging Face BertConfig dict."""
    if hf.get("model_type", "bert") != "bert":
        raise PretrainedError(f"this is a {hf['model_type']!r} model; BERT.from_pretrained reads BERT models only.")
    try:
        n_embd = hf["hidden_size"]
        values = dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                      n_embd=n_embd)
    except KeyError as e:
        raise PretrainedError(f"config.json lacks {e.args[0]!r}; it is not a BERT config.") from None
    width = hf.get("intermediate_size", 4 * n_embd)
    if type(width) is not int or width < 1:
        raise PretrainedError(f"config.json's intermediate_size must be a positive integer, got {width!r}.")
    activation = ACTIVATIONS.get(hf.get("hidden_act", "gelu"))
    if activation is None:
        raise PretrainedError(f"hidden_act {hf['hidden_act']!r} is not supported; use one of {', '.join(ACTIVATIONS)}.")
    for key in ("is_decoder", "add_cross_attention"):  # a BertLMHeadModel has our names but causal attention
        if hf.get(key):
            raise PretrainedError(f"config.json sets {key}=True, which our BERT (a bidirectional encoder) does not "
                                  "compute; load a BertForMaskedLM folder.")
    if (hf.get("position_embedding_type") or "absolute") != "absolute":
        raise PretrainedError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                              "only absolute (learned) positions are.")
    values.update(block_size=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
                  dropout=hf.get("hidden_dropout_prob", 0.1), norm_eps=hf.get("layer_norm_eps", 1e-12),
                  activation=activation, bias=True, post_norm=True, mlp_hidden=None if width == 4 * n_embd else width)
    return values


def state_from_hf(hf_state: dict, n_layer: int, type_vocab_size: int) -> dict:
    """headscope BERT parameter names -> tensors, from a Hugging Face BERT state dict."""
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix("bert.")
        if key.endswith(".gamma") or key.endswith(".beta"):  # checkpoints converted from TensorFlow
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        state[key] = value

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise PretrainedError(f"the checkpoint has no {name!r}; it is not a BertForMaskedLM of this config.")
        return state[name]

    names = {**EMBEDDING_NAMES, **HEAD_NAMES}
    if type_vocab_size:
        names["wtt.weight"] = "embeddings.token_type_embeddings.weight"
    if "pooler.dense.weight" in state:
        names.update({"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"})
    ours = {mine: take(theirs) for mine, theirs in names.items()}
    for i in range(n_layer):
        hf = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            ours[f"blocks.{i}.attn.c_attn.{kind}"] = torch.cat(
                [take(f"{hf}attention.self.{proj}.{kind}") for proj in ("query", "key", "value")])
            for mine, theirs in BLOCK_NAMES.items():
                ours[f"blocks.{i}.{mine}.{kind}"] = take(f"{hf}{theirs}.{kind}")
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, ours["wte.weight"]):
        raise PretrainedError("the checkpoint's MLM decoder is not tied to its word embeddings; headscope's BERT ties them.")
    return ours
