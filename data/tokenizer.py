"""Tokenizers shared by every model family. A tokenizer is rebuilt from its `meta` dict, which
prepare scripts write to meta.json and train.py stores in each checkpoint."""


class TokenizerError(ValueError):
    """Text that the tokenizer cannot encode, or a meta dict it does not understand."""


class CharTokenizer:
    """Character-level: one id per distinct character of the corpus, in sorted order."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary of every distinct character in text."""
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a character outside the vocabulary is a TokenizerError naming it."""
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this model's vocabulary of "
                                 f"{self.vocab_size} characters; remove it from the prompt.") from None

    def decode(self, ids) -> str:
        """Ids -> text."""
        return "".join(self.chars[i] for i in ids)

    def meta(self) -> dict:
        """What rebuilds this tokenizer."""
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}


def from_meta(meta: dict):
    """Rebuild the tokenizer described by a meta dict."""
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    raise TokenizerError(f"unknown tokenizer {kind!r} in meta; re-run the dataset's prepare.py.")
