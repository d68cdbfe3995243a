"""The edge graph of a Transformer's residual stream, and a forward pass that patches edges.

Each attention head, each MLP and the input embeddings *send* into the residual stream; each head's
query, key and value inputs, each MLP and the logits *receive* the sum of what was sent before them.
An edge is one (sender, receiver) pair, named as in the literature (Hanna et al.'s `eap`):

    input -> a0.h1<v>      a0.h1 -> a1.h0<k>      m0 -> logits      (a: attention, m: MLP)

An encoder-decoder's decoder adds cross-attention heads `x{l}.h{i}`: their query reads the decoder's
stream, their key and value read the sender `encoder` (the encoder's output) and nothing else.

`edge_forward` recomputes the model from its own modules with every receiver's input kept apart, so
that an edge can carry another run's value: in a *patched* edge the sender's activation is replaced
by its value in the corrupted (or mean) run, for that receiver only. The pieces:
- `EdgeGraph(model)`: names, the (senders, receivers) layout and which pairs are edges;
- `Pairs`: clean/corrupted inputs padded into batches; the user's metric reads a `Batch`;
- mixers: `Plain` (the model itself, keeping every receiver's input for gradients), `Circuit` (one
  mask over the edges: kept edges carry this run's values, the others the corrupted ones) and
  `EdgePatch` (copy k of the batch patches edge k alone, for exact edge patching).
Pre-norm blocks only: a post-norm block normalises the sum of its senders, so no edge is separate.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import make_mask
from lens.cache import LensError
from model.family import embed
from model.layers import softcap


# ----------------------------------------------------------------------------------------------
# The families: how each one embeds, which blocks it stacks, how it makes logits


@dataclass
class Stack:
    """What edge_forward needs of a family: its decoder-side blocks, embedding, head and masks."""

    blocks: nn.ModuleList
    embed: Callable  # inputs tuple -> (B, T, C) input embeddings (the `input` sender)
    head: Callable  # (B, T, C) stream after the last block -> logits (B, T, V)
    causal: bool
    encode: Callable | None = None  # inputs tuple -> encoder output (B, S, C): the `encoder` sender
    grad_head: Callable | None = None  # head, its backward computed only at positions with a nonzero gradient


def family_stack(model) -> Stack:
    """The Stack of a GPT, a pre-norm BERT or an encoder-decoder; a LensError for anything else."""
    config = getattr(model, "config", None)
    kind = getattr(model, "model_type", "")
    if kind not in ("gpt", "bert", "seq2seq"):
        raise LensError(f"a {type(model).__name__} has no edge graph (no attention heads writing to a residual "
                        "stream); edges exist for GPT, pre-norm BERT and the encoder-decoder's decoder.")
    if config.post_norm:
        raise LensError("this model's blocks are post-norm (BERT's default): a norm after each addition mixes every "
                        "sender, so edges are not separate; train it with post_norm=False for an edge graph.")
    cap = config.logit_softcap
    if kind == "gpt":
        return Stack(model.blocks, lambda inputs: embed(inputs[0], model.wte, model.wpe, config.block_size),
                     lambda x: softcap(model.lm_head(model.ln_f(x)), cap), causal=True,
                     grad_head=lambda x: softcap(RowsLinear.apply(model.ln_f(x), model.lm_head.weight), cap))
    if kind == "bert":
        return Stack(model.blocks, lambda inputs: bert_embed(model, inputs[0]),
                     lambda x: softcap(model.head(model.ln_f(x)), cap), causal=False)
    decoder = model.decoder
    return Stack(decoder.blocks, lambda inputs: embed(inputs[1], decoder.wte, decoder.wpe, config.block_size),
                 lambda x: softcap(model.lm_head(decoder.ln_f(x)), cap), causal=True,
                 encode=lambda inputs: model.encoder(inputs[0]),
                 grad_head=lambda x: softcap(RowsLinear.apply(decoder.ln_f(x), model.lm_head.weight), cap))


def bert_embed(model, ids: torch.Tensor) -> torch.Tensor:
    """BERT's input embeddings (segment 0), after its embedding norm: (B, T, C)."""
    x = embed(ids, model.wte, model.wpe, model.config.block_size)
    if model.wtt is not None:
        x = x + model.wtt.weight[0]
    return model.ln_emb(x)


# ----------------------------------------------------------------------------------------------
# The graph


@dataclass
class Group:
    """Receivers that read the same senders: a layer's q/k/v inputs, its cross-attention, its MLP, the logits."""

    kind: str  # "attn", "cross_q", "cross_kv", "mlp", "logits"
    layer: int
    receivers: slice  # their indices among the receivers
    n_prev: int  # they read the senders 0 .. n_prev - 1 (cross_kv: the encoder only)


class EdgeGraph:
    """Senders, receivers and edges of a model (see the module docstring for the names).

    `valid` (n_senders, n_receivers) is True at the pairs that are edges; `edges` lists them as
    (sender, receiver) index pairs in a fixed order, `names` as strings `sender->receiver`.
    """

    def __init__(self, model):
        self.stack = family_stack(model)
        blocks = self.stack.blocks
        self.n_layer, self.n_head = len(blocks), blocks[0].attn.n_head
        cross = self.stack.encode is not None
        self.senders = ["input"] + (["encoder"] if cross else [])
        self.receivers, self.groups = [], []
        for l, block in enumerate(blocks):
            heads = [f"a{l}.h{i}" for i in range(self.n_head)]
            self.add_group("attn", l, [f"{h}<{p}>" for p in "qkv" for h in heads])
            self.senders += heads
            if cross:
                xheads = [f"x{l}.h{i}" for i in range(self.n_head)]
                self.add_group("cross_q", l, [f"{h}<q>" for h in xheads])
                self.add_group("cross_kv", l, [f"{h}<{p}>" for p in "kv" for h in xheads])
                self.senders += xheads
            if not block.attn_only:
                self.add_group("mlp", l, [f"m{l}"])
                self.senders.append(f"m{l}")
        self.add_group("logits", self.n_layer, ["logits"])
        self.valid = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for group in self.groups:
            if group.kind == "cross_kv":
                self.valid[1, group.receivers] = True
            else:
                self.valid[:group.n_prev, group.receivers] = True
                if cross:
                    self.valid[1, group.receivers] = False  # the encoder feeds cross-attention keys/values only
        self.edges = [tuple(e) for e in self.valid.nonzero().tolist()]
        self.names = [f"{self.senders[s]}->{self.receivers[r]}" for s, r in self.edges]
        self.sender_index = {n: i for i, n in enumerate(self.senders)}
        self.receiver_index = {n: i for i, n in enumerate(self.receivers)}
        self.edge_index = {e: i for i, e in enumerate(self.edges)}

    def add_group(self, kind: str, layer: int, names: list[str]) -> None:
        """Append receivers reading every sender so far."""
        start = len(self.receivers)
        self.receivers += names
        self.groups.append(Group(kind, layer, slice(start, len(self.receivers)), len(self.senders)))

    def __len__(self) -> int:
        return len(self.edges)

    def edge(self, edge) -> int:
        """The position in `edges` of an edge given as "a0.h0->a1.h0<k>" or ("a0.h0", "a1.h0<k>")."""
        sender, receiver = edge.split("->") if isinstance(edge, str) else edge
        sender, receiver = sender.strip(), receiver.strip()
        if sender not in self.sender_index:
            raise LensError(f"unknown sender {sender!r}; senders are input, a<layer>.h<head>, m<layer> "
                            f"(here {self.senders[0]} .. {self.senders[-1]}).")
        if receiver not in self.receiver_index:
            raise LensError(f"unknown receiver {receiver!r}; receivers are a<layer>.h<head><q|k|v>, m<layer> and "
                            f"logits (here {self.receivers[0]} .. {self.receivers[-1]}).")
        key = (self.sender_index[sender], self.receiver_index[receiver])
        if key not in self.edge_index:
            raise LensError(f"{sender} -> {receiver} is not an edge: a receiver reads only the senders before it.")
        return self.edge_index[key]

    def matrix(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-edge values (E,) laid out as a (senders, receivers) matrix, `fill` at the non-edges."""
        out = torch.full(self.valid.shape, fill, dtype=values.dtype)
        out[self.valid] = values.cpu()
        return out


# ----------------------------------------------------------------------------------------------
# Clean/corrupted pairs in padded batches


@dataclass
class Batch:
    """Rows `rows` of a Pairs: clean and corrupted inputs (tuples of (b, T) tensors) and real lengths (b,)."""

    rows: torch.Tensor
    clean: tuple
    corrupted: tuple
    lengths: torch.Tensor


def pad(sequences, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of ids (lists or 1-d tensors, or an (N, T) tensor) -> right-padded (N, T) and lengths (N,)."""
    if isinstance(sequences, torch.Tensor) and sequences.dim() == 2:
        return sequences.long(), torch.full((sequences.size(0),), sequences.size(1), dtype=torch.long)
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    if not rows or min(len(r) for r in rows) == 0:
        raise LensError("give at least one pair, each with at least one token.")
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, lengths


class Pairs:
    """A dataset of clean/corrupted pairs, each pair of equal length, padded on the right.

    GPT and BERT: `clean` and `corrupted` are lists of token sequences (or (N, T) tensors). The
    encoder-decoder: tuples (src (N, S), tgt (N, T)) of tensors.
    """

    def __init__(self, clean, corrupted, pad_id: int = 0):
        seq2seq = isinstance(clean, tuple)
        parts_clean = clean if seq2seq else (clean,)
        parts_corrupted = corrupted if isinstance(corrupted, tuple) else (corrupted,)
        if len(parts_clean) != len(parts_corrupted):
            raise LensError("clean and corrupted must be the same kind of input (both token lists, or both (src, tgt)).")
        padded = [pad(p, pad_id) for p in parts_clean], [pad(p, pad_id) for p in parts_corrupted]
        for (c, c_len), (k, k_len) in zip(*padded):
            if c.size(0) != k.size(0):
                raise LensError(f"{c.size(0)} clean and {k.size(0)} corrupted inputs; give one corrupted per clean.")
            if not torch.equal(c_len, k_len):
                row = int((c_len != k_len).nonzero()[0])
                raise LensError(f"pair {row} has {int(c_len[row])} clean and {int(k_len[row])} corrupted tokens; "
                                "each corrupted input must have its clean input's length (pad or crop it).")
        self.clean = tuple(c for c, _ in padded[0])
        self.corrupted = tuple(c for c, _ in padded[1])
        self.lengths = padded[0][-1][1]
        self.seq2seq = seq2seq

    def __len__(self) -> int:
        return self.lengths.numel()

    def batches(self, batch_size: int, device=None):
        """Batch after batch of at most batch_size pairs, in order."""
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            move = lambda parts: tuple(p[rows].to(device) for p in parts)  # noqa: E731
            yield Batch(rows, move(self.clean), move(self.corrupted), self.lengths[rows].to(device))


def as_pairs(clean, corrupted=None) -> Pairs:
    """A Pairs from a Pairs or from (clean, corrupted)."""
    if isinstance(clean, Pairs):
        return clean
    if corrupted is None:
        raise LensError("give the corrupted inputs too (one per clean input), or a Pairs.")
    return Pairs(clean, corrupted)


def key_mask(graph: EdgeGraph, batch: Batch, copies: int = 1) -> torch.Tensor | None:
    """Keys at real positions (B, 1, 1, T) for bidirectional stacks (padding would be attended); None if causal."""
    if graph.stack.causal:
        return None
    T = batch.clean[-1].size(1)
    real = torch.arange(T, device=batch.lengths.device)[None] < batch.lengths[:, None]
    return make_mask(T, T, causal=False, key_padding_mask=real.repeat(copies, 1))


# ----------------------------------------------------------------------------------------------
# Input gradients of many receivers that read one stream (the gradient pass of EAP and EAP-IG)


def shared_norm(norm: nn.Module) -> bool:
    """Whether NormLinear knows this norm (LayerNorm, RMSNorm)."""
    return isinstance(norm, (nn.LayerNorm, nn.RMSNorm))


class NormLinear(torch.autograd.Function):
    """linear(norm(x)) for R receivers that read the same stream: `x_rep` (R, B, T, C) is one (B, T, C) tensor
    expanded, the output (B, T, R hs) is each receiver's slice of the projection (R hs rows of `weight`).

    The forward runs one norm and one matrix product, as the model does. The backward gives each receiver's
    own input gradient (R, B, T, C) with the norm's backward applied to all R at once: with W_r receiver r's
    rows times the gain, o_r its output gradient, xhat the normalised x and s = 1 / std (1 / rms),
        LayerNorm  s (o_r W_r - mean(o_r W_r) - xhat mean(o_r W_r xhat)),   RMSNorm  the same without mean(o_r W_r),
    where mean(o_r W_r) = o_r . W_r 1 / C and mean(o_r W_r xhat) = o_r . (W_r xhat) / C, and W_r xhat is the
    forward's output less its constant (bias and W b); so one batched matrix product and one pass over
    (R, B, T, C). Only x_rep gets a gradient (EAP needs no weight gradients)."""

    @staticmethod
    def forward(ctx, x_rep: torch.Tensor, norm: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
        x = x_rep[0]
        out = F.linear(norm(x), weight, bias)
        ctx.save_for_backward(x, weight, out)
        ctx.norm, ctx.bias, ctx.receivers = norm, bias, x_rep.size(0)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        norm, R = ctx.norm, ctx.receivers
        B, T, C = x.shape
        x = x.reshape(B * T, C)
        centre = isinstance(norm, nn.LayerNorm)
        if centre:
            x = x - x.mean(-1, keepdim=True)
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (B T, 1)
        gained = weight if norm.weight is None else weight * norm.weight  # (R hs, C)
        constant = 0.0 if ctx.bias is None else ctx.bias
        if getattr(norm, "bias", None) is not None:
            constant = constant + weight @ norm.bias
        own = grad_out.reshape(B * T, R, -1).transpose(0, 1)  # (R, B T, hs)
        projected = (out.reshape(B * T, -1) - constant).view(B * T, R, -1).transpose(0, 1)  # W_r xhat: (R, B T, hs)
        m2 = (own * projected).sum(-1, keepdim=True) / C  # (R, B T, 1)
        start = torch.zeros((), dtype=x.dtype, device=x.device)
        if centre:
            m1 = (own * gained.sum(-1).view(R, 1, -1)).sum(-1, keepdim=True) / C
            start = -scale * m1
        grad = torch.baddbmm(start, own * scale, gained.view(R, -1, C))  # (R, B T, C)
        grad.addcmul_(x * scale.square(), m2, value=-1.0)  # x s^2 = xhat s
        return grad.view(R, B, T, C), None, None, None


class RowsLinear(torch.autograd.Function):
    """x @ weight.T whose backward multiplies only the positions whose output gradient is not all zero (a metric
    usually reads one position of the logits); only x gets a gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.shape = x.shape
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.size(-1))  # (B T, V)
        rows = grad.any(1).nonzero().squeeze(1)
        grad_x = grad.new_zeros(grad.size(0), weight.size(1))
        grad_x[rows] = grad[rows] @ weight
        return grad_x.view(ctx.shape), None


# ----------------------------------------------------------------------------------------------
# Mixers: what each receiver reads


class Plain:
    """No patching: every receiver reads the whole stream; with keep=True its input is kept for gradients."""

    def __init__(self, keep: bool = False):
        self.keep, self.inputs_kept = keep, []
        self.total = 0.0

    def logits(self, head: Callable, x: torch.Tensor) -> torch.Tensor:
        """The logits (B, T, V) from the stream after the last block, x (B, T, C)."""
        return head(x)

    def send(self, first: int, outputs: torch.Tensor) -> None:
        """Senders first.. wrote outputs (n, B, T, C)."""
        self.total = self.total + outputs.sum(0)

    def add_bias(self, bias: torch.Tensor | None) -> None:
        """A constant every later receiver reads (output projections' biases)."""
        if bias is not None:
            self.total = self.total + bias

    def needed(self, first: int, n: int) -> bool:
        """Whether any receiver reads senders first .. first + n - 1 of this run (else they need not run)."""
        return True

    def inputs(self, group: Group) -> torch.Tensor:
        """The inputs (R, B, T, C) of a group's receivers."""
        n = group.receivers.stop - group.receivers.start
        x = self.total.unsqueeze(0).expand(n, -1, -1, -1)
        if self.keep:
            self.inputs_kept.append(x)
        return x

    def read(self, group: Group) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """What a group reads, compactly: (base (B, T, C), the receivers (k,) whose input is not base, their
        inputs (k, B, T, C)); receivers None when every receiver's input is in the last tensor (R, B, T, C)
        (with a base: each of them is base, kept for its own gradient)."""
        if self.keep:
            return self.total, None, self.inputs(group)
        return self.total, torch.zeros(0, dtype=torch.long), None

    def memory(self, group: Group, memory: torch.Tensor) -> torch.Tensor:
        """The encoder output as each cross-attention key/value receiver reads it, (2 nh, B, S, C)."""
        n = group.receivers.stop - group.receivers.start
        x = memory.unsqueeze(0).expand(n, -1, -1, -1)
        if self.keep:
            self.inputs_kept.append(x)
        return x


class Recorder(Plain):
    """A Plain run that also keeps every sender's output: `senders()` gives them as (S, B, T, C)."""

    def __init__(self, keep: bool = False):
        super().__init__(keep)
        self.outputs = []

    def send(self, first: int, outputs: torch.Tensor) -> None:
        super().send(first, outputs)
        self.outputs.append(outputs.detach())

    def senders(self, graph: "EdgeGraph") -> torch.Tensor:
        """(S, B, T, C); the encoder's row (not a stream sender) is zero."""
        parts = list(self.outputs)  # each (n, B, T, C)
        if graph.stack.encode is not None:
            parts.insert(1, torch.zeros_like(parts[0]))
        return torch.cat(parts)


class Circuit(Plain):
    """Edges in `mask` (S, R) carry this run's sender values, the others the values in `alt` (S, B|1, T, C)
    (a corrupted run, or the mean over a dataset); `alt_memory` is the encoder output they carry.

    Each group reads whichever is sparser: alt's sum plus the kept edges' differences, or this run's sum
    minus the cut edges' differences; so nearly empty and nearly full circuits cost little more than a forward.
    """

    def __init__(self, graph: "EdgeGraph", mask: torch.Tensor, alt: torch.Tensor, alt_memory: torch.Tensor | None = None,
                 alt_sums: torch.Tensor | None = None, shared: dict | None = None, rows: torch.Tensor | None = None):
        super().__init__()
        self.valid, self.mask, self.alt, self.alt_memory = graph.valid, mask, alt, alt_memory
        self.alt_sums = alt.cumsum(0) if alt_sums is None else alt_sums  # alt's senders 0 .. s summed, (S, B|1, T, C)
        # `shared` holds memory that the circuits of one batch reuse (a fresh tensor of this size costs a page fault
        # per 4 KiB on first write): "diff", this run's senders minus alt's, (S, B, T, C), and "logits"
        self.shared = {} if shared is None else shared
        self.diff, self.biases = self.shared.get("diff"), 0.0
        self.rows = rows  # (B, T) bool: the positions whose logits are computed, the others NaN (None: all)

    def logits(self, head: Callable, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return head(x)
        picked = head(x[self.rows])  # (n, V)
        out = self.shared.get("logits")
        if out is None or out.shape != (*self.rows.shape, picked.size(-1)):
            out = self.shared["logits"] = picked.new_full((*self.rows.shape, picked.size(-1)), float("nan"))
        out[self.rows] = picked
        return out

    def send(self, first: int, outputs: torch.Tensor) -> None:
        super().send(first, outputs)
        n = outputs.size(0)
        if first == 0:
            _, B, T, C = outputs.shape
            if self.diff is None or self.diff.shape != (len(self.valid), B, T, C):
                self.diff = self.shared["diff"] = outputs.new_empty(len(self.valid), B, T, C)
            self.diff[1] = 0  # the encoder of an encoder-decoder (not a stream sender), or the first head
        torch.sub(outputs, self.alt[first:first + n], out=self.diff[first:first + n])

    def add_bias(self, bias: torch.Tensor | None) -> None:
        super().add_bias(bias)
        if bias is not None:
            self.biases = self.biases + bias

    def needed(self, first: int, n: int) -> bool:
        return bool((self.mask[first:first + n] > 0).any())

    def skip(self, first: int, n: int) -> None:
        """Senders no kept edge reads: they count as their alt values (a difference of 0)."""
        self.total = self.total + self.alt_sums[first + n - 1] - self.alt_sums[first - 1]
        self.diff[first:first + n] = 0

    def read(self, group: Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mask = self.mask[:group.n_prev, group.receivers].to(self.diff.dtype)  # (s, R)
        valid = self.valid[:group.n_prev, group.receivers]
        kept = (mask > 0).any(1).nonzero().squeeze(1)
        cut = ((mask < 1) & valid).any(1).nonzero().squeeze(1)
        if kept.numel() <= cut.numel():
            base, rows, weights, sign = self.alt_sums[group.n_prev - 1] + self.biases, kept, mask[kept], 1.0
        else:
            base, rows, weights, sign = self.total, cut, (1 - mask[cut]) * valid[cut], -1.0
        B, T, C = self.diff.shape[1:]
        base = base.expand(B, T, C)
        special = (weights != 0).any(0).nonzero().squeeze(1)  # receivers that read something else than base
        if special.numel() == 0:
            return base, special, None
        weights = weights[:, special]
        if 3 * rows.numel() > group.n_prev:  # many rows: read them in place rather than gather them
            dense = weights.new_zeros(group.n_prev, special.numel())
            dense[rows] = weights
            rows, weights = slice(0, group.n_prev), dense
        mixed = torch.addmm(base.reshape(1, -1), weights.T, self.diff[rows].flatten(1), alpha=sign)  # (k, B T C)
        return base, special, mixed.view(-1, B, T, C)

    def inputs(self, group: Group) -> torch.Tensor:
        base, special, values = self.read(group)
        x = base.unsqueeze(0).repeat(group.receivers.stop - group.receivers.start, 1, 1, 1)
        if special.numel():
            x[special] = values
        return x

    def memory(self, group: Group, memory: torch.Tensor) -> torch.Tensor:
        mask = self.mask[1, group.receivers].to(memory.dtype)  # (R,): the encoder's edges
        return self.alt_memory.unsqueeze(0) + mask[:, None, None, None] * (memory - self.alt_memory).unsqueeze(0)


class EdgePatch(Plain):
    """Copy k of the batch (rows k*b .. (k+1)*b - 1) patches edge `edges[k]` alone: its receiver reads the
    sender's value in `alt` instead of its clean one (`clean`, (S, b, T, C)); everything else runs as is.
    One edge's sender lies before its receiver, so its value in the patched copy is the clean one."""

    def __init__(self, graph: "EdgeGraph", edges: Sequence[tuple[int, int]], clean: torch.Tensor, alt: torch.Tensor,
                 clean_memory: torch.Tensor | None = None, alt_memory: torch.Tensor | None = None):
        super().__init__()
        self.edges, self.b = list(edges), clean.size(1)
        self.delta = clean - alt  # (S, b, T, C): what patching an edge takes from its receiver
        self.memory_delta = None if clean_memory is None else clean_memory - alt_memory

    def patched(self, group: Group, x: torch.Tensor, delta: torch.Tensor | None, kv: bool) -> torch.Tensor:
        """x (R, K b, T, C) with each copy's edge into this group patched."""
        x = x.clone()
        for k, (s, r) in enumerate(self.edges):
            if group.receivers.start <= r < group.receivers.stop:
                rows = slice(k * self.b, (k + 1) * self.b)
                x[r - group.receivers.start, rows] -= delta if kv else delta[s]
        return x

    def inputs(self, group: Group) -> torch.Tensor:
        return self.patched(group, super().inputs(group), self.delta, kv=False)

    def read(self, group: Group) -> tuple[None, None, torch.Tensor]:
        return None, None, self.inputs(group)

    def memory(self, group: Group, memory: torch.Tensor) -> torch.Tensor:
        return self.patched(group, super().memory(group, memory), self.memory_delta, kv=True)


# ----------------------------------------------------------------------------------------------
# The forward pass


def project_heads(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Per-head inputs x (j nh, B, T, C) through j stacked (C -> C) projections -> (j, B, nh, T, hs)."""
    _, B, T, C = x.shape
    j = weight.size(0) // C
    w = weight.view(j, n_head, C // n_head, C)  # (j, nh, hs, C)
    out = torch.einsum("jnbtc,jnhc->jbnth", x.view(j, n_head, B, T, C), w)
    if bias is not None:
        out = out + bias.view(j, 1, n_head, 1, C // n_head)
    return out


def normed_projection(norm: nn.Module, values: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Receiver r's own projection of its own input: weight[r] (hs, C) times norm(values[r]) (B, T, C), plus
    bias[r] -> (k, B, T, hs).

    For LayerNorm and RMSNorm the normalised input is never written: with G_r = weight[r] times the gain,
    W_r norm(x) = s (G_r x - mean(x) G_r 1) + W_r b (s = 1 / std, 1 / rms; b the norm's bias), so one batched
    product gives G_r x and (from a row of 1 / C appended to G_r) mean(x), one pass gives mean(x^2), and the
    correction acts on the (k, B, T, hs) output, a sixth of the input or less."""
    k, B, T, C = values.shape
    if not shared_norm(norm):
        return torch.einsum("kbtc,khc->kbth", norm(values), weight) + (0 if bias is None else bias[:, None, None])
    x = values.view(k, B * T, C)
    gained = weight if norm.weight is None else weight * norm.weight  # (k, hs, C)
    constant = 0 if bias is None else bias
    if getattr(norm, "bias", None) is not None:
        constant = constant + weight @ norm.bias  # (k, hs)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(C)  # mean(x^2), (k, B T, 1)
    if isinstance(norm, nn.LayerNorm):
        rows = torch.cat([gained, gained.new_full((k, 1, C), 1.0 / C)], 1)  # (k, hs + 1, C)
        out = torch.bmm(x, rows.transpose(1, 2))  # (k, B T, hs + 1): G_r x, then mean(x)
        mean = out[..., -1:]
        out = out[..., :-1].addcmul_(mean, gained.sum(-1)[:, None, :], value=-1.0)
        square = square - mean.square()
    else:
        out = torch.bmm(x, gained.transpose(1, 2))
    out.mul_(torch.rsqrt(square + eps))
    if not isinstance(constant, int):
        out.add_(constant[:, None, :])
    return out.reshape(k, B, T, -1)


def project_read(norm: nn.Module, linear: nn.Linear, read: tuple, n_head: int) -> torch.Tensor:
    """project_heads of norm(each receiver's input), computing the receivers that read the shared base as
    one matrix product: (j, B, nh, T, hs)."""
    base, special, values = read
    B, T, C = values.shape[1:] if base is None else base.shape
    j, hs = linear.weight.size(0) // C, C // n_head
    if special is None and (base is None or not shared_norm(norm)):
        return project_heads(linear.weight, linear.bias, norm(values), n_head)
    if special is None:  # every receiver reads base, each needs its own gradient
        out = NormLinear.apply(values, norm, linear.weight, linear.bias)
        return out.view(B, T, j, n_head, hs).permute(2, 0, 3, 1, 4)
    if special.numel() == 0:
        out = F.linear(norm(base), linear.weight, linear.bias).view(B, T, j * n_head, hs)
        return out.view(B, T, j, n_head, hs).permute(2, 0, 3, 1, 4)
    weight = linear.weight.view(j * n_head, hs, C)
    bias = None if linear.bias is None else linear.bias.view(j * n_head, hs)
    own = normed_projection(norm, values, weight[special], None if bias is None else bias[special])  # (k, B, T, hs)
    if special.numel() == j * n_head and bool((special == torch.arange(j * n_head, device=special.device)).all()):
        out = own
    else:
        out = base.new_empty(j * n_head, B, T, hs)
        common = torch.ones(j * n_head, dtype=torch.bool, device=base.device)
        common[special] = False
        if bool(common.any()):  # the receivers that read base, in one product
            rows = common.nonzero().squeeze(1)
            shared = F.linear(norm(base), weight[rows].flatten(0, 1), None if bias is None else bias[rows].flatten())
            out[rows] = shared.view(B, T, -1, hs).permute(2, 0, 1, 3)
        out[special] = own
    return out.view(j, n_head, B, T, hs).transpose(1, 2)


def one_input(read: tuple) -> torch.Tensor:
    """The input (B, T, C) of a group with one receiver (an MLP, the logits)."""
    base, special, values = read
    return values[0] if special is None or special.numel() else base


def attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each head's output written to the stream, (nh, B, T, C), and the output projection's bias."""
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rotary is not None:
        q, k = attn.rotary(q), attn.rotary(k)
    T, S = q.size(2), k.size(2)
    if attn.weighting.fast and attn.scorer.sdpa_scale is not None:  # softmax of a scaled dot product: SDPA's
        z = F.scaled_dot_product_attention(attn.scorer.prepare_q(q), k, v, attn_mask=None if causal else keys,
                                           is_causal=causal, scale=attn.scorer.sdpa_scale)
        return heads_out(attn, z)
    mask = make_mask(T, S, causal=True, device=q.device) if causal else keys
    scores = attn.scorer(q, k)  # (B, nh, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = attn.weighting(scores)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return heads_out(attn, weights @ v)


def heads_out(attn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each head's output z (B, nh, T, hs) through its slice of the output projection: (nh, B, T, C), and the
    projection's bias."""
    w_out = attn.c_proj.weight.view(-1, attn.n_head, attn.head_dim)  # (C, nh, hs)
    return torch.einsum("bnth,cnh->nbtc", z, w_out), attn.c_proj.bias


def edge_forward(graph: EdgeGraph, inputs: tuple, mixer: Plain, input_value: torch.Tensor | None = None,
                 memory_value: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of the model with every receiver reading what `mixer` gives it.

    `input_value` replaces the input embeddings (B, T, C) and `memory_value` the encoder output.
    `keys` (B, 1, 1, T): real key positions of a bidirectional stack (see key_mask).
    """
    stack = graph.stack
    if stack.blocks.training:
        raise LensError("the model is in training mode (dropout would change every pass); call model.eval() first.")
    x_in = stack.embed(inputs) if input_value is None else input_value
    mixer.send(0, x_in.unsqueeze(0))
    memory = memory_value if memory_value is not None or stack.encode is None else stack.encode(inputs)
    sender, groups = 2 if stack.encode is not None else 1, iter(graph.groups)
    for block in stack.blocks:
        attn = block.attn
        group = next(groups)
        if mixer.needed(sender, attn.n_head):
            q, k, v = project_read(block.ln_1, attn.c_attn, mixer.read(group), attn.n_head)
            heads, bias = attend(attn, q, k, v, stack.causal, keys)
            mixer.send(sender, heads)
        else:
            mixer.skip(sender, attn.n_head)
            bias = attn.c_proj.bias
        mixer.add_bias(bias)
        sender += attn.n_head
        if stack.encode is not None:
            cross = block.cross_attn
            q = project_read(block.ln_cross, cross.q_attn, mixer.read(next(groups)), cross.n_head)[0]
            k, v = project_heads(cross.kv_attn.weight, cross.kv_attn.bias, mixer.memory(next(groups), memory),
                                 cross.n_head)
            heads, bias = attend(cross, q, k, v, False, None)
            mixer.send(sender, heads)
            mixer.add_bias(bias)
            sender += cross.n_head
        if not block.attn_only:
            group = next(groups)
            if mixer.needed(sender, 1):
                mixer.send(sender, block.mlp(block.ln_2(one_input(mixer.read(group)))).unsqueeze(0))
            else:
                mixer.skip(sender, 1)
            sender += 1
    head = stack.grad_head if mixer.keep and stack.grad_head is not None else stack.head
    return mixer.logits(head, one_input(mixer.read(next(groups))))
