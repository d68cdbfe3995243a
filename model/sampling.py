"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), greedy.

The distribution is Hugging Face's for the same settings (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, in that order, on float32 logits; tests/test_gpt.py compares them): top-k keeps every
token tied with the k-th, top-p keeps the token that crosses top_p and at least one. Deliberate
differences: temperature 0 is greedy (HF refuses it when sampling); top_k 1 is the argmax, the lowest id
of a tie (HF's samples among the tied maxima); tokens tied at the top-p edge keep the lowest ids (HF's
unstable sort keeps whichever it puts last, for a short row the highest ids).
"""

import dataclasses
import numbers

import torch
import torch.nn.functional as F

from weights.errors import ConfigError

Generators = torch.Generator | list[torch.Generator] | None  # one stream for the batch, or one per row


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature (0 is greedy), top_k (None keeps every token; 1 is greedy),
    top_p (None or 1 keeps every token). Validated once, here: a ConfigError says which setting is wrong."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not self.temperature >= 0:  # also rejects nan
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
        top_k = self.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        """Whether the choice is the argmax (temperature 0 or top_k 1)."""
        return self.temperature == 0 or self.top_k == 1

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution (B, V) that `sample` draws from for logits (B, V); greedy: one-hot at the argmax."""
        if self.greedy:
            return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
        logits = logits.float()
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / self.temperature  # <= 0: a tiny temperature cannot overflow
        top_k, top_p = self.top_k, self.top_p
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            # stable: of tokens tied at the edge the lowest ids stay (as argmax picks the lowest), on any device
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
            # the mass from each token down to the least likely one, summed from the bottom up (Hugging Face's
            # sums: the tail is small, so this rounds less than 1 minus the mass above, which comes near 1)
            tail = F.softmax(sorted_logits.flip(-1), dim=-1).cumsum(dim=-1).flip(-1)
            drop = tail <= 1 - top_p  # keep the smallest set reaching top_p: the token that crosses it stays
            drop[:, 0] = False  # and always the most likely token
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return F.softmax(logits, dim=-1)

    def sample(self, logits: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Pick one token per row of logits (B, V) -> (B, 1); a list of generators gives each row its own
        random stream (the row then samples what it samples alone)."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != logits.size(0):
                raise ValueError(f"{len(generator)} generators for a batch of {logits.size(0)} rows; give one per row.")
            return torch.cat([self.sample(logits[i:i + 1], g) for i, g in enumerate(generator)])
        if self.greedy:
            return logits.argmax(dim=-1, keepdim=True)
        return torch.multinomial(self.probs(logits), num_samples=1, generator=generator)
