"""Fast decoding for GPT the way gpt-fast does it: a static KV cache and a (compiled) one-token step.

At small sizes a decoding step costs mostly Python and kernel launches, not arithmetic. Here every
tensor a step touches is allocated once: keys and values live in (B, nh, block_size, hs) buffers,
the new position, its cache slot and the attention mask are small buffers updated in place, and
attention always reads the whole cache (slots not yet written are masked). Every step then has the
same shapes, so `torch.compile` builds the step once (and on CUDA, mode="reduce-overhead" replays it
as a CUDA graph). The prompt (prefill) runs eagerly: its length varies.

    decoder = StaticDecoder(model, batch_size=1, compile=True)   # compiles on its first step
    for token in decoder.generate_stream(idx, 200, temperature=0.8, top_k=200):
        ...

Greedy decoding gives the tokens of GPT.generate; the context window moves on in the same way
(the last block_size // 2 tokens are fed again when it is full). Prompts of different lengths are
left-padded with an attention_mask (1 = real token), as for GPT.generate: each row counts its own
positions, never attends to padding and gets the tokens it gets alone.
"""

from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch.nn.functional as F

from model.generation import decode, padded_causal_mask, padded_positions
from model.sampling import Generators, Sampling
from model.layers import softcap


class StaticPastKeyValues:
    """One layer's preallocated keys and values; writes the new ones at the slots in `slot` (T,)."""

    len = 0  # positions and the mask are passed explicitly: attention adds no offset of its own

    def __init__(self, slot: torch.Tensor):
        self.slot = slot  # shared by every layer, updated in place by the decoder
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at the cache slots; return the whole (B, nh, L, hs) buffers."""
        self.k.index_copy_(2, self.slot, k)
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v


def forward_static(model, idx: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, caches) -> torch.Tensor:
    """Logits (B, V) after idx (B, T) at positions (B, T), attending with mask (1|B, 1, T, L) over the cache."""
    x = model.drop(model.stem(idx, positions=positions, hooked=False))  # (B, T, C)
    for block, cache in zip(model.blocks, caches):
        x = block(x, mask=mask, causal=True, cache=cache, positions=positions)
    x = model.ln_f(x[:, -1])  # (B, C): only the last position is sampled from
    return softcap(model.lm_head(x), model.config.logit_softcap)


class StaticDecoder:
    """Decodes batches of batch_size prompts (left-padded if their lengths differ) with a static cache;
    reusable across calls."""

    def __init__(self, model, batch_size: int = 1, compile: bool = False):
        self.model, self.batch_size = model, batch_size
        param = next(model.parameters())
        L = model.config.block_size
        self.slot = torch.zeros(1, dtype=torch.long, device=param.device)  # the new token's cache slot
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, device=param.device)
        self.mask = torch.zeros(batch_size, 1, 1, L, dtype=torch.bool, device=param.device)  # real slots so far
        self.caches = [StaticPastKeyValues(self.slot) for _ in model.blocks]
        self.length = 0  # cache slots filled
        self.compiled_step = self._step
        if compile:
            if param.is_cuda:  # CUDA graphs replay the whole step
                self.compiled_step = torch.compile(self._step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            else:
                # SDPA's math form lets inductor fuse one query's attention into its own loops (13% more
                # tokens/s than the flash kernel), and a C++ wrapper calls the step's kernels without
                # Python in between (3-8% more); same greedy tokens (docs/benchmarks.md)
                self.compiled_step = torch.compile(self._math_step, fullgraph=True, dynamic=False,
                                          options={"cpp_wrapper": True})

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        """One new token (B, 1) at self.position, written at self.slot -> logits (B, V)."""
        return forward_static(self.model, token, self.position, self.mask, self.caches)

    def _math_step(self, token: torch.Tensor) -> torch.Tensor:
        """_step with SDPA in its math form (what the compiled CPU step traces)."""
        with sdpa_kernel(SDPBackend.MATH):
            return self._step(token)

    def prefill(self, window: torch.Tensor, window_mask: torch.Tensor | None) -> torch.Tensor:
        """Fill the cache with window (B, T), left-padded where window_mask (B, T) is 0 (None: no padding),
        from slot 0 (eagerly); return the last position's logits (B, V)."""
        B, T = window.shape
        window_mask = torch.ones_like(window) if window_mask is None else window_mask
        slots = torch.arange(T, device=window.device)
        for cache in self.caches:
            cache.slot = slots
        mask = F.pad(padded_causal_mask(window_mask, T), (0, self.model.config.block_size - T))  # (B, 1, T, L)
        positions = padded_positions(window_mask)  # (B, T): each row counts its real tokens from 0
        logits = forward_static(self.model, window, positions, mask, self.caches)
        for cache in self.caches:
            cache.slot = self.slot
        self.mask.zero_()
        self.mask[:, 0, 0, :T] = window_mask.bool()
        self.position.copy_(positions[:, -1:])
        self.length = T
        return logits

    def allocate(self, dtype: torch.dtype) -> None:
        """Key/value buffers in the dtype the layers compute in (float32, or bf16 under autocast)."""
        cfg, param = self.model.config, next(self.model.parameters())
        shape = (self.batch_size, cfg.n_head, cfg.block_size, cfg.head_dim)
        for cache in self.caches:
            if cache.k is None or cache.k.dtype != dtype:
                cache.k = torch.zeros(shape, dtype=dtype, device=param.device)
                cache.v = torch.zeros(shape, dtype=dtype, device=param.device)

    def step(self, token: torch.Tensor, mask=None) -> torch.Tensor:
        """Logits (B, V) after each row's new token (B, 1), written at the next cache slot (the loop's
        `mask` is not needed: self.mask marks the filled slots)."""
        self.slot.fill_(self.length)
        self.position.add_(1)
        self.mask[..., self.length] = True
        self.length += 1
        return self.compiled_step(token)

    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, generator: Generators = None,
                        attention_mask: torch.Tensor | None = None,
                        stop_token: int | None = None) -> Iterator[torch.Tensor]:
        """Yield (B, 1) new tokens continuing idx (B, T) (left-padded where attention_mask is 0), as
        GPT.generate_stream does with its KV cache (stop_token too); the buffers are made on the first token,
        in the dtype of the autocast then in force."""
        if idx.size(0) != self.batch_size:
            raise ValueError(f"this decoder was built for batches of {self.batch_size}; got {idx.size(0)} prompts.")
        device_type = idx.device.type
        autocast = torch.is_autocast_enabled(device_type)
        self.allocate(torch.get_autocast_dtype(device_type) if autocast else next(self.model.parameters()).dtype)
        yield from decode(self, idx, max_new_tokens, Sampling(temperature, top_k, top_p), generator, attention_mask,
                          stop_token)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """idx (B, T) extended by max_new_tokens tokens (B, T + max_new_tokens); sampling as generate_stream."""
        return torch.cat([idx, *self.generate_stream(idx, max_new_tokens, **sampling)], dim=1)
