"""Path patching: a sender head's clean-minus-corrupted output, added only along its direct paths into
chosen receivers (the queries, keys or values of later heads, or the final residual stream).

    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    table = get_act_patch_direct_path(model, corrupted_tokens, clean_cache, corrupted_cache, metric, 0, 1, "k")
    value = path_patch(model, corrupted_tokens, clean_cache, corrupted_cache, metric,
                       [PathPatch(senders=[(0, 1)], receivers=[(1, 0, "k"), (1, 2, "k")])])

Each receiver reads its own copy of the residual stream with delta = sum over senders of
(clean z - corrupted z) @ W_O[head] added; every other reader (other heads, MLPs, the other inputs of
a receiving head) sees the corrupted stream, so no other path carries the sender's change. What the
receivers then do flows on as usual. With one sender and one receiving head this is TransformerLens'
get_act_patch_direct_path (Wang et al. 2022's path patching, direct edges only).

Many patches share one forward pass (copy k of the corrupted input gets patch k), and a pass starts
at the first receiving block (the blocks before it are the corrupted run's, read from its cache).
"""

import itertools
from dataclasses import dataclass, field

import torch

from lens.patching import Corrupted, Metric, as_inputs, check_lengths, default_batch_size, scalar
from lens.weight_space import head_weights
from lens.cache import LensError, get_stack

FINAL = "resid_final"  # the receiver that is the residual stream after the last block (the unembedding's input)


@dataclass
class PathPatch:
    """Senders (layer, head) and receivers: (layer, head, "q" | "k" | "v") or "resid_final"."""

    senders: list[tuple[int, int]]
    receivers: list = field(default_factory=lambda: [FINAL])


def check_patch(patch: PathPatch, n_layer: int, n_head: int) -> None:
    """A LensError for a head out of range, an unknown input or a receiver not after every sender."""
    if not patch.senders:
        raise LensError("a path patch needs at least one sender head (layer, head).")
    for layer, head in patch.senders:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise LensError(f"sender ({layer}, {head}) does not exist: layers are 0..{n_layer - 1}, heads 0..{n_head - 1}.")
    last_sender = max(layer for layer, _ in patch.senders)
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
                            "what earlier layers wrote.")


def sender_delta(model, clean_cache, corrupted_cache, senders) -> torch.Tensor:
    """Sum over sender heads of (clean z - corrupted z) @ W_O[head]: (B, T, C)."""
    total = 0.0
    for layer, head in senders:
        name = f"blocks.{layer}.attn.z"  # (B, nh, T, hs)
        W_O = head_weights(model.blocks[layer].attn)["W_O"][head].detach()  # (hs, C)
        z_clean, z_corrupted = clean_cache[name][:, head], corrupted_cache[name][:, head]
        total = total + (z_clean - z_corrupted).to(W_O.dtype) @ W_O
    return total


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
               patches: list[PathPatch], batch_size: int | None = None) -> torch.Tensor:
    """The metric after each path patch, (len(patches),); patches run batch_size at a time."""
    inputs = as_inputs(corrupted_tokens)
    check_model(model, inputs, clean_cache, corrupted_cache)
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    for patch in patches:
        check_patch(patch, n_layer, n_head)
    start = lambda p: min([r[0] for r in p.receivers if r != FINAL] + [n_layer - 1])  # noqa: E731
    order = sorted(range(len(patches)), key=lambda i: start(patches[i]))
    results = torch.zeros(len(patches))
    with torch.no_grad():
        corrupted = Corrupted(model, inputs[0])
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
    reading the stream plus deltas[k]."""
    K, B = deltas.shape[:2]
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
            qkv = block.attn.project(block.ln_1(stream.flatten(0, 1)), None, None)
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
                              batch_size: int | None = None) -> torch.Tensor:
    """The metric with head (src_layer, src_head)'s change added only to each later head's `component`
    input: (n_layer, n_head), 0 where the layer is not after src_layer (TransformerLens' table)."""
    table = get_act_patch_direct_path_all_sources(model, corrupted_tokens, clean_cache, corrupted_cache,
                                                  patching_metric, component, batch_size, [(src_layer, src_head)])
    return table[src_layer, src_head]


def get_act_patch_direct_path_all_sources(model, corrupted_tokens, clean_cache, corrupted_cache,
                                          patching_metric: Metric, component: str = "q",
                                          batch_size: int | None = None, sources=None) -> torch.Tensor:
    """get_act_patch_direct_path for every source head (or those in `sources`): (layer, head, layer, head)."""
    if component not in ("q", "k", "v"):
        raise LensError(f"component must be 'q', 'k' or 'v', got {component!r}.")
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    sources = sources or [(l, h) for l in range(n_layer) for h in range(n_head)]
    cells = [(s, (dl, dh)) for s in sources for dl in range(s[0] + 1, n_layer) for dh in range(n_head)]
    patches = [PathPatch([s], [(dl, dh, component)]) for s, (dl, dh) in cells]
    for s in sources:
        check_patch(PathPatch([s], []), n_layer, n_head)
    values = path_patch(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric, patches, batch_size)
    table = torch.zeros(n_layer, n_head, n_layer, n_head)
    for ((sl, sh), (dl, dh)), value in zip(cells, values):
        table[sl, sh, dl, dh] = value
    return table
