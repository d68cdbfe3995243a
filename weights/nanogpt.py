"""nanoGPT's artifacts, read without executing anything: its dataset's meta.pkl and its ckpt.pt.

- `read_meta_pkl`: a restricted unpickler that builds dicts, lists, tuples, strings, numbers, booleans and
  None, and refuses anything else (a class or function reference is how a pickle runs code), in one line.
  nanoGPT's char datasets hold {'vocab_size': 65, 'itos': {0: '\\n', ...}, 'stoi': {'\\n': 0, ...}}.
- `checkpoint_from_nanogpt`: its ckpt.pt (loaded with weights_only=True) as a headscope checkpoint dict:
  the weights renamed (nanoGPT's GPT is GPT-2's: `transformer.h.N.*` -> `blocks.N.*`), model_args as
  our GPTConfig's (exact GELU and LayerNorm eps 1e-5, as nanoGPT's model), and the tokenizer's meta.
  Rows of a vocabulary padded past the tokenizer's (nanoGPT's 50304 for GPT-2's 50,257 ids) are dropped,
  so a padded id is never sampled.
Like the other weights/ modules it works on dicts and tensors only: it imports nothing of model/.
"""

import io
import pickle

import torch

from weights.checkpoint import upgrade_state
from weights.common import UserError

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


class NanoGPTError(UserError, ValueError):
    """A nanoGPT file that is not what nanoGPT writes."""


class RefusedReference(pickle.UnpicklingError):
    """A pickle asked for a class or function (module.name), which is how a pickle runs code."""


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that refuses every class and function reference: only plain data can come out."""

    def find_class(self, module: str, name: str):
        raise RefusedReference(f"{module}.{name}")


def only_plain(value, depth: int = 0) -> bool:
    """Whether value is plain data (PLAIN_TYPES all the way down, at most 20 levels deep)."""
    if depth > 20 or not isinstance(value, PLAIN_TYPES):
        return False
    if isinstance(value, dict):
        return all(only_plain(k, depth + 1) and only_plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(only_plain(v, depth + 1) for v in value)
    return True


def read_meta_pkl(path: str) -> dict:
    """The dict in a nanoGPT meta.pkl, read without executing anything; a NanoGPTError otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise NanoGPTError(f"cannot read {path} ({e.strerror}); pass a nanoGPT dataset folder.") from None
    try:
        meta = PlainUnpickler(io.BytesIO(data)).load()
    except RefusedReference as e:
        raise NanoGPTError(f"{path} refers to {e} (code, not data), which is never run here; a nanoGPT meta.pkl "
                           "holds only a dict of strings and ints: recreate it with nanoGPT's prepare.py.") from None
    except Exception:  # a truncated or foreign file: EOFError, ValueError, ...
        raise NanoGPTError(f"{path} is not a readable pickle; recreate it with nanoGPT's prepare.py.") from None
    if not isinstance(meta, dict) or not only_plain(meta):
        raise NanoGPTError(f"{path} holds a {type(meta).__name__}, not a dict of strings and ints; recreate it "
                           "with nanoGPT's prepare.py.")
    return meta


def char_tokenizer_meta(meta: dict, path: str) -> dict:
    """Our char tokenizer's meta for a nanoGPT char meta.pkl (itos: id -> character, ids 0..vocab_size-1)."""
    itos, size = meta.get("itos"), meta.get("vocab_size")
    if not (isinstance(itos, dict) and isinstance(size, int) and sorted(itos) == list(range(size))
            and all(isinstance(c, str) and len(c) == 1 for c in itos.values()) and len(set(itos.values())) == size):
        raise NanoGPTError(f"{path} is no character vocabulary (vocab_size and itos: ids 0..vocab_size-1 -> one "
                           "character each); recreate it with nanoGPT's prepare.py.")
    return {"tokenizer": "char", "vocab_size": size, "chars": "".join(itos[i] for i in range(size)), "specials": []}


def checkpoint_from_nanogpt(path: str, tokenizer: dict) -> dict:
    """A headscope checkpoint dict (model, model_type, model_args, tokenizer) from nanoGPT's ckpt.pt at path."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NanoGPTError(f"no checkpoint at {path}; pass nanoGPT's out_dir/ckpt.pt.") from None
    except Exception:
        raise NanoGPTError(f"{path} is corrupt or holds more than tensors and plain data; pass nanoGPT's ckpt.pt.") from None
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict) or not isinstance(ckpt.get("model"), dict) or any(k not in args for k in NANOGPT_ARGS):
        raise NanoGPTError(f"{path} is not a nanoGPT checkpoint (model and model_args with {', '.join(NANOGPT_ARGS)}).")
    vocab = tokenizer["vocab_size"]
    if args["vocab_size"] < vocab:
        raise NanoGPTError(f"{path} has {args['vocab_size']} token ids, fewer than its tokenizer's {vocab}; pass the "
                           "dataset it was trained on.")
    state = {}
    for key, value in upgrade_state(ckpt["model"]).items():  # drops torch.compile's _orig_mod. prefix
        if key.endswith(".attn.bias"):
            continue  # nanoGPT's causal mask buffer (without flash attention): not a weight
        key = key.replace("transformer.h.", "blocks.").replace("transformer.", "")
        state[key] = value[:vocab] if key in ("wte.weight", "lm_head.weight") else value  # padded rows dropped
    model_args = {k: args[k] for k in NANOGPT_ARGS} | {"vocab_size": vocab, "activation": "gelu", "norm": "layernorm",
                                                      "norm_eps": 1e-5, "pos_emb": "learned", "tie_embeddings": True}
    return {"model": state, "model_type": "gpt", "model_args": model_args, "tokenizer": tokenizer,
            "iter_num": ckpt.get("iter_num", 0), "best_val_loss": ckpt.get("best_val_loss")}

