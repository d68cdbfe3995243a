"""Printing generated text as it comes, in time linear in its length.

Decoding every id so far at every new token costs O(n) per token, O(n^2) in all (16,000 tokens took
10x as long per token as 2,000). `StreamDecoder` decodes only a short window: the ids already printed
since the last boundary (for context: a tokenizer may render a token differently after another, e.g. a
leading space) plus the new ones, and prints what the window adds. A character whose bytes are split
across byte-level BPE tokens decodes to U+FFFD until its last byte arrives; it is held back until then.
It needs nothing of the tokenizer but `decode(ids) -> str`.
"""


class StreamDecoder:
    """Feed ids one at a time (`push`); each call returns the text that is now complete, `flush` the rest."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:printed] were printed last time: the context of the next window
        self.printed = 0  # ids[:printed] are printed

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ('' while a character waits for its last bytes)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """The text not yet returned (an incomplete last character prints as U+FFFD, as a full decode does)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        """What the window ids[prefix:] adds to the already printed ids[prefix:printed]."""
        if self.printed == len(self.ids):
            return ""
        before = self.tokenizer.decode(self.ids[self.prefix:self.printed])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if not final and (text.endswith("\ufffd") or len(text) <= len(before)):
            return ""  # a split character (or nothing visible yet): wait for the next id
        self.prefix, self.printed = self.printed, len(self.ids)
        return text[len(before):]
