"""The one decoding loop: GPT.generate / generate_stream, the static decoder (model/fast_decode.py) and the
encoder-decoders' generate (model/seq2seq.py, Transformer and RNN) all run `decode`.

    for each new token:
        first step, no KV cache, or a window grew past block_size: feed every row's window (its last
        tokens) through fresh caches; otherwise feed only the token sampled last
        sample the next token from the last position's logits

What a step runs is a small object with prefill(ids, mask) and step(token, mask): `CachedSteps` runs the
model's forward with a KV cache per block (or none: nanoGPT's rerun of the last block_size tokens); the
static decoder and the encoder-decoders (seq2seq.EncodedSteps) bring their own.

Prompts of different lengths are left-padded (Hugging Face's convention: attention_mask 1 = real token).
Each row is then decoded exactly as it would be alone: its positions count its own tokens (padding has
none), its queries never see padding keys, and its context window moves on its own. When a row's window
is full it keeps its last block_size // 2 tokens (as a single prompt does) and the batch is packed again.
"""

from collections.abc import Iterator

import torch

from model.attention import PastKeyValues
from model.sampling import Generators, Sampling


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) mask, 1 at real tokens -> (B, S) positions: 0, 1, .. over each row's real tokens (0 on padding)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def padded_causal_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask for the last T = q_len of S positions: causal, no padding keys.

    A padding query may still see itself, so that its row is never empty (SDPA would give NaN);
    what a padding position computes is never read.
    """
    S = attention_mask.size(1)
    q_pos = torch.arange(S - q_len, S, device=attention_mask.device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    real = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return ((k_pos <= q_pos) & real) | (k_pos == q_pos)  # (B, 1, T, S)


def unpad(idx: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's real tokens of a left-padded batch idx (B, T); a badly formed mask is a ValueError."""
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match the prompts "
                         f"{tuple(idx.shape)}.")
    real = attention_mask.bool()
    if (real[:, :-1] & ~real[:, 1:]).any():
        raise ValueError("attention_mask must be left-padded: each row's zeros first, then its ones.")
    if not real[:, -1].all():
        raise ValueError("a prompt row has no tokens; give every row at least one.")
    return [row[keep] for row, keep in zip(idx, real)]


def pack(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D token windows to one batch: (B, W) ids (0 on padding) and (B, W) mask."""
    width = max(len(w) for w in windows)
    ids = windows[0].new_zeros(len(windows), width)
    mask = windows[0].new_zeros(len(windows), width)
    for i, w in enumerate(windows):
        ids[i, width - len(w):] = w
        mask[i, width - len(w):] = 1
    return ids, mask


def until_stopped(tokens: Iterator[torch.Tensor], stop_token: int | None) -> Iterator[torch.Tensor]:
    """The (B, 1) tokens as they come; with stop_token, a row that has emitted it emits it again (Hugging
    Face's eos_token_id with pad_token_id the same), and the stream ends once every row has."""
    if stop_token is None:
        yield from tokens
        return
    done = None  # (B, 1): the rows that have emitted stop_token
    for token in tokens:
        done = torch.zeros_like(token, dtype=torch.bool) if done is None else done
        token = token.masked_fill(done, stop_token)
        done = done | (token == stop_token)
        yield token
        if done.all():
            return


class Context:
    """The tokens so far (B, T), left-padded, and how many of each row's last tokens its window holds."""

    def __init__(self, idx: torch.Tensor, attention_mask: torch.Tensor | None, block_size: int):
        if idx.size(1) == 0:
            raise ValueError("the prompt is empty; give every row at least one token (e.g. a start or <|endoftext|> token).")
        self.idx, self.padded, self.block_size = idx, attention_mask is not None, block_size
        # each row's window is its last lengths[i] tokens (plain ints: deciding a step never waits for the device)
        self.lengths = [len(row) for row in unpad(idx, attention_mask)] if self.padded else [idx.size(1)] * idx.size(0)
        self.mask = None  # padded prompts: (B, W) 1 at the tokens of each row's window in the cache, 0 on padding

    def full(self) -> bool:
        """Whether some row's window has grown past block_size."""
        return max(self.lengths) > self.block_size

    def crop(self, keep: int) -> None:
        """A window longer than block_size keeps only its last `keep` tokens."""
        self.lengths = [keep if n > self.block_size else n for n in self.lengths]

    def window(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's window, left-padded to the longest one: ids (B, W) (0 on padding) and mask (None unpadded)."""
        W = max(self.lengths)
        ids = self.idx[:, -W:]
        if not self.padded:
            return ids, None
        lengths = torch.tensor(self.lengths, device=ids.device)[:, None]  # (B, 1)
        self.mask = (torch.arange(W, device=ids.device) >= W - lengths).long()  # (B, W)
        return ids * self.mask, self.mask

    def append(self, token: torch.Tensor) -> None:
        """Add each row's new token (B, 1); only the last block_size + 1 tokens are ever read again."""
        self.idx = torch.cat([self.idx[:, -self.block_size:], token], dim=1)
        self.lengths = [n + 1 for n in self.lengths]
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)


class CachedSteps:
    """The steps of a model whose forward takes (ids, caches, last_only, attention_mask): GPT's."""

    def __init__(self, model, use_cache: bool):
        self.model, self.use_cache, self.caches = model, use_cache, None

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Last-position logits (B, V) after ids (B, W), through fresh caches (none without use_cache)."""
        self.caches = [PastKeyValues(self.model.config.block_size) for _ in self.model.blocks] if self.use_cache else None
        return self.step(ids, mask)

    def step(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Last-position logits (B, V) after ids (B, T) continue the cached ones (mask covers both)."""
        logits, _ = self.model(ids, caches=self.caches, last_only=True, attention_mask=mask)
        return logits[:, -1]


def decode(steps, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling, generator: Generators = None,
           attention_mask: torch.Tensor | None = None, stop_token: int | None = None,
           use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new tokens continuing idx (B, T) (left-padded where attention_mask is 0), each step
    run by `steps` (prefill(ids, mask) and step(token, mask), both -> logits (B, V)); stop_token as until_stopped."""
    block_size = steps.model.config.block_size
    context = Context(idx, attention_mask, block_size)
    return until_stopped(new_tokens(steps, context, max_new_tokens, sampling, generator, use_cache), stop_token)


@torch.no_grad()
def new_tokens(steps, context: Context, max_new_tokens: int, sampling: Sampling, generator: Generators,
               use_cache: bool) -> Iterator[torch.Tensor]:
    """decode's loop, without stop_token."""
    block_size = context.block_size
    for n in range(max_new_tokens):
        if n == 0 or not use_cache or context.full():  # feed every row's window through fresh caches
            context.crop(block_size if n == 0 or not use_cache else max(1, block_size // 2))
            logits = steps.prefill(*context.window())
        else:  # the token sampled last continues the cached window
            logits = steps.step(token, context.mask)
        token = sampling.sample(logits, generator)
        context.append(token)
        yield token
