"""GPT-style decoder: token + learned position embeddings, causal blocks, LM head tied to the embedding.

Options of the modern recipe: rotary positions instead of `wpe` (pos_emb='rope'), an untied head,
soft-capped logits (see TransformerConfig).

Parameter names follow GPT-2 (`wte`, `wpe`, `ln_1`, `attn.c_attn`, `mlp.c_fc`, ...) with the blocks
under `blocks.N` (GPT-2 checkpoints call them `transformer.h.N`), so weight import is a rename loop.
"""

from collections.abc import Iterator

import torch
from torch import nn

from model.attention import PastKeyValues
from model.transformer_config import GPTConfig
from model.family import EmbeddingStem, Family, logits_and_loss, tie_head
from model.layers import Block, init_weights, make_norm
from weights.pretrained import decoder_config, load_decoder
from model.generation import CachedSteps, decode, padded_causal_mask, padded_positions
from model.sampling import Generators, Sampling


class GPT(EmbeddingStem, Family):
    """A decoder-only language model."""

    model_type = "gpt"
    documents = None  # what doc_ids (packed documents) mean: model/documents.py PackedDocuments, set by model/__init__.py

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.add_stem(config.vocab_size, config.block_size, config)  # wte, wpe, drop; hooks embed, pos_embed
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        tie_head(self.lm_head, self.wte, config)
        init_weights(self, config.n_layer)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> "GPT":
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a Hub id or a local Hugging Face folder of a
        decoder in weights/hf_families.py's table (GPT-2, Llama, Qwen3, GPT-NeoX), in eval mode; a block_size
        below the model's keeps the first position embeddings. `model.tokenizer` is the folder's (or None)."""
        return load_decoder(cls, GPTConfig, name_or_dir, dropout, block_size)  # weight I/O: weights/pretrained.py

    @staticmethod
    def pretrained_config(name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> GPTConfig:
        """The GPTConfig of a GPT-2 name or folder, without loading its weights."""
        return decoder_config(GPTConfig, name_or_dir, dropout, block_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[PastKeyValues] | None = None, last_only: bool = False,
                attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None):
        """idx (B, T) token ids -> (logits (B, T, V), loss): the mean cross-entropy, or None without targets.

        With `caches` (one per block) the positions continue after those already cached.
        `attention_mask` (B, cached + T), 1 at real tokens, 0 at left padding: each row then counts
        its positions from its first real token and never attends to padding.
        `doc_ids` (B, cached + T), the document of each token of packed rows: a token attends only to
        earlier tokens of its own document, and positions restart at each document.
        Targets equal to IGNORE_INDEX (-100, weights/common.py) are ignored by the loss.
        """
        offset = caches[0].len if caches else 0
        positions = mask = None
        if doc_ids is not None:
            positions, mask = self.documents.layout(doc_ids, idx, offset, attention_mask)
        elif attention_mask is not None:
            if attention_mask.shape != (idx.size(0), offset + idx.size(1)):
                raise ValueError(f"attention_mask must be (batch, cached + new tokens) = "
                                 f"{(idx.size(0), offset + idx.size(1))}, got {tuple(attention_mask.shape)}.")
            positions = padded_positions(attention_mask)[:, offset:]  # (B, T)
            mask = padded_causal_mask(attention_mask, idx.size(1))  # (B, 1, T, offset + T)
        x = self.drop(self.stem(idx, offset, positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, causal=True, cache=caches[i] if caches else None, positions=positions)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        return logits_and_loss(self.lm_head(x), targets, self.config.logit_softcap, self)  # (B, T, V), loss or None

    @torch.no_grad()
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                        generator: Generators = None, attention_mask: torch.Tensor | None = None,
                        stop_token: int | None = None, doc_ids: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield (B, 1) new tokens one at a time, continuing idx (B, T).

        With the KV cache the prompt is processed once, then one token per step. When the context
        window is full, the cache is rebuilt from the last block_size // 2 tokens (positions are absolute).
        Without it, each step reruns the last block_size tokens (nanoGPT's way).
        Prompts of different lengths: left-pad them and pass `attention_mask` (B, T), 1 at real
        tokens (model/generation.py); each row then gets the tokens it would get alone. A list of
        generators, one per row, makes each row's sampling reproducible on its own.
        `stop_token`: a row that has emitted it emits it again (Hugging Face's eos_token_id with
        pad_token_id the same), and the stream ends once every row has.
        `doc_ids` (B, T): packed prompts of a model trained with document masking; each row continues its
        last document, which is all its next tokens can see (model/documents.py last_documents).
        """
        if doc_ids is not None:
            idx, attention_mask = self.documents.prompts(idx, doc_ids, attention_mask)
        steps = CachedSteps(self, use_cache)
        yield from decode(steps, idx, max_new_tokens, Sampling(temperature, top_k, top_p), generator, attention_mask,
                          stop_token, use_cache)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: Generators = None, attention_mask: torch.Tensor | None = None,
                 stop_token: int | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Return idx (B, T) extended by max_new_tokens sampled tokens (B, T + max_new_tokens);
        left-padded prompts with `attention_mask`, `stop_token` (fewer tokens once every row has
        emitted it) and packed prompts' `doc_ids`, as in generate_stream."""
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator,
                                        attention_mask, stop_token, doc_ids))
        return torch.cat([idx, *new], dim=1)
