"""Reading a Hugging Face model folder (config.json and its weights), for every family.

A folder holds config.json and model.safetensors or pytorch_model.bin, each possibly sharded
(`*.index.json` naming the shard files). A name that is not a folder is downloaded from the Hub
when huggingface_hub is installed and the machine is online.
"""

import json
import os
import re

import torch

from weights.checkpoint import CheckpointError

# what a Hub download fetches besides the weights: the tokenizer and sentence-transformers' pooling
FOLDER_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                "special_tokens_map.json", "modules.json", "1_Pooling/config.json"]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class PretrainedError(CheckpointError):
    """Pretrained weights that cannot be found, downloaded or used."""


def download(repo_id: str, what: str) -> str:
    """Fetch config.json and the weights of a Hub model into the local cache; return the folder.

    `what` names the kind of folder expected (e.g. "Hugging Face GPT-2 folder") in the error messages.
    """
    try:
        from huggingface_hub import snapshot_download  # lazy: only downloads need it
    except ImportError:
        raise PretrainedError(f"there is no folder {repo_id}; pass a local {what} "
                              "(or pip install huggingface_hub to download Hub models).") from None
    try:
        folder = snapshot_download(repo_id, allow_patterns=FOLDER_FILES + ["model*.safetensors*"])
        if not any(os.path.exists(os.path.join(folder, f)) for f in WEIGHT_FILES):  # an older, .bin-only model
            folder = snapshot_download(repo_id, allow_patterns=FOLDER_FILES + ["pytorch_model*.bin*"])
    except Exception as e:  # offline, hub errors, ...
        raise PretrainedError(f"cannot download {repo_id} from the Hugging Face Hub ({type(e).__name__}); check "
                              f"your connection, or pass a local {what}.") from None
    return folder


def resolve_folder(name_or_dir: str, what: str, hub_names: dict[str, str] | None = None) -> str:
    """A local folder as is; a Hub id (or a short name in `hub_names`, mapped to its Hub id) downloaded."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if os.path.isfile(name_or_dir):
        raise PretrainedError(f"{name_or_dir} is a file; pass the folder that holds config.json and the weights.")
    if hub_names is not None:
        if name_or_dir not in hub_names:
            raise PretrainedError(f"{name_or_dir!r} is neither a folder nor one of {', '.join(hub_names)}; "
                                  f"pass one of those names or a {what} with config.json and model.safetensors.")
        return download(hub_names[name_or_dir], what)
    if not re.fullmatch(r"[\w-][\w.-]*(/[\w-][\w.-]*)?", name_or_dir):
        raise PretrainedError(f"there is no folder {name_or_dir}; pass a {what} "
                              "(or a Hugging Face Hub id such as bert-base-uncased).")
    return download(name_or_dir, what)


def read_config(folder: str, what: str = "Hugging Face model folder") -> dict:
    """The folder's config.json as a dict."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if isinstance(config, dict):
            return config
    except (OSError, ValueError):
        pass
    raise PretrainedError(f"{folder} has no readable config.json; pass a {what}.")


def read_weight_file(path: str) -> dict:
    """Tensors of one .safetensors or .bin file (no code is unpickled)."""
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file  # lazy: installed with huggingface_hub/transformers
            except ImportError:
                raise PretrainedError(f"reading {path} needs the safetensors package: pip install safetensors.") from None
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PretrainedError:
        raise
    except Exception:
        raise PretrainedError(f"{path} is missing, corrupt or not a weights file; download the model again.") from None
    if not isinstance(state, dict):
        raise PretrainedError(f"{path} holds no state dict; download the model again.")
    return state


def weight_files(folder: str, what: str) -> list[str]:
    """The weight files of a folder, in order: one file, or the shards its index names."""
    name = next((f for f in WEIGHT_FILES if os.path.exists(os.path.join(folder, f))), None)
    if name is None:
        raise PretrainedError(f"{folder} holds no {' or '.join(WEIGHT_FILES[::2])}; pass a {what} "
                              "with its weights.")
    if not name.endswith(".index.json"):
        return [os.path.join(folder, name)]
    try:  # a model sharded over several files
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return [os.path.join(folder, file) for file in sorted(set(json.load(f)["weight_map"].values()))]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        raise PretrainedError(f"{os.path.join(folder, name)} is unreadable; download the model again.") from None


def read_hf_folder(name_or_dir: str, what: str = "Hugging Face model folder",
                   hub_names: dict[str, str] | None = None) -> tuple[dict, dict]:
    """(config.json as a dict, every tensor of the weights) of a Hugging Face model folder or Hub id."""
    folder = resolve_folder(name_or_dir, what, hub_names)
    return read_config(folder, what), read_weights(folder, what)


def read_weights(folder: str, what: str = "Hugging Face model folder") -> dict:
    """Every tensor of a folder's weight files."""
    state = {}
    for path in weight_files(folder, what):
        state.update(read_weight_file(path))
    return state


def check_state(own: dict, state: dict, source: str) -> None:
    """Raise a PretrainedError unless `state` has exactly the keys and shapes of `own` (both state dicts)."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise PretrainedError(f"the weights in {source} do not fit config.json ({what}); download them again.")
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise PretrainedError(f"the weights in {source} do not fit config.json ({key} is {tuple(tensor.shape)}, "
                                  f"expected {tuple(own[key].shape)}); download them again.")
