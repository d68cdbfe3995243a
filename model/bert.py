"""BERT-style encoder: token + position (+ segment) embeddings, bidirectional blocks, MLM head tied to the embedding.

The same Block as GPT, with no causal mask: every position sees every real (non-padding) position.
Defaults follow BERT (post-norm blocks, exact GELU, LayerNorm eps 1e-12), so a Hugging Face
`BertForMaskedLM` loads with `BERT.from_pretrained(folder)` and gives the same logits.
"""

import dataclasses

import torch
from torch import nn

from model.attention import make_mask
from model.documents import document_mask, document_positions
from model.config import BERTConfig, ConfigError
from model.family import EmbeddingStem, Family, logits_and_loss, tie_head
from model.generation import padded_positions
from model.layers import ACTIVATIONS, Block, init_weights, make_norm
from weights.common import IGNORE_INDEX
from weights.hf_bert import read_pooling
from weights.hf_families import read_pretrained
from weights.hf_folder import PretrainedError
from weights.hf_tokenizer import folder_tokenizer

__all__ = ["BERT", "MLMHead", "IGNORE_INDEX"]


class NoHeadError(ConfigError):
    """Something that needs the MLM head asked of an encoder loaded without one."""


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


class BERT(EmbeddingStem, Family):
    """A bidirectional encoder trained with the masked-language-model objective."""

    model_type = "bert"
    pooling: dict | None = None  # sentence-transformers' pooling of a loaded folder (sentence_embedding)

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = config
        # wte, wpe (RoBERTa keeps position_offset rows before the first position's), drop; no hook points
        self.add_stem(config.vocab_size, config.block_size, config, hooks=False,
                      extra_positions=config.position_offset, hint="shorten it or train with a larger block_size")
        self.wtt = nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size else None
        self.ln_emb = make_norm(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # post-norm blocks end in a norm already; pre-norm ones need a final one
        self.ln_f = nn.Identity() if config.post_norm else make_norm(config)
        self.head = MLMHead(config) if config.mlm_head else None  # None: an encoder alone (BertModel)
        if self.head is not None:
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
        positions = self.positions(attention_mask, doc_ids)  # each row's own; rotary reads them as they are
        learned = positions
        if self.config.position_offset:  # RoBERTa's table starts after its padding id
            learned = (positions if positions is not None else torch.arange(T, device=input_ids.device)[None]) \
                + self.config.position_offset
        x = self.stem(input_ids, positions=learned)  # (B, T, C)
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

    @staticmethod
    def positions(attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Each row's own positions (B, T): restarting at each packed document, or counted from the row's first
        real token (so left padding changes nothing); None (0, 1, ..) without either."""
        if doc_ids is not None:
            return document_positions(doc_ids)
        return None if attention_mask is None else padded_positions(attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None):
        """(MLM logits (B, T, V) for every position, loss): the mean cross-entropy over labels (B, T), or None
        without labels.

        The loss counts only positions whose label is not IGNORE_INDEX (-100): the masked ones.
        doc_ids (B, T): packed documents (see encode).
        An encoder without an MLM head (mlm_head=False, a headless BertModel folder) returns its final
        hidden states (B, T, C) in the logits' place (Hugging Face's BertModel's last_hidden_state), and
        refuses labels.
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids, doc_ids)
        if self.head is None:
            if labels is not None:
                raise NoHeadError("this encoder has no MLM head (a headless BertModel), so it has no MLM loss; "
                                  "train on encode()'s hidden states or load a BertForMaskedLM folder.")
            return hidden, None
        logits = self.head(hidden)
        return logits_and_loss(logits, labels, self.config.logit_softcap, self)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence vectors (B, C): tanh(dense(hidden state of the first token)), as BERT's pooler.

        BERT trained the pooler with next-sentence prediction; MLM training alone leaves it at its
        initialisation, so for a model trained here use `encode(...)[:, 0]` or fine-tune the pooler.
        """
        return torch.tanh(self.pooler(self.encode(input_ids, attention_mask, token_type_ids)[:, 0]))

    def sentence_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                           token_type_ids: torch.Tensor | None = None, pooling: str | None = None,
                           normalize: bool | None = None) -> torch.Tensor:
        """Sentence vectors (B, C) as sentence-transformers makes them: the final hidden states pooled over each
        row's real tokens ('mean', 'cls' or 'max'), L2-normalised when its Normalize module is present.

        By default the folder's own pooling config (modules.json + 1_Pooling/config.json, read by from_pretrained
        into `self.pooling`); `pooling` / `normalize` choose instead.
        """
        folder = self.pooling or {}
        mode = pooling or folder.get("mode")
        if pooling is None and folder.get("unsupported"):
            raise NoHeadError(f"this model's sentence-transformers pipeline has a {folder['unsupported']} module, which "
                              "headscope does not run; pass pooling='mean' or 'cls' to pool the hidden states alone.")
        if mode not in POOLINGS:
            raise NoHeadError(f"pooling {mode!r} is not one we compute; pass pooling= one of {', '.join(POOLINGS)}"
                              + ("" if self.pooling else " (this folder has no sentence-transformers pooling config)") + ".")
        hidden = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        vectors = POOLINGS[mode](hidden, real)
        normalize = folder.get("normalize", False) if normalize is None else normalize
        return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides) -> "BERT":
        """Load a Hugging Face BERT or RoBERTa encoder (a local folder, or a Hub id when online), in eval mode.

        A folder with the MLM head (BertForMaskedLM, ...) gives fill-mask logits; one without (BertModel, what
        sentence-transformers ships) loads as an encoder alone (mlm_head=False). `model.tokenizer` is the
        folder's tokenizer (or None) and `model.pooling` its sentence-transformers pooling (or None).
        `overrides` replace config values (e.g. dropout=0.0). Only tensors are read (weights_only).
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(BERTConfig)}
        if unknown:
            raise ConfigError(f"unknown BERTConfig key {sorted(unknown)[0]!r} in from_pretrained overrides.")
        _, values, state, folder = read_pretrained(name_or_dir, "bert")
        values["mlm_head"] = "head.dense.weight" in state
        model = cls(dataclasses.replace(bert_config(values, name_or_dir), **overrides))
        own = model.state_dict()
        for key, tensor in state.items():
            if key in own and tensor.shape != own[key].shape:
                raise PretrainedError(f"the weights in {name_or_dir} do not match the sizes in its config.json "
                                      f"({key} is {tuple(tensor.shape)}, config.json makes it {tuple(own[key].shape)}).")
        model.load_state_dict(state, strict=False)  # the tied decoder weight comes with wte
        # BertForMaskedLM has no pooler (BertModel and BertForPreTraining do): it then keeps its init
        missing = set(own) - set(state) - {"head.decoder.weight", "pooler.weight", "pooler.bias"}
        if missing:
            raise PretrainedError(f"{name_or_dir} lacks weights for {sorted(missing)[0]}; it is not a complete encoder.")
        model.tokenizer, model.pooling = folder_tokenizer(folder), read_pooling(folder)
        return model.eval()  # as transformers and TransformerLens return it: dropout off


def mean_pool(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T, C) hidden states, (B, T) real tokens -> (B, C): the mean over each row's real tokens."""
    weights = real.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def max_pool(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C): the largest value of each feature over each row's real tokens."""
    return hidden.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(dim=1)


def cls_pool(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C): the hidden state of each row's first real token ([CLS])."""
    return hidden[torch.arange(hidden.size(0), device=hidden.device), real.int().argmax(dim=1)]


POOLINGS = {"mean": mean_pool, "cls": cls_pool, "max": max_pool}
