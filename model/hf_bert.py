"""Reading a Hugging Face BertForMaskedLM folder (config.json + weights) into headscope's BERT names.

Hugging Face keeps query, key and value as three Linear layers; headscope fuses them into one
`c_attn` (rows q, then k, then v), so their weights are concatenated. Everything else is a rename.
"""

import dataclasses
import json
import os
import re

import torch

from model.checkpoint import CheckpointError
from model.config import BERTConfig, ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
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


def download(repo_id: str) -> str:
    """Fetch config.json and the weights of a Hub model into the local cache; return the folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"there is no folder {repo_id}; pass a local BertForMaskedLM folder "
                              "(or pip install huggingface_hub to download Hub models).") from None
    try:
        folder = snapshot_download(repo_id, allow_patterns=["config.json", "model*.safetensors*"])
        if not any(os.path.exists(os.path.join(folder, f)) for f in WEIGHT_FILES):  # an older, .bin-only model
            folder = snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model*.bin*"])
    except Exception as e:
        raise CheckpointError(f"there is no folder {repo_id} and downloading it from the Hugging Face Hub failed "
                              f"({type(e).__name__}); pass a local BertForMaskedLM folder.") from None
    return folder


def read_weight_file(path: str) -> dict:
    """Tensors of one .safetensors or .bin file (no code is unpickled)."""
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise CheckpointError(f"reading {path} needs the safetensors package: pip install safetensors.") from None
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception:
        raise CheckpointError(f"{path} is missing, corrupt or not a weights file; download the model again.") from None


def read_hf_folder(name_or_dir: str) -> tuple[dict, dict]:
    """(config.json as a dict, every tensor of the weights) of a Hugging Face model folder or Hub id."""
    if os.path.isfile(name_or_dir):
        raise CheckpointError(f"{name_or_dir} is a file; pass the folder that holds config.json and the weights.")
    if not os.path.isdir(name_or_dir) and not re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", name_or_dir):
        raise CheckpointError(f"there is no folder {name_or_dir}; pass a folder holding a BertForMaskedLM's "
                              "config.json and weights (or a Hugging Face Hub id such as bert-base-uncased).")
    folder = name_or_dir if os.path.isdir(name_or_dir) else download(name_or_dir)
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            hf_config = json.load(f)
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{folder} has no readable config.json; it is not a Hugging Face model folder.") from None
    name = next((f for f in WEIGHT_FILES if os.path.exists(os.path.join(folder, f))), None)
    if name is None:
        raise CheckpointError(f"{folder} has no {' or '.join(WEIGHT_FILES[::2])}; download the weights too.")
    files = [name]
    if name.endswith(".index.json"):  # a model sharded over several files
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, AttributeError):
            raise CheckpointError(f"{os.path.join(folder, name)} is unreadable; download the model again.") from None
    state = {}
    for file in files:
        state.update(read_weight_file(os.path.join(folder, file)))
    return hf_config, state


def config_from_hf(hf: dict, **overrides) -> BERTConfig:
    """The BERTConfig of a Hugging Face BertConfig dict; `overrides` replace any of its values."""
    if hf.get("model_type", "bert") != "bert":
        raise CheckpointError(f"this is a {hf['model_type']!r} model; BERT.from_pretrained reads BERT models only.")
    try:
        n_embd = hf["hidden_size"]
        values = dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                      n_embd=n_embd)
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e.args[0]!r}; it is not a BERT config.") from None
    if hf.get("intermediate_size", 4 * n_embd) != 4 * n_embd:
        raise CheckpointError(f"intermediate_size {hf['intermediate_size']} is not 4 x hidden_size ({4 * n_embd}); "
                              "headscope's MLP is 4 times as wide as the model.")
    activation = ACTIVATIONS.get(hf.get("hidden_act", "gelu"))
    if activation is None:
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported; use one of {', '.join(ACTIVATIONS)}.")
    if (hf.get("position_embedding_type") or "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                              "only absolute (learned) positions are.")
    values.update(block_size=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
                  dropout=hf.get("hidden_dropout_prob", 0.1), norm_eps=hf.get("layer_norm_eps", 1e-12),
                  activation=activation, bias=True, post_norm=True)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(BERTConfig)}
    if unknown:
        raise ConfigError(f"unknown BERTConfig key {sorted(unknown)[0]!r} in from_pretrained overrides.")
    return BERTConfig(**{**values, **overrides})


def state_from_hf(hf_state: dict, config: BERTConfig) -> dict:
    """headscope BERT parameter names -> tensors, from a Hugging Face BERT state dict."""
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix("bert.")
        if key.endswith(".gamma") or key.endswith(".beta"):  # checkpoints converted from TensorFlow
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        state[key] = value

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"the checkpoint has no {name!r}; it is not a BertForMaskedLM of this config.")
        return state[name]

    names = {**EMBEDDING_NAMES, **HEAD_NAMES}
    if config.type_vocab_size:
        names["wtt.weight"] = "embeddings.token_type_embeddings.weight"
    if "pooler.dense.weight" in state:
        names.update({"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"})
    ours = {mine: take(theirs) for mine, theirs in names.items()}
    for i in range(config.n_layer):
        hf = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            ours[f"blocks.{i}.attn.c_attn.{kind}"] = torch.cat(
                [take(f"{hf}attention.self.{proj}.{kind}") for proj in ("query", "key", "value")])
            for mine, theirs in BLOCK_NAMES.items():
                ours[f"blocks.{i}.{mine}.{kind}"] = take(f"{hf}{theirs}.{kind}")
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, ours["wte.weight"]):
        raise CheckpointError("the checkpoint's MLM decoder is not tied to its word embeddings; headscope's BERT ties them.")
    return ours
