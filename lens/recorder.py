"""Attention maps beyond a single forward pass: recorded during generation, and summarised per head.

    recorder = AttentionRecorder(model)                 # hooks every `*attn.pattern`
    with recorder:
        out = model.generate(idx, max_new_tokens=20)    # KV cache on: one query row per step
    maps = recorder.maps(start_len=idx.size(1))         # name -> (B, nh, N, N), N = tokens fed
    print(stats_table(head_stats_all(maps)))
"""

import math
from contextlib import ExitStack

import torch

from lens.modes import evaluating

STATS = ("entropy", "max", "distance")


class AttentionRecorder:
    """Captures every call's pattern and places its rows at absolute token positions.

    Made for generation loops that feed the whole (cropped) prompt first and then one token per
    call, with or without a KV cache: call k then ends at token start_len + k. Row n of a recorded
    map is what token n attended to when it was fed; the last generated token is never fed back,
    so it has no row. An encoder-decoder's encoder runs once per source: its maps are that one pass,
    (B, nh, S, S). Beam search (which reorders rows) is not supported.
    """

    def __init__(self, model, names_filter="*attn.pattern"):
        self.model, self.names = model, model.match_hooks(names_filter)
        modules = dict(model.named_modules())  # a cross-attention map's keys are the whole source
        self.cross = {name: bool(getattr(modules[name.rsplit(".", 1)[0]], "cross", False)) for name in self.names}
        self.calls: dict[str, list[torch.Tensor]] = {}
        self._context = None

    def _record(self, pattern: torch.Tensor, name: str) -> None:
        self.calls.setdefault(name, []).append(pattern.detach().float().cpu())

    def __enter__(self):
        self.calls = {}
        self._context = ExitStack()  # dropout off while recording (lens/modes.py), the hooks on
        self._context.enter_context(evaluating(self.model))
        self._context.enter_context(self.model.hooks([(self.names, self._record)]))
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def maps(self, start_len: int) -> dict[str, torch.Tensor]:
        """name -> (B, nh, N, N) self-attention map or (B, nh, N, S) cross-attention map."""
        out = {}
        for name, calls in self.calls.items():
            if name.startswith("encoder."):  # the source, encoded once before decoding starts
                out[name] = calls[0]
                continue
            B, nh = calls[0].shape[:2]
            N = start_len + len(calls) - 1  # tokens fed to the model
            n_keys = calls[0].size(-1) if self.cross[name] else N
            full = torch.zeros(B, nh, N, n_keys)
            filled = torch.zeros(N, dtype=torch.bool)
            for k, pattern in enumerate(calls):
                end = start_len + k  # this call's queries end at token `end` (exclusive)
                T, S = pattern.shape[-2:]
                if end - T < 0:
                    raise ValueError(f"{name}: call {k} has {T} queries but only {end} tokens were fed; "
                                     "start_len must be the prompt length given to the generation loop.")
                rows = torch.arange(end - T, end)
                new = ~filled[rows]  # a row keeps the first time it was computed (no-cache reruns repeat it)
                cols = slice(0, S) if self.cross[name] else slice(end - S, end)
                full[:, :, rows[new], cols] = pattern[:, :, new]
                filled[rows] = True
            out[name] = full
        return out

    def row_maps(self, start_len: int, attention_mask: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """For a left-padded batch (generate(..., attention_mask=)): one dict per row, name -> (nh, n, n)
        over that row's own tokens; padding is left out (no self-attention map ever weights it)."""
        if any(self.cross.values()) or any(name.startswith("encoder.") for name in self.calls):
            raise ValueError("row_maps is for a decoder-only model (GPT) generating a padded batch.")
        maps = self.maps(start_len)
        if not maps:
            return []
        B, _, N, _ = next(iter(maps.values())).shape
        real = real_positions(attention_mask, (B, start_len), left_padded=True)
        real = torch.cat([real, real.new_ones(B, N - start_len)], dim=1)  # generated tokens are all real
        return [{name: strip_padding(m[i], real[i], real[i]) for name, m in maps.items()} for i in range(B)]


def real_positions(attention_mask, shape: tuple[int, int], name: str = "attention_mask",
                   left_padded: bool = False) -> torch.Tensor:
    """A padding mask (B, T), 1 or True at real tokens and 0 at padding (Hugging Face's convention), checked
    against the batch's (B, T) and returned as a bool tensor on the CPU.

    A mask of another shape, with values other than 0 and 1, with a row of padding only or (with
    `left_padded`, as generation needs) with a real token before padding is a ValueError.
    """
    mask = torch.as_tensor(attention_mask).detach().cpu()
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the batch is {tuple(shape)} (rows, tokens); "
                         "pass the mask of the run that made it.")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must hold only 1 (real token) and 0 (padding).")
    real = mask.bool()
    if not real.any(dim=1).all():
        raise ValueError(f"a row of {name} is all padding; give every row at least one real token.")
    if left_padded and (real[:, :-1] & ~real[:, 1:]).any():
        raise ValueError(f"{name} must be left-padded: each row's zeros first, then its ones.")
    return real


def strip_padding(pattern: torch.Tensor, query_real: torch.Tensor | None, key_real: torch.Tensor | None):
    """One row's pattern (..., T, S) without its padding query rows and key columns; None keeps all of them.
    query_real (T,) and key_real (S,) are that row's real_positions."""
    if query_real is not None:
        pattern = pattern[..., query_real.to(pattern.device), :]
    if key_real is not None:
        pattern = pattern[..., key_real.to(pattern.device)]
    return pattern


def head_stats(pattern: torch.Tensor, cross: bool = False,
               query_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-head summary of a pattern (B, nh, T, S) or (nh, T, S): each stat is (nh,).

    entropy: nats per query row (0 = one key, log S = uniform); max: the largest weight of a row;
    distance: mean |query position - key position| weighted by attention (NaN for cross-attention).
    Queries are taken to be the last T of the S keys (true for self-attention with a cache).
    Rows without weights (positions never fed) are left out, and so are the query rows where
    `query_mask` (B, T) is 0: padding, which may still hold weights (BERT's padding attends to the text).
    """
    p = pattern.float()
    if p.dim() == 3:
        p = p[None]
    B, nh, T, S = p.shape
    valid = (p.sum(-1) > 0.5).float()  # (B, nh, T)
    if query_mask is not None:
        if query_mask.shape != (B, T):
            raise ValueError(f"query_mask is {tuple(query_mask.shape)} but the pattern has {B} rows of {T} queries; "
                             "pass the attention_mask of the run that made it.")
        valid = valid * query_mask.to(valid.device).bool()[:, None, :]
    count = valid.sum(dim=(0, 2)).clamp(min=1)
    mean = lambda per_row: (per_row * valid).sum(dim=(0, 2)) / count  # noqa: E731
    entropy = -torch.special.xlogy(p, p).sum(-1)
    stats = {"entropy": mean(entropy), "max": mean(p.max(-1).values)}
    if cross:
        stats["distance"] = torch.full((nh,), math.nan)
    else:
        q_pos = torch.arange(S - T, S, dtype=torch.float)[:, None]
        k_pos = torch.arange(S, dtype=torch.float)[None, :]
        stats["distance"] = mean((p * (q_pos - k_pos).abs()).sum(-1))
    return stats


def head_stats_all(maps: dict[str, torch.Tensor],
                   query_mask: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """head_stats for every `...pattern` map, keyed by attention module name (cross-attention by its name);
    `query_mask` (B, T) leaves padding queries out of maps of one stack (GPT, BERT)."""
    return {name.removesuffix(".pattern"): head_stats(p, cross=name.endswith("cross_attn.pattern"), query_mask=query_mask)
            for name, p in maps.items()}


def stats_table(stats: dict[str, dict[str, torch.Tensor]]) -> str:
    """A plain-text table: one row per head, columns entropy, max weight, mean distance."""
    width = max([len("head")] + [len(f"{name}.{h}") for name, s in stats.items() for h in range(len(s["max"]))])
    lines = [f"{'head':<{width}}  {'entropy':>8}  {'max':>6}  {'distance':>8}"]
    for name, s in stats.items():
        for h in range(len(s["max"])):
            lines.append(f"{name + '.' + str(h):<{width}}  {s['entropy'][h]:8.3f}  {s['max'][h]:6.3f}  "
                         f"{s['distance'][h]:8.2f}")
    return "\n".join(lines)
