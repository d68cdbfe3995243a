"""BERT-style encoder: token + position (+ segment) embeddings, bidirectional blocks, MLM head tied to the embedding.

The same Block as GPT, with no causal mask: every position sees every real (non-padding) position.
Defaults follow BERT (post-norm blocks, exact GELU, LayerNorm eps 1e-12), so a Hugging Face
`BertForMaskedLM` loads with `BERT.from_pretrained(folder)` and gives the same logits.
"""

import dataclasses

import torch
from torch import nn

from model.attention import document_mask, document_positions, make_mask
from model.config import BERTConfig, ConfigError
from model.family import Family, embed, logits_and_loss, tie_head
from model.layers import ACTIVATIONS, Block, init_weights, make_norm
from weights.common import IGNORE_INDEX
from weights.hf_bert import config_from_hf, read_bert, state_from_hf
from weights.hf_folder import PretrainedError

__all__ = ["BERT", "MLMHead", "IGNORE_INDEX"]


def bert_config(values: dict, source: str) -> BERTConfig:
    """A BERTConfig from the keyword arguments weights/hf_bert.py read; a PretrainedError if it is invalid."""
    try:
        return BERTConfig(**values)
    except (ConfigError, TypeError) as e:
        raise PretrainedError(f"the config.json of {source} holds values our model cannot take ({e}).") from None


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


class BERT(Family):
    """A bidirectional encoder trained with the masked-language-model objective."""

    model_type = "bert"

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
        tie_head(self.head.decoder, self.wte, config)
        self.pooler = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # N(0, 0.02) everywhere, embeddings included: PyTorch's N(0, 1) embedding init leaves a
        # post-norm MLM stuck predicting the unigram distribution.
        init_weights(self, config.n_layer)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, C).

        attention_mask (B, T): 1/True at real tokens, 0/False at padding, which no position attends
        to. token_type_ids (B, T): segment ids (0 for sentence A, 1 for B); zeros when omitted.
        doc_ids (B, T): each token's document in packed rows; a token attends only to its own
        document, and positions restart at each document.
        """
        T = input_ids.size(1)
        for name, given in (("attention_mask", attention_mask), ("doc_ids", doc_ids)):
            if given is not None and given.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(given.shape)}; it must match input_ids {tuple(input_ids.shape)}.")
        positions = document_positions(doc_ids) if doc_ids is not None else None
        x = embed(input_ids, self.wte, self.wpe, self.config.block_size, positions=positions,
                  hint="shorten it or train with a larger block_size")  # (B, T, C)
        if self.wtt is not None:
            x = x + (self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0])
        elif token_type_ids is not None:
            raise ValueError("this model has no segment embeddings (type_vocab_size=0); drop token_type_ids.")
        x = self.drop(self.ln_emb(x))
        mask = None
        if doc_ids is not None:  # (B, 1, T, T), or FlexAttention's block mask on CUDA
            mask = document_mask(doc_ids, T, causal=False, key_padding_mask=attention_mask, flex=input_ids.is_cuda)
        elif attention_mask is not None:
            mask = make_mask(T, T, causal=False, key_padding_mask=attention_mask)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions)
        return self.ln_f(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None):
        """(MLM logits (B, T, V) for every position, loss): the mean cross-entropy over labels (B, T), or None
        without labels.

        The loss counts only positions whose label is not IGNORE_INDEX (-100): the masked ones.
        doc_ids (B, T): packed documents (see encode).
        """
        logits = self.head(self.encode(input_ids, attention_mask, token_type_ids, doc_ids))
        return logits_and_loss(logits, labels, self.config.logit_softcap, self)

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
        hf_config, hf_state = read_bert(name_or_dir)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(BERTConfig)}
        if unknown:
            raise ConfigError(f"unknown BERTConfig key {sorted(unknown)[0]!r} in from_pretrained overrides.")
        model = cls(dataclasses.replace(bert_config(config_from_hf(hf_config), name_or_dir), **overrides))
        state = state_from_hf(hf_state, model.config.n_layer, model.config.type_vocab_size)
        own = model.state_dict()
        for key, tensor in state.items():
            if key in own and tensor.shape != own[key].shape:
                raise PretrainedError(f"the weights in {name_or_dir} do not match the sizes in its config.json "
                                      f"({key} is {tuple(tensor.shape)}, config.json makes it {tuple(own[key].shape)}).")
        model.load_state_dict(state, strict=False)  # the tied decoder weight comes with wte
        # BertForMaskedLM has no pooler (BertModel and BertForPreTraining do): it then keeps its init
        missing = set(model.state_dict()) - set(state) - {"head.decoder.weight", "pooler.weight", "pooler.bias"}
        if missing:
            raise PretrainedError(f"{name_or_dir} lacks weights for {sorted(missing)[0]}; it is not a BertForMaskedLM.")
        return model
