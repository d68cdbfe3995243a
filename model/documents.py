"""Document masking for packed rows (--doc_mask=True): a token attends only to earlier tokens of its own
document, and positions restart at each document. A plug-in kept out of the learner's files: the GPT asks its
`documents` (a PackedDocuments, installed by model/__init__.py) for the positions and the mask when it is given
`doc_ids`; BERT and the patching code call these functions directly.

On CUDA the mask of a whole window is a FlexAttention block mask (blocks wholly masked are skipped), wrapped in
a FlexMask: a mask that brings its own kernel, which attention (model/attention.py) runs instead of SDPA when
nobody asks for the weights.
"""

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention

from model.attention import make_mask
from model.generation import pack

# compiled on first use: FlexAttention's fused kernel, and the block mask built without a Python loop
compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
compiled_create_block_mask = torch.compile(create_block_mask)


class FlexMask:
    """A FlexAttention BlockMask as attention's mask: `attend` runs FlexAttention's kernel with it; `dense` gives
    the bool (B, 1, T, S) mask for the explicit path and for dropout (FlexAttention has neither)."""

    def __init__(self, block_mask: BlockMask):
        self.block_mask = block_mask

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q (B, nh, T, hs), k and v (B, nh, S, hs) -> z (B, nh, T, hs), keys outside the mask left out."""
        return compiled_flex_attention(q, k, v, block_mask=self.block_mask, scale=scale)

    def dense(self) -> torch.Tensor:
        """The mask as a bool (B, 1, T, S) tensor, True where a query may attend."""
        return dense_mask(self)


def dense_mask(mask: FlexMask) -> torch.Tensor:
    """A FlexMask's mask as a bool (B, 1, T, S) tensor, for the explicit path."""
    block_mask = mask.block_mask
    q_len, kv_len = block_mask.seq_lengths
    return create_mask(block_mask.mask_mod, block_mask.shape[0], 1, q_len, kv_len, device=block_mask.kv_num_blocks.device)


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) document ids -> (B, S) positions that restart at 0 wherever the id changes."""
    index = torch.arange(doc_ids.size(1), device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def document_mask(doc_ids: torch.Tensor, q_len: int, causal: bool, key_padding_mask: torch.Tensor | None = None,
                  flex: bool = False):
    """Where the last q_len of S positions may attend when each token sees only its own document.

    doc_ids (B, S): each position's document; key_padding_mask (B, S): True at real tokens. A bool
    (B, 1, T, S) mask (True = may attend), or with `flex` the same mask as a FlexMask (a FlexAttention
    BlockMask: blocks wholly masked are skipped, compiled FlexAttention's fast path, on CUDA).
    """
    B, S = doc_ids.shape
    offset = S - q_len

    def may_attend(b, h, q, kv):  # FlexAttention's mask_mod: index tensors in, bool tensor out
        allowed = doc_ids[b, q + offset] == doc_ids[b, kv]
        if causal:
            allowed = allowed & (kv <= q + offset)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[b, kv].bool()
        return allowed

    if flex:  # compiled on CUDA (a Python loop over blocks otherwise); on the CPU, for tests, as it is
        build = compiled_create_block_mask if doc_ids.is_cuda else create_block_mask
        return FlexMask(build(may_attend, B, None, q_len, S, device=doc_ids.device))
    allowed = doc_ids[:, offset:, None] == doc_ids[:, None, :]  # (B, T, S): the same mask, by broadcasting
    if causal:
        allowed = allowed & make_mask(q_len, S, causal=True, offset=offset, device=doc_ids.device)[0]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, :]
    return allowed[:, None]  # (B, 1, T, S)


def last_documents(idx: torch.Tensor, doc_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's last document of packed prompts idx (B, T), left-padded: (ids, mask), as `pack` gives.

    Under document masking the next token sees only its own document, with positions from its start, so
    continuing a packed row is continuing its last document alone. doc_ids (B, T) must give that document
    as one run of tokens at the row's end (data.documents.document_ids numbers documents so)."""
    if doc_ids.shape != idx.shape:
        raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)}; it must match the prompts {tuple(idx.shape)}.")
    keep = doc_ids == doc_ids[:, -1:]
    if attention_mask is not None:
        keep = keep & attention_mask.to(keep.device).bool()
    if (keep[:, :-1] & ~keep[:, 1:]).any():
        raise ValueError("doc_ids must give each row's last document as one run of tokens at its end; number "
                         "the documents in order (data.documents.document_ids).")
    return pack([row[k] for row, k in zip(idx, keep)])


class PackedDocuments:
    """What a decoder (GPT.documents) does with `doc_ids`: the positions and mask of its forward pass, and the
    prompts that generation continues."""

    @staticmethod
    def layout(doc_ids: torch.Tensor, idx: torch.Tensor, offset: int, attention_mask) -> tuple:
        """(positions (B, T), mask) of packed documents for idx (B, T) after `offset` cached positions:
        FlexAttention's block mask on CUDA for a whole window, a bool mask otherwise."""
        if attention_mask is not None:
            raise ValueError("give attention_mask (left-padded prompts) or doc_ids (packed documents), not both.")
        if doc_ids.shape != (idx.size(0), offset + idx.size(1)):
            raise ValueError(f"doc_ids must be (batch, cached + new tokens) = {(idx.size(0), offset + idx.size(1))}, "
                             f"got {tuple(doc_ids.shape)}.")
        flex = idx.is_cuda and offset == 0 and idx.size(1) > 1
        return document_positions(doc_ids)[:, offset:], document_mask(doc_ids, idx.size(1), True, flex=flex)

    @staticmethod
    def prompts(idx: torch.Tensor, doc_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """(ids, attention_mask) that generation continues: each row's last document (last_documents)."""
        return last_documents(idx, doc_ids, attention_mask)
