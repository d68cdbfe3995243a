"""Batched decoding of left-padded prompts (Hugging Face's convention: attention_mask 1 = real token).

Each row of a padded batch is decoded exactly as it would be alone: its positions count its own
tokens (padding has none), its queries never see padding keys, and its context window moves on its
own. The batch shares one KV cache tensor per layer, (B, nh, W, hs) with W the longest row's window;
shorter rows are padded on the left. When a row's window is full, it keeps its last block_size // 2
tokens (as a single prompt does) and the batch is packed again: every row's window is fed once more
through fresh caches (the model's only full pass besides the first).
"""

from collections.abc import Iterator

import torch

from model.attention import PastKeyValues
from model.sampling import sample_next

Generators = torch.Generator | list[torch.Generator] | None


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


def sample_rows(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: Generators) -> torch.Tensor:
    """sample_next for (B, V) logits -> (B, 1); a list of generators gives each row its own random stream."""
    if not isinstance(generator, (list, tuple)):
        return sample_next(logits, temperature, top_k, top_p, generator)
    if len(generator) != logits.size(0):
        raise ValueError(f"{len(generator)} generators for a batch of {logits.size(0)} rows; give one per row.")
    return torch.cat([sample_next(logits[i:i + 1], temperature, top_k, top_p, g) for i, g in enumerate(generator)])


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


def rewindow(rows: list[torch.Tensor], starts: list[int], block_size: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack every row's window rows[i][starts[i]:] (ids, mask as pack); a row whose window has grown past
    block_size first moves its start on to keep only its last `keep` tokens (starts is updated)."""
    for i, row in enumerate(rows):
        if len(row) - starts[i] > block_size:
            starts[i] = len(row) - keep
    return pack([row[s:] for row, s in zip(rows, starts)])


@torch.no_grad()
def generate_padded(model, idx: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    use_cache: bool = True, generator: Generators = None) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new tokens for left-padded prompts idx (B, T) with attention_mask (B, T)."""
    block_size = model.config.block_size
    rows = unpad(idx, attention_mask)
    starts = [max(0, len(r) - block_size) for r in rows]  # each row's window: rows[i][starts[i]:]
    caches, mask = None, None
    for _ in range(max_new_tokens):
        full = caches is not None and caches[0].len + 1 > block_size
        if caches is None or full or not use_cache:  # (re)build: feed every row's window
            pending, mask = rewindow(rows, starts, block_size, max(1, block_size // 2) if use_cache else block_size)
            caches = [PastKeyValues(block_size) for _ in model.blocks] if use_cache else None
        else:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        logits, _ = model(pending, caches=caches, last_only=True, attention_mask=mask)
        next_token = sample_rows(logits[:, -1], temperature, top_k, top_p, generator)
        rows = [torch.cat([row, t]) for row, t in zip(rows, next_token)]
        pending = next_token
        yield next_token
