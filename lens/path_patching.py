"""Path patching: a sender's clean-minus-corrupted output, added only along its direct paths into
chosen receivers (the queries, keys or values of later heads, or the final residual stream). A sender is
a head (layer, head), an MLP (layer, "mlp") or the embeddings ("embed": token plus position embeddings).

    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    table = get_act_patch_direct_path(model, corrupted_tokens, clean_cache, corrupted_cache, metric, 0, 1, "k")
    value = path_patch(model, corrupted_tokens, clean_cache, corrupted_cache, metric,
                       [PathPatch(senders=[(0, 1)], receivers=[(1, 0, "k"), (1, 2, "k")])])

Each receiver reads its own copy of the residual stream with delta = sum over senders of their
clean-minus-corrupted writes ((clean z - corrupted z) @ W_O[head] for a head, the MLP's output, the
embeddings' sum) added; every other reader (other heads, MLPs, the other inputs of
a receiving head) sees the corrupted stream, so no other path carries the sender's change. What the
receivers then do flows on as usual. With one sender and one receiving head this is TransformerLens'
get_act_patch_direct_path (Wang et al. 2022's path patching, direct edges only).

Many patches share one forward pass (copy k of the corrupted input gets patch k), and a pass starts
at the first receiving block (the blocks before it are the corrupted run's, read from its cache).
"""

import itertools
from dataclasses import dataclass, field

import torch

from lens.patching import Corrupted, Metric, as_inputs, check_lengths, check_mask, default_batch_size, scalar
from lens.weight_space import head_weights
from lens.cache import LensError, get_stack
from model.documents import document_positions
from model.generation import padded_positions

FINAL = "resid_final"  # the receiver that is the residual stream after the last block (the unembedding's input)


EMBED, MLP = "embed", "mlp"  # the senders that are not heads: "embed", (layer, "mlp")


@dataclass
class PathPatch:
    """Senders: (layer, head), (layer, "mlp") or "embed"; receivers: (layer, head, "q" | "k" | "v") or
    "resid_final"."""

    senders: list
    receivers: list = field(default_factory=lambda: [FINAL])


def sender_layer(sender) -> int:
    """The block a sender writes from (-1: the embeddings, before every block)."""
    return -1 if sender == EMBED else sender[0]


def check_sender(sender, n_layer: int, n_head: int, has_mlp: bool) -> None:
    """A LensError for a sender that is not a head, an MLP or the embeddings of this model."""
    if sender == EMBED:
        return
    if not (isinstance(sender, tuple) and len(sender) == 2 and isinstance(sender[0], int)
            and (sender[1] == MLP or isinstance(sender[1], int))):
        raise LensError(f"sender {sender!r}: write (layer, head), (layer, 'mlp') or 'embed'.")
    layer, what = sender
    if what == MLP and not has_mlp:
        raise LensError(f"sender {sender!r}: this model has no MLPs (attn_only); send from heads or 'embed'.")
    if not 0 <= layer < n_layer or (what != MLP and not 0 <= what < n_head):
        raise LensError(f"sender {sender} does not exist: layers are 0..{n_layer - 1}, heads 0..{n_head - 1}.")


def check_patch(patch: PathPatch, n_layer: int, n_head: int, has_mlp: bool = True) -> None:
    """A LensError for a sender or receiver out of range, an unknown input or a receiver not after every sender."""
    if not patch.senders:
        raise LensError("a path patch needs at least one sender: (layer, head), (layer, 'mlp') or 'embed'.")
    for sender in patch.senders:
        check_sender(sender, n_layer, n_head, has_mlp)
    last_sender = max(sender_layer(sender) for sender in patch.senders)
    for receiver in patch.receivers:
        if receiver == FINAL:
            continue
        if not (isinstance(receiver, tuple) and len(receiver) == 3 and receiver[2] in ("q", "k", "v")):
            raise LensError(f"receiver {receiver!r}: write (layer, head, 'q' | 'k' | 'v') or {FINAL!r}.")
        layer, head, _ = receiver
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise LensError(f"receiver {receiver} does not exist: layers are 0..{n_layer - 1}, heads 0..{n_head - 1}.")
        if layer <= last_sender:
            raise LensError(f"receiver {receiver} is not after sender layer {last_sender}: a head reads only "
                            "what the embeddings and earlier layers wrote.")


def sender_delta(model, clean_cache, corrupted_cache, senders) -> torch.Tensor:
    """Sum over senders of their clean-minus-corrupted write into the residual stream: (B, T, C)."""
    total = 0.0
    for sender in senders:
        if sender == EMBED:  # what the blocks read first: token (plus learned position) embeddings
            total = total + clean_cache["blocks.0.resid_pre"] - corrupted_cache["blocks.0.resid_pre"]
        elif sender[1] == MLP:
            name = f"blocks.{sender[0]}.mlp.out"  # (B, T, C)
            total = total + clean_cache[name] - corrupted_cache[name]
        else:
            layer, head = sender
            name = f"blocks.{layer}.attn.z"  # (B, nh, T, hs)
            W_O = head_weights(model.blocks[layer].attn)["W_O"][head].detach()  # (hs, C)
            z_clean, z_corrupted = clean_cache[name][:, head], corrupted_cache[name][:, head]
            total = total + (z_clean - z_corrupted).to(W_O.dtype) @ W_O
    return total


def has_mlp(model) -> bool:
    """Whether the blocks have MLPs (an attn_only model's have none)."""
    return not getattr(model.config, "attn_only", False)


def check_model(model, inputs: tuple, clean_cache, corrupted_cache) -> None:
    """A LensError unless this is a decoder-only pre-norm model in eval mode with matching runs."""
    structure = get_stack(model)
    if not structure.causal or structure.prefix or len(inputs) != 1:
        raise LensError("path patching supports decoder-only models (GPT): pass a (batch, length) token tensor.")
    if model.config.post_norm:
        raise LensError("path patching needs a pre-norm model: post-norm blocks normalise the sum, so a head's "
                        "write does not reach later heads unchanged.")
    if model.training and model.config.dropout > 0:
        raise LensError("path patching needs model.eval(): dropout would make each patched run differ.")
    check_lengths(inputs, clean_cache, structure)
    check_lengths(inputs, corrupted_cache, structure)


def path_patch(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric: Metric,
               patches: list[PathPatch], batch_size: int | None = None,
               attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The metric after each path patch, (len(patches),); patches run batch_size at a time. `attention_mask`
    (B, T), 1 at real tokens: a left-padded batch; `doc_ids` (B, T): packed documents (--doc_mask), each
    token reading only its own document. Both caches must come from runs with the same mask or doc_ids."""
    inputs = as_inputs(corrupted_tokens)
    check_model(model, inputs, clean_cache, corrupted_cache)
    check_mask(attention_mask, inputs, get_stack(model), doc_ids)
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    for patch in patches:
        check_patch(patch, n_layer, n_head, has_mlp(model))
    start = lambda p: min([r[0] for r in p.receivers if r != FINAL] + [n_layer - 1])  # noqa: E731
    order = sorted(range(len(patches)), key=lambda i: start(patches[i]))
    results = torch.zeros(len(patches))
    with torch.no_grad():
        corrupted = Corrupted(model, inputs[0], attention_mask, doc_ids)
        size = batch_size or default_batch_size(corrupted.logits.numel())
        for layer, group in itertools.groupby(order, key=lambda i: start(patches[i])):
            group = list(group)
            for first in range(0, len(group), size):
                chunk = group[first:first + size]
                deltas = torch.stack([sender_delta(model, clean_cache, corrupted_cache, patches[i].senders)
                                      for i in chunk])  # (K, B, T, C)
                logits = run_path_patches(model, corrupted, layer, deltas, [patches[i].receivers for i in chunk])
                for k, i in enumerate(chunk):
                    results[i] = float(scalar(patching_metric(logits[k])))
    return results


def run_path_patches(model, corrupted: Corrupted, layer: int, deltas: torch.Tensor, receivers: list[list]):
    """Logits (K, B, T, V) of K copies of the corrupted run from block `layer` on, copy k's receivers
    reading the stream plus deltas[k] (masked as the corrupted run was: padding or documents)."""
    K, B = deltas.shape[:2]
    positions = None  # (B, T): rotary's positions, when they do not count from each row's start
    if corrupted.attention_mask is not None:
        positions = padded_positions(corrupted.attention_mask)
    elif corrupted.doc_ids is not None:
        positions = document_positions(corrupted.doc_ids)
    heads = {}  # (layer, input) -> [(copy, head)]
    for k, copy_receivers in enumerate(receivers):
        for receiver in copy_receivers:
            if receiver != FINAL:
                heads.setdefault((receiver[0], receiver[2]), []).append((k, receiver[1]))
    final = [k for k, copy_receivers in enumerate(receivers) if FINAL in copy_receivers]
    patched = {}  # layer -> (copies, (q, k, v) of those copies read from stream + delta)

    def read_stream(x: torch.Tensor, name: str) -> None:
        l = int(name.split(".")[1])
        copies = sorted({k for (hl, _), found in heads.items() if hl == l for k, _ in found})
        if copies:
            block = model.blocks[l]
            stream = x.view(K, B, *x.shape[1:])[copies] + deltas[copies].to(x.dtype)
            rows = None if positions is None else positions.repeat(len(copies), 1)
            qkv = block.attn.project(block.ln_1(stream.flatten(0, 1)), None, None, positions=rows)
            patched[l] = (copies, [t.view(len(copies), B, *t.shape[1:]) for t in qkv])

    def set_heads(activation: torch.Tensor, name: str) -> torch.Tensor:
        _, l, _, which = name.split(".")
        copies, qkv = patched[int(l)]
        new = qkv["qkv".index(which)]
        out = activation.view(K, B, *activation.shape[1:]).clone()  # (K, B, nh, T, hs)
        for k, head in heads[(int(l), which)]:
            out[k, :, head] = new[copies.index(k), :, head]
        return out.view(activation.shape)

    def add_final(x: torch.Tensor, name: str) -> torch.Tensor:
        out = x.view(K, B, *x.shape[1:]).clone()
        out[final] += deltas[final].to(x.dtype)
        return out.view(x.shape)

    hooks = [([f"blocks.{l}.resid_pre" for l in {l for l, _ in heads}], read_stream)] if heads else []
    hooks += [([f"blocks.{l}.attn.{which}" for l, which in heads], set_heads)] if heads else []
    hooks += [(f"blocks.{len(model.blocks) - 1}.resid_post", add_final)] if final else []
    with model.hooks(hooks):
        logits = corrupted.forward(model, layer, 0, K)
    return logits.view(K, B, *logits.shape[1:])


def get_act_patch_direct_path(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric: Metric,
                              src_layer: int, src_head: int, component: str = "q",
                              batch_size: int | None = None, attention_mask: torch.Tensor | None = None,
                              doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The metric with head (src_layer, src_head)'s change added only to each later head's `component`
    input: (n_layer, n_head), 0 where the layer is not after src_layer (TransformerLens' table)."""
    return direct_path_table(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric,
                             [(src_layer, src_head)], component, batch_size, attention_mask, doc_ids)[0]


def get_act_patch_direct_path_all_sources(model, corrupted_tokens, clean_cache, corrupted_cache,
                                          patching_metric: Metric, component: str = "q",
                                          batch_size: int | None = None, sources=None,
                                          attention_mask: torch.Tensor | None = None,
                                          doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """get_act_patch_direct_path for every source head (or those in `sources`): (layer, head, layer, head)."""
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    sources = sources or [(l, h) for l in range(n_layer) for h in range(n_head)]
    for source in sources:
        if source == EMBED or (isinstance(source, tuple) and source[-1] == MLP):
            raise LensError(f"source {source!r}: this table's sources are heads (layer, head); for MLPs and "
                            "the embeddings use direct_path_table(..., senders=[(0, 'mlp'), 'embed']).")
    rows = direct_path_table(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric, sources,
                             component, batch_size, attention_mask, doc_ids)
    table = torch.zeros(n_layer, n_head, n_layer, n_head)
    for (sl, sh), row in zip(sources, rows):
        table[sl, sh] = row
    return table


def direct_path_table(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric: Metric,
                      senders: list, component: str = "q", batch_size: int | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The metric with each sender's change ((layer, head), (layer, "mlp") or "embed") added only to each
    later head's `component` input: (len(senders), n_layer, n_head), 0 where the head is not after it."""
    if component not in ("q", "k", "v"):
        raise LensError(f"component must be 'q', 'k' or 'v', got {component!r}.")
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    if not senders:
        raise LensError("give at least one sender: (layer, head), (layer, 'mlp') or 'embed'.")
    for sender in senders:
        check_sender(sender, n_layer, n_head, has_mlp(model))
    cells = [(i, dl, dh) for i, s in enumerate(senders) for dl in range(sender_layer(s) + 1, n_layer)
             for dh in range(n_head)]
    patches = [PathPatch([senders[i]], [(dl, dh, component)]) for i, dl, dh in cells]
    values = path_patch(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric, patches, batch_size,
                        attention_mask, doc_ids)
    table = torch.zeros(len(senders), n_layer, n_head)
    for (i, dl, dh), value in zip(cells, values):
        table[i, dl, dh] = value
    return table
