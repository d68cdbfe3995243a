"""BERT-style encoder: token + position (+ segment) embeddings, bidirectional blocks, MLM head tied to the embedding.

The same Block as GPT, with no causal mask: every position sees every real (non-padding) position.
Defaults follow BERT (post-norm blocks, exact GELU, LayerNorm eps 1e-12), so a Hugging Face
`BertForMaskedLM` loads with `BERT.from_pretrained(folder)` and gives the same logits.
"""

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import make_mask, reinforce_term
from model.checkpoint import CheckpointError
from model.config import BERTConfig
from model.hooks import HookedModel
from model.layers import ACTIVATIONS, Block, init_weights, make_norm, softcap

IGNORE_INDEX = -100  # label of positions the MLM loss skips (Hugging Face's convention)


class MLMHead(nn.Module):
    """BERT's prediction head: dense, activation, norm, then scores against every token embedding."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.ln = make_norm(config)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=True)  # weight tied by BERT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(self.act(self.dense(x))))  # (B, T, C) -> (B, T, V)


class BERT(HookedModel, nn.Module):
    """A bidirectional encoder trained with the masked-language-model objective."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.wtt = nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size else None
        self.ln_emb = make_norm(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # post-norm blocks end in a norm already; pre-norm ones need a final one
        self.ln_f = nn.Identity() if config.post_norm else make_norm(config)
        self.head = MLMHead(config)
        if config.tie_embeddings:
            self.head.decoder.weight = self.wte.weight  # weight tying
        elif config.zero_init:
            self.head.decoder.zero_init = True
        self.pooler = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # N(0, 0.02) everywhere, embeddings included: PyTorch's N(0, 1) embedding init leaves a
        # post-norm MLM stuck predicting the unigram distribution.
        init_weights(self, config.n_layer)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as GPT.num_params)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, C).

        attention_mask (B, T): 1/True at real tokens, 0/False at padding, which no position attends
        to. token_type_ids (B, T): segment ids (0 for sentence A, 1 for B); zeros when omitted.
        """
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}; "
                             "shorten it or train with a larger block_size.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match "
                             f"input_ids {tuple(input_ids.shape)}.")
        x = self.wte(input_ids)  # (B, T, C)
        if self.wpe is not None:  # with rope, positions enter inside attention instead
            x = x + self.wpe(torch.arange(T, device=input_ids.device))
        if self.wtt is not None:
            x = x + (self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0])
        elif token_type_ids is not None:
            raise ValueError("this model has no segment embeddings (type_vocab_size=0); drop token_type_ids.")
        x = self.drop(self.ln_emb(x))
        mask = None
        if attention_mask is not None:
            mask = make_mask(T, T, causal=False, key_padding_mask=attention_mask)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.ln_f(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """MLM logits (B, T, V) for every position; with labels (B, T) also the mean cross-entropy.

        The loss counts only positions whose label is not IGNORE_INDEX (-100): the masked ones.
        """
        logits = softcap(self.head(self.encode(input_ids, attention_mask, token_type_ids)), self.config.logit_softcap)
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return logits, loss + reinforce_term(self, logits, labels, IGNORE_INDEX)  # + 0, REINFORCE's gradient

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence vectors (B, C): tanh(dense(hidden state of the first token)), as BERT's pooler.

        BERT trained the pooler with next-sentence prediction; MLM training alone leaves it at its
        initialisation, so for a model trained here use `encode(...)[:, 0]` or fine-tune the pooler.
        """
        return torch.tanh(self.pooler(self.encode(input_ids, attention_mask, token_type_ids)[:, 0]))

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides) -> "BERT":
        """Load a Hugging Face BertForMaskedLM (a local folder, or a Hub id when online).

        `overrides` replace config values (e.g. dropout=0.0). Only tensors are read (weights_only).
        """
        from model.hf_bert import config_from_hf, read_hf_folder, state_from_hf

        hf_config, hf_state = read_hf_folder(name_or_dir)
        config = config_from_hf(hf_config, **overrides)
        model = cls(config)
        state = state_from_hf(hf_state, config)
        try:
            model.load_state_dict(state, strict=False)  # the tied decoder weight comes with wte
        except RuntimeError:
            raise CheckpointError(f"the weights in {name_or_dir} do not match the sizes in its config.json.") from None
        # BertForMaskedLM has no pooler (BertModel and BertForPreTraining do): it then keeps its init
        missing = set(model.state_dict()) - set(state) - {"head.decoder.weight", "pooler.weight", "pooler.bias"}
        if missing:
            raise CheckpointError(f"{name_or_dir} lacks weights for {sorted(missing)[0]}; it is not a BertForMaskedLM.")
        return model
