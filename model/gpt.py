"""GPT-style decoder: token + learned position embeddings, causal blocks, LM head tied to the embedding.

Options of the modern recipe: rotary positions instead of `wpe` (pos_emb='rope'), an untied head,
soft-capped logits (see TransformerConfig).

Parameter names follow GPT-2 (`wte`, `wpe`, `ln_1`, `attn.c_attn`, `mlp.c_fc`, ...) with the blocks
under `blocks.N` (GPT-2 checkpoints call them `transformer.h.N`), so weight import is a rename loop.
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import KVCache, reinforce_term
from model.config import GPTConfig
from model.hooks import HookedModel
from model.layers import Block, init_weights, make_norm, softcap
from model.sampling import sample_next


class GPT(HookedModel, nn.Module):
    """A decoder-only language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # weight tying
        elif config.zero_init:
            self.lm_head.zero_init = True
        init_weights(self, config.n_layer)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> "GPT":
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local Hugging Face GPT-2 folder;
        a block_size below GPT-2's 1024 keeps the first position embeddings."""
        from model.pretrained import load_gpt2  # late import: only weight import needs it

        return load_gpt2(cls, name_or_dir, dropout, block_size)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as GPT-2's paper counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, last_only: bool = False):
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy when targets are given.

        With `caches` (one per block) the positions continue after those already cached.
        Targets equal to -1 are ignored by the loss.
        """
        B, T = idx.shape
        offset = caches[0].len if caches else 0
        if offset + T > self.config.block_size:
            raise ValueError(f"sequence of {offset + T} tokens exceeds block_size {self.config.block_size}; "
                             "crop it or train with a larger block_size.")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:  # with rope, positions enter inside attention instead
            x = x + self.wpe(torch.arange(offset, offset + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, cache=caches[i] if caches else None)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        logits = softcap(self.lm_head(x), self.config.logit_softcap)  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss + reinforce_term(self, logits, targets)  # + 0, with REINFORCE hard attention's gradient

    @torch.no_grad()
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                        generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yield (B, 1) new tokens one at a time, continuing idx (B, T).

        With the KV cache the prompt is processed once, then one token per step. When the context
        window is full, the cache is rebuilt from the last block_size // 2 tokens (positions are absolute).
        Without it, each step reruns the last block_size tokens (nanoGPT's way).
        """
        block_size = self.config.block_size
        caches = None
        pending = idx[:, -block_size:]  # tokens not yet seen by the model
        for _ in range(max_new_tokens):
            if use_cache:
                if caches is None or caches[0].len + pending.size(1) > block_size:
                    keep = block_size if caches is None else max(1, block_size // 2)
                    pending = idx[:, -keep:]
                    caches = [KVCache(block_size) for _ in self.blocks]
                logits = self(pending, caches=caches, last_only=True)
            else:
                logits = self(idx[:, -block_size:], last_only=True)
            next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_token], dim=1)
            pending = next_token
            yield next_token

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Return idx (B, T) extended by max_new_tokens sampled tokens (B, T + max_new_tokens)."""
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat([idx, *new], dim=1)
