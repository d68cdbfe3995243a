"""Tokenizer files of a Hugging Face folder: read into a data.tokenizer.Tokenizer (`folder_tokenizer`), and
written for an exported folder from a headscope tokenizer meta dict.

Reading (what from_pretrained sets as `model.tokenizer`), first found wins: tokenizer.json (any
`tokenizers` tokenizer: Llama's, Qwen's, Pythia's, ...), BERT's WordPiece vocab.txt, GPT-2's vocab.json +
merges.txt. The special tokens' roles (mask, cls, sep, ...) come from tokenizer_config.json or
special_tokens_map.json. A folder with none of these has no tokenizer (None).

- GPT-2 BPE (`tokenizer: gpt2`): GPT-2's own vocab.json and merges.txt (tiktoken's cached encoder.json
  and vocab.bpe, byte for byte) and a tokenizer_config.json, which `AutoTokenizer.from_pretrained` reads.
- Characters (`tokenizer: char`): a `tokenizers` word-level tokenizer.json (one token per character,
  the special tokens such as [MASK] matched first), written as plain JSON, so no extra package is
  needed to write it; `AutoTokenizer.from_pretrained(folder)` loads it through `tokenizers`.
  vocab.json (token -> id) is written beside it for readers without `tokenizers`.
"""

import hashlib
import json
import os
import tempfile

from data.tokenizer import HFTokenizer, TokenizerError
from weights.common import UserError

GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_EOT, GPT2_EOT_ID = "<|endoftext|>", 50256


class TokenizerExportError(UserError, ValueError):
    """A tokenizer whose files cannot be written."""


def tiktoken_cached(name: str) -> str:
    """The text of a GPT-2 BPE file in tiktoken's cache (named by the sha1 of its download URL)."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") \
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    path = os.path.join(folder, hashlib.sha1((GPT2_BASE_URL + name).encode()).hexdigest())
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        raise TokenizerExportError(f"GPT-2's {name} is not in tiktoken's cache {folder}; run "
                                   "`python data/setup_tiktoken.py` (or encode any text once online) first.") from None


def special_entries(specials: list[str], first_id: int) -> list[dict]:
    """tokenizers' added_tokens entries: the special tokens, numbered after the base vocabulary."""
    return [{"id": first_id + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, tok in enumerate(specials)]


def special_roles(specials: list[str]) -> dict:
    """tokenizer_config.json's roles (mask_token, pad_token, ...) of BERT's special tokens that are present."""
    roles = {"[PAD]": "pad_token", "[MASK]": "mask_token", "[CLS]": "cls_token", "[SEP]": "sep_token"}
    return {roles[tok]: tok for tok in specials if tok in roles}


def gpt2_files(meta: dict, max_length: int) -> dict[str, str]:
    """vocab.json, merges.txt and tokenizer_config.json of GPT-2's BPE (plus any special tokens)."""
    specials = list(meta.get("specials", ()))
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT,
              "model_max_length": max_length, "add_prefix_space": False,
              "added_tokens_decoder": {str(e["id"]): {k: v for k, v in e.items() if k != "id"}
                                       for e in special_entries([GPT2_EOT], GPT2_EOT_ID) + special_entries(specials, 50257)},
              **special_roles(specials)}
    return {"vocab.json": tiktoken_cached("encoder.json"), "merges.txt": tiktoken_cached("vocab.bpe"),
            "tokenizer_config.json": json.dumps(config, indent=2)}


def char_files(meta: dict, max_length: int) -> dict[str, str]:
    """tokenizer.json (word level, one token per character), vocab.json and tokenizer_config.json."""
    chars, specials = meta["chars"], list(meta.get("specials", ()))
    vocab = {ch: i for i, ch in enumerate(chars)} | {tok: len(chars) + i for i, tok in enumerate(specials)}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None,
                 "added_tokens": special_entries(specials, len(chars)), "normalizer": None,
                 # every character its own token; special tokens are matched before this split
                 "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated",
                                   "invert": False},
                 "post_processor": None, "decoder": {"type": "Fuse"},
                 "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "clean_up_tokenization_spaces": False, **special_roles(specials)}
    return {"tokenizer.json": json.dumps(tokenizer, ensure_ascii=False, indent=1),
            "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=1),
            "tokenizer_config.json": json.dumps(config, indent=2)}


def tokenizer_files(meta: dict | None, max_length: int) -> dict[str, str]:
    """File name -> text of the tokenizer files for a tokenizer meta dict (none for None)."""
    if meta is None:
        return {}
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        return gpt2_files(meta, max_length)
    if kind == "char" and isinstance(meta.get("chars"), str):
        return char_files(meta, max_length)
    raise TokenizerExportError(f"tokenizer {kind!r} cannot be exported; only GPT-2 BPE and char tokenizers can.")


def special_id(meta: dict | None, token: str, default: int = 0) -> int:
    """The id of a special token of a tokenizer meta dict (numbered after the base vocabulary), or default."""
    specials = list((meta or {}).get("specials", ()))
    if token not in specials:
        return default
    base = len(meta["chars"]) if meta.get("tokenizer") == "char" else 50257
    return base + specials.index(token)


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GUESSED_ROLES = {"mask_token": ("[MASK]", "<mask>"), "cls_token": ("[CLS]", "<s>"), "sep_token": ("[SEP]", "</s>"),
                 "pad_token": ("[PAD]", "<pad>"), "unk_token": ("[UNK]", "<unk>"), "eos_token": (GPT2_EOT, "</s>")}


def read_json(path: str) -> dict:
    """A JSON file's object, or {} when it is missing or not one."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def special_token_roles(folder: str) -> dict[str, str]:
    """role (mask_token, cls_token, ...) -> the token's text, from tokenizer_config.json and special_tokens_map.json."""
    roles = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        for role, value in read_json(os.path.join(folder, name)).items():
            value = value.get("content") if isinstance(value, dict) else value
            if role.endswith("_token") and isinstance(value, str):
                roles[role] = value
    return roles


def guess_roles(backend) -> dict[str, str]:
    """Roles of the usual special tokens a vocabulary holds, for a folder without tokenizer_config.json."""
    found = {}
    for role, candidates in GUESSED_ROLES.items():
        token = next((t for t in candidates if backend.token_to_id(t) is not None), None)
        if token is not None:
            found[role] = token
    return found


def backend_from_files(folder: str, lowercase: bool):
    """A `tokenizers` Tokenizer from vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE); None without."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers  # lazy: folders only
    vocab_txt, vocab_json, merges = (os.path.join(folder, f) for f in ("vocab.txt", "vocab.json", "merges.txt"))
    if os.path.isfile(vocab_txt):
        backend = Tokenizer(models.WordPiece.from_file(vocab_txt, unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        specials = BERT_SPECIALS
    elif os.path.isfile(vocab_json) and os.path.isfile(merges):
        backend = Tokenizer(models.BPE.from_file(vocab_json, merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        specials = (GPT2_EOT,)
    else:
        return None
    backend.add_special_tokens([t for t in specials if backend.token_to_id(t) is not None])
    return backend


def folder_tokenizer(folder: str) -> HFTokenizer | None:
    """The tokenizer a Hugging Face folder holds (see the module docstring), or None when it holds none."""
    roles = special_token_roles(folder)
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            raise TokenizerError(f"{path} is unreadable; restore it, or delete it and pass --tokenizer=.") from None
        tokenizer = HFTokenizer.from_json(text, roles)
    else:
        try:
            lowercase = read_json(os.path.join(folder, "tokenizer_config.json")).get("do_lower_case", True) is not False
            backend = backend_from_files(folder, lowercase)
        except ImportError:
            raise TokenizerError("this folder's tokenizer needs the tokenizers package: pip install tokenizers.") from None
        except Exception as e:  # the library's own error for malformed vocab or merges files
            raise TokenizerError(f"the tokenizer files of {folder} cannot be read ({str(e)[:80]}); restore them "
                                 "or pass --tokenizer=.") from None
        if backend is None:
            return None
        tokenizer = HFTokenizer(backend, roles)
    if not roles:
        tokenizer = HFTokenizer(tokenizer.backend, guess_roles(tokenizer.backend))
    return tokenizer
