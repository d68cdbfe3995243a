"""Masked-language-model batches: windows of the prepared token files, with BERT's dynamic masking.

Each row is `[CLS] window [SEP]` (block_size tokens). A tenth of the rows are cut short and padded,
as BERT trained on some shorter sequences, so that the model also meets padding and short inputs
(fill-mask prompts). Masks are drawn afresh for every batch (dynamic masking, as RoBERTa).
"""

import numpy as np
import torch

from data.documents import Packing, document_ids, packing_report, require_separator
from data.tokenizer import TokenizerError
from data.tokens import Windows, split_files
from weights.common import IGNORE_INDEX, ConfigError


def mask_tokens(ids: torch.Tensor, eligible: torch.Tensor, mask_id: int, n_random: int,
                generator: torch.Generator, mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ids (B, T) -> (input_ids, labels).

    In each row, round(mask_prob x its eligible tokens) positions (at least one) are selected among the
    `eligible` ones (B, T, bool: never special tokens or padding). A selected token becomes [MASK] 80%
    of the time, a random token id below n_random 10%, and stays itself 10%. labels hold the original
    token at selected positions and IGNORE_INDEX elsewhere, so the loss counts only the selected ones.
    """
    n_eligible = eligible.sum(dim=1)  # (B,)
    n_select = (n_eligible * mask_prob).round().clamp(min=1).minimum(n_eligible)
    # a random order of the eligible positions in each row; the first n_select of it are selected
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    selected = rank < n_select[:, None]
    labels = ids.masked_fill(~selected, IGNORE_INDEX)
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(n_random, ids.shape, generator=generator)
    input_ids = ids.masked_fill(selected & (action < 0.8), mask_id)
    swap = selected & (action >= 0.8) & (action < 0.9)
    input_ids = torch.where(swap, random_ids, input_ids)
    return input_ids, labels


class MLMBatches:
    """Masked-LM batches {'input_ids', 'attention_mask', 'labels'} for BERT (model_type 'bert')."""

    specials = ("[PAD]", "[MASK]", "[CLS]", "[SEP]")
    mask_prob = 0.15
    short_prob = 0.1  # fraction of rows cut to a random shorter length and padded
    unigram_tokens = 1 << 24  # tokens counted for the unigram baseline

    def __init__(self, folder: str, model_config, batch_size: int, device: str = "cpu", tokenizer=None,
                 packing: Packing | None = None):
        if tokenizer is None or any(s not in tokenizer.special_ids for s in self.specials):
            raise TokenizerError(f"MLM batches need a tokenizer with the special tokens {', '.join(self.specials)}.")
        if model_config.block_size < 3:
            raise ConfigError(f"block_size must be at least 3 for MLM ([CLS], a token, [SEP]); "
                              f"got {model_config.block_size}.")
        self.block_size, self.batch_size, self.device = model_config.block_size, batch_size, device
        self.window = self.block_size - 2  # room for [CLS] and [SEP]
        self.packing = packing or Packing()
        if self.packing.boundary_loss:
            raise ConfigError("doc_boundary_loss applies to next-token prediction (GPT), not to a BERT; drop it.")
        self.doc_sep = require_separator(tokenizer, folder) if self.packing.needs_separator else None
        align = self.doc_sep if self.packing.align == "doc" else None
        # windows of `window` tokens from split.bin or its shards (split_000000.bin, ...), memory-mapped
        self.data = {split: Windows(split_files(folder, split), self.window - 1, align) for split in ("train", "val")}
        ids = tokenizer.special_ids
        self.pad_id, self.mask_id, self.cls_id, self.sep_id = (ids[s] for s in self.specials)
        # the windows may hold special tokens too: the documents' separators of sharded data (data/shards.py:
        # [EOS], or GPT-2's <|endoftext|>, the last id of its base vocabulary); they are never masked
        self.base_vocab_size = tokenizer.base_vocab_size
        self.eot_id = getattr(tokenizer, "eot_id", None)
        # random replacements come from the base vocabulary only, <|endoftext|> left out
        self.n_random = self.eot_id if self.eot_id == self.base_vocab_size - 1 else self.base_vocab_size
        # the unigram baseline predicts the training split's most frequent token at every masked position
        # (counted over its first 16M tokens, so that a web-scale split is not read whole)
        head, left = [], self.unigram_tokens
        for part in self.data["train"].parts:
            head.append(np.asarray(part[:left]))
            left -= len(head[-1])
            if left <= 0:
                break
        counts = np.bincount(np.concatenate(head))
        counts[self.base_vocab_size:] = 0  # separators are never masked: not a guess for a masked token
        if self.eot_id is not None and self.eot_id < len(counts):
            counts[self.eot_id] = 0
        self.most_frequent = int(counts.argmax())

    def get(self, split: str, generator: torch.Generator) -> dict:
        """One batch drawn with `generator`: input_ids, attention_mask (1 = real token) and labels (B, T)."""
        B, T, n = self.batch_size, self.block_size, self.window
        windows = torch.from_numpy(self.data[split].sample(B, generator))  # (B, n)
        short = torch.rand(B, generator=generator) < self.short_prob
        lengths = torch.where(short, torch.randint(1, n + 1, (B,), generator=generator), n)  # tokens kept per row
        pos = torch.arange(T)[None, :]
        text = (pos >= 1) & (pos <= lengths[:, None])  # (B, T): positions holding the window's tokens
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        ids[:, 0] = self.cls_id
        ids[:, 1:n + 1] = windows
        ids = ids.masked_fill(~text & (pos > 0), self.pad_id)
        ids[torch.arange(B), lengths + 1] = self.sep_id
        attention_mask = pos <= lengths[:, None] + 1  # [CLS], the text and [SEP]
        eligible = text & (ids < self.base_vocab_size)  # not the separators of sharded documents
        if self.eot_id is not None:
            eligible &= ids != self.eot_id
        input_ids, labels = mask_tokens(ids, eligible, self.mask_id, self.n_random, generator, self.mask_prob)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.packing.doc_mask:  # [CLS] belongs to the row's first document, [SEP] and padding to its last
            doc_ids = document_ids(ids, self.doc_sep)
            batch["doc_ids"] = torch.cat([doc_ids[:, 1:2], doc_ids[:, 1:]], dim=1)
        return {k: v.to(self.device) for k, v in batch.items()}

    @staticmethod
    def count_tokens(batch: dict) -> torch.Tensor:
        """The real tokens of a batch ([CLS], text, [SEP]; not padding), for tokens/s."""
        return batch["attention_mask"].sum()

    def describe(self) -> str:
        """One line for the log: how rows meet documents (padding, cut documents), or '' without separators."""
        if self.doc_sep is None:
            return ""
        real = [self.get("train", torch.Generator().manual_seed(i))["attention_mask"] for i in range(-(-256 // self.batch_size))]
        padding = 1 - torch.cat(real).float().mean().item()  # over 256 rows or more
        return packing_report(self.data["train"], self.doc_sep, self.packing.align, padding)

    def eval_metrics(self, logits: torch.Tensor, batch: dict) -> dict:
        """Masked-token accuracy of the model, and of always predicting the most frequent training token."""
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        targets = labels[selected]
        return {"mlm_accuracy": (logits.argmax(dim=-1)[selected] == targets).float().mean().item(),
                "unigram_accuracy": (targets == self.most_frequent).float().mean().item()}
