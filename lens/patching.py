"""Activation patching (exact, batched) and attribution patching, with TransformerLens' names.

    _, clean_cache = model.run_with_cache(clean_tokens)
    metric = lambda logits: logits[0, -1, right] - logits[0, -1, wrong]
    table = get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)   # (layer, pos)
    approx = get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)  # same shape

Exact patching runs the corrupted input with one site (a layer's residual stream at one position, a
head's output, ...) set to its value in the clean run, and records the metric. Many patches share one
forward pass: the corrupted input is repeated along the batch, copy k gets patch k. Attribution
patching approximates every site at once from one forward and one backward pass on the corrupted
input: metric(patched) - metric(corrupted) ~= (clean - corrupted) . d metric / d activation.
Patch the other way (corrupted into clean: "noising") by swapping the two runs' roles.
Inputs are a token tensor (B, T), or a tuple of the model's positional inputs (Seq2Seq: (src, tgt)).
"""

import itertools
import re
import sys
from collections.abc import Callable, Sequence

import torch

from lens.modes import refuse_training
from lens.cache import LensError, get_stack
from model.attention import PastKeyValues
from model.documents import document_mask, document_positions
from model.generation import padded_causal_mask, padded_positions
from model.layers import softcap

__all__ = ["KINDS", "Metric", "kind_sites", "activation_patch", "patch_table", "attribution_patch", "attribution_table",
           "get_act_patch_block_every", "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
           "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos",
           "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos",
           "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos",
           "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
           "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_pattern_by_pos",
           "get_attr_patch_resid_pre", "get_attr_patch_resid_mid", "get_attr_patch_attn_out", "get_attr_patch_mlp_out",
           "get_attr_patch_attn_head_out_by_pos", "get_attr_patch_attn_head_q_by_pos",
           "get_attr_patch_attn_head_k_by_pos", "get_attr_patch_attn_head_v_by_pos",
           "get_attr_patch_attn_head_out_all_pos", "get_attr_patch_attn_head_q_all_pos",
           "get_attr_patch_attn_head_k_all_pos", "get_attr_patch_attn_head_v_all_pos",
           "get_attr_patch_attn_head_pattern_all_pos", "get_attr_patch_attn_head_pattern_by_pos"]

Metric = Callable[[torch.Tensor], torch.Tensor | float]
Site = tuple[str, tuple]  # (hook name, index into the activation after its batch dim)

# kind -> (hook inside a block, activation dims (after batch) that index the table, in the table's order)
KINDS = {
    "resid_pre": ("resid_pre", (0,)),  # (B, T, C) -> (layer, pos)
    "resid_mid": ("resid_mid", (0,)),
    "attn_out": ("attn.out", (0,)),
    "mlp_out": ("mlp.out", (0,)),
    "attn_head_out_by_pos": ("attn.z", (1, 0)),  # (B, nh, T, hs) -> (layer, pos, head)
    "attn_head_q_by_pos": ("attn.q", (1, 0)),
    "attn_head_k_by_pos": ("attn.k", (1, 0)),
    "attn_head_v_by_pos": ("attn.v", (1, 0)),
    "attn_head_out_all_pos": ("attn.z", (0,)),  # -> (layer, head)
    "attn_head_q_all_pos": ("attn.q", (0,)),
    "attn_head_k_all_pos": ("attn.k", (0,)),
    "attn_head_v_all_pos": ("attn.v", (0,)),
    "attn_head_pattern_all_pos": ("attn.pattern", (0,)),  # (B, nh, T, S) -> (layer, head)
    "attn_head_pattern_by_pos": ("attn.pattern", (0, 1)),  # -> (layer, head, dest_pos)
}


def as_inputs(tokens) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs as a tuple (a single tensor for GPT and BERT)."""
    return tuple(tokens) if isinstance(tokens, (tuple, list)) else (tokens,)


def kind_sites(model, kind: str, clean_cache, stack: str | None = None) -> tuple[list[tuple], list[list[Site]]]:
    """Every (table index, [site]) of one kind: each layer x each value of the kind's indexed dims."""
    if kind not in KINDS:
        raise LensError(f"unknown patching kind {kind!r}; pick one of {', '.join(KINDS)}.")
    structure = get_stack(model, stack)
    hook, dims = KINDS[kind]
    if hook == "mlp.out" and any(block.attn_only for block in structure.blocks):
        raise LensError("this model is attention-only: it has no MLP outputs to patch.")
    indices, patches = [], []
    for layer in range(len(structure.blocks)):
        name = structure.name(layer, hook)
        shape = clean_cache[name].shape[1:]  # without the batch dim
        for values in itertools.product(*(range(shape[d]) for d in dims)):
            index = [slice(None)] * len(shape)
            for d, v in zip(dims, values):
                index[d] = v
            indices.append((layer, *values))
            patches.append([(name, tuple(index))])
    return indices, patches


# hooks inside a block whose activation holds only the positions a pass computes, and their time dim (after
# batch): a causal pass that starts at position p (the positions before it read from the corrupted run) can
# patch them. Keys, values, scores and patterns also span the cached positions, so patching them starts at 0.
TIME_DIMS = {"resid_pre": 0, "resid_mid": 0, "resid_post": 0, "attn.out": 0, "mlp.post": 0, "mlp.out": 0,
             "attn.z": 1, "attn.q": 1}


def default_batch_size(logits_elements: int) -> int:
    """Patched copies per forward pass: about 2^25 logits (128 MiB in float32) at a time, at least 1."""
    return max(1, (1 << 25) // max(1, logits_elements))


def check_lengths(inputs: tuple, clean_cache, structure) -> None:
    """Clean and corrupted runs must have the same batch and length (first stack input)."""
    name = structure.name(0, "resid_pre")
    if name not in clean_cache:
        return
    clean_shape = tuple(clean_cache[name].shape[:2])
    corrupted = inputs[-1] if structure.prefix == "decoder." else inputs[0]
    if tuple(corrupted.shape[:2]) != clean_shape:
        raise LensError(f"the clean run had (batch, length) {clean_shape} and the corrupted input has "
                        f"{tuple(corrupted.shape[:2])}; patching needs the same shape (pad or crop the prompts).")


def check_mask(attention_mask, inputs: tuple, structure, doc_ids=None) -> None:
    """A LensError unless attention_mask is None or a (batch, length) mask of a decoder-only model's tokens,
    and doc_ids None or a (batch, length) tensor of a GPT's or a BERT's tokens."""
    if doc_ids is not None:
        if structure.prefix or len(inputs) != 1:
            raise LensError("doc_ids (packed documents) apply to GPT and BERT; an encoder-decoder takes none.")
        if tuple(doc_ids.shape) != tuple(inputs[0].shape[:2]):
            raise LensError(f"doc_ids is {tuple(doc_ids.shape)} but the tokens are {tuple(inputs[0].shape[:2])}; "
                            "give one document id per token, as the model was run with.")
    if attention_mask is None:
        return
    if structure.prefix or not structure.causal or len(inputs) != 1:
        raise LensError("attention_mask (left padding) is for decoder-only models (GPT); pad an encoder's "
                        "inputs on the right instead.")
    if tuple(attention_mask.shape) != tuple(inputs[0].shape[:2]):
        raise LensError(f"attention_mask is {tuple(attention_mask.shape)} but the tokens are "
                        f"{tuple(inputs[0].shape[:2])}; give one mask value per token (1 real, 0 padding).")


def layout_kwargs(attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None) -> dict:
    """forward's keyword arguments for a padded (attention_mask) or packed (doc_ids) batch; {} for neither."""
    given = {"attention_mask": attention_mask, "doc_ids": doc_ids}
    return {key: value for key, value in given.items() if value is not None}


def check_sites(patches: Sequence[list[Site]], clean_cache) -> None:
    """A LensError for a site whose index falls outside its activation in the clean run."""
    for patch in patches:
        for name, index in patch:
            shape = tuple(clean_cache[name].shape[1:])
            try:
                clean_cache[name][(slice(None), *index)]
            except IndexError:
                raise LensError(f"the site {name}{list(index)} is outside the clean run's {shape} values (batch dim "
                                "left out); index positions and heads from 0 to their size - 1.") from None


def scalar(value, what: str = "the patching metric") -> torch.Tensor:
    """The metric's value as a 0-dim tensor; a LensError unless it is one number."""
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise LensError(f"{what} returned {tuple(value.shape)} values; it must return one number per run "
                        "(e.g. logits[0, -1, right] - logits[0, -1, wrong], or .mean() over the batch).")
    return value.reshape(())


def activation_patch(model, corrupted_tokens, clean_cache, patching_metric: Metric, patches: Sequence[list[Site]],
                     batch_size: int | None = None, progress: str | None = None,
                     attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The metric after each patch (a list of sites set to their clean values), (len(patches),).

    Patches run `batch_size` at a time in one forward pass each (default: about 2^25 logits per pass);
    an empty patch gives the corrupted metric. `progress` (a label) prints a counter on stderr.
    A decoder-only model's pass starts where its patches do (see Corrupted): at their first block, and
    at their first position when every site names one. `attention_mask` (B, T), 1 at real tokens, runs a
    left-padded batch (model.to_tokens(texts, padding_side="left", return_attention_mask=True)); the clean
    cache must come from the clean tokens run with their own mask. `doc_ids` (B, T), packed documents
    (`--doc_mask`): each token attends within its own document, as the clean run did.
    """
    refuse_training(model, "activation patching")
    inputs = as_inputs(corrupted_tokens)
    structure = get_stack(model)
    check_lengths(inputs, clean_cache, structure)
    check_mask(attention_mask, inputs, structure, doc_ids)
    check_sites(patches, clean_cache)
    results, size, todo = [], batch_size, list(patches)
    with torch.no_grad():
        corrupted = None
        if structure.prefix == "" and structure.causal and len(inputs) == 1:
            corrupted = Corrupted(model, inputs[0], attention_mask, doc_ids)
        while todo:
            size = size or 1  # without a size, one patch first to learn it
            chunk = todo[:size]
            if corrupted is not None:  # one start (block, position) per pass: cut where the block changes
                layer = corrupted.start(chunk[:1])[0]
                chunk = list(itertools.takewhile(lambda patch: corrupted.start([patch])[0] == layer, chunk))
            todo = todo[len(chunk):]
            values = run_patches(model, inputs, clean_cache, patching_metric, chunk, corrupted,
                                 layout_kwargs(attention_mask, doc_ids))
            results += [value for value, _ in values]
            size = batch_size or default_batch_size(values[0][1])
            if progress:
                print(f"\r{progress}: {len(results)}/{len(patches)} patches", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return torch.tensor(results, dtype=torch.float32)


class Corrupted:
    """The corrupted run of a decoder-only (causal) model, kept so that a patched pass can skip what a patch
    cannot change: the blocks before its first patched block (their output is the corrupted run's), and the
    positions before its first patched position (causal attention: nothing later flows back). Such a pass
    starts from the corrupted residual stream and reads the skipped positions' keys and values from here.
    """

    def __init__(self, model, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 doc_ids: torch.Tensor | None = None):
        names = [f"blocks.{l}.{hook}" for l in range(len(model.blocks)) for hook in ("resid_pre", "attn.k", "attn.v")]
        (self.logits, _), self.cache = model.run_with_cache(tokens, names_filter=names,
                                                            **layout_kwargs(attention_mask, doc_ids))
        self.n_layer, self.length = len(model.blocks), tokens.size(1)
        self.attention_mask, self.doc_ids = attention_mask, doc_ids

    def start(self, patches: Sequence[list[Site]]) -> tuple[int, int]:
        """(first block, first position) a pass over these patches must compute; (0, 0): the whole model."""
        layer, position = self.n_layer, self.length
        for patch in patches:
            for name, index in patch:
                found = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
                if not found:  # a site before the blocks (embeddings): the whole pass
                    return 0, 0
                layer = min(layer, int(found.group(1)))
                dim = TIME_DIMS.get(found.group(2))
                at = index[dim] if dim is not None and len(index) > dim else None
                position = min(position, at if isinstance(at, int) and at >= 0 else 0)
        return (0, 0) if layer == self.n_layer else (layer, position)

    def forward(self, model, layer: int, position: int, copies: int) -> torch.Tensor:
        """Logits of `copies` repeats of the run, blocks from `layer` on computed for positions >= `position`."""
        x = self.cache[f"blocks.{layer}.resid_pre"][:, position:]
        x = x.repeat(copies, *([1] * (x.dim() - 1)))
        repeat = lambda t: t.repeat(copies, 1, 1, 1)  # noqa: E731  (B, nh, T, hs) -> a new (copies*B, ...)
        mask = positions = None
        if self.attention_mask is not None:  # left padding: each row's own positions, no padding keys
            full = self.attention_mask.repeat(copies, 1)  # (copies*B, T)
            mask, positions = padded_causal_mask(full, self.length - position), padded_positions(full)[:, position:]
        elif self.doc_ids is not None:  # packed documents: positions restart at each, no key of another one
            full = self.doc_ids.repeat(copies, 1)
            mask = document_mask(full, self.length - position, causal=True)
            positions = document_positions(full)[:, position:]
        for l in range(layer, self.n_layer):
            cache = PastKeyValues.holding(repeat(self.cache[f"blocks.{l}.attn.k"]),
                                          repeat(self.cache[f"blocks.{l}.attn.v"]), position)
            x = model.blocks[l](x, mask=mask, causal=True, cache=cache, positions=positions)
        logits = softcap(model.lm_head(model.ln_f(x)), model.config.logit_softcap)
        if position:
            before = self.logits[:, :position]
            logits = torch.cat([before.repeat(copies, 1, 1), logits], dim=1)
        return logits


def run_patches(model, inputs: tuple, clean_cache, metric: Metric, patches: Sequence[list[Site]],
                corrupted: Corrupted | None = None, layout: dict | None = None):
    """One forward pass over len(patches) copies of the corrupted input; [(metric value, logits per copy)].

    With `corrupted` (a decoder-only model's corrupted run) the pass starts at the patches' first block
    and position. `layout`: forward's attention_mask or doc_ids (layout_kwargs), for one copy."""
    K = len(patches)
    batch = inputs[0].size(0)
    layer, position = corrupted.start(patches) if corrupted is not None else (0, 0)
    by_hook: dict[str, list[tuple[int, tuple]]] = {}
    for k, patch in enumerate(patches):
        for name, index in patch:
            if position:  # the pass holds positions >= position only: index and clean values shift
                dim = TIME_DIMS[name.split(".", 2)[2]]
                index = (*index[:dim], index[dim] - position, *index[dim + 1:])
            by_hook.setdefault(name, []).append((k, index))

    def setter(activation: torch.Tensor, name: str) -> torch.Tensor:
        clean = clean_cache[name]
        if position:
            dim = TIME_DIMS[name.split(".", 2)[2]] + 1
            clean = clean.narrow(dim, position, clean.size(dim) - position)
        copies = activation.view(K, *clean.shape) if activation.shape[1:] == clean.shape[1:] \
            and activation.size(0) == K * clean.size(0) else None
        if copies is None:
            raise LensError(f"{name} is {tuple(clean.shape)} in the clean run and "
                            f"{(activation.size(0) // K, *activation.shape[1:])} in the corrupted one; "
                            "patching needs inputs of the same shape (pad or crop the prompts).")
        copies = copies.clone()  # (K, B, ...)
        for k, index in by_hook[name]:
            copies[(k, slice(None), *index)] = clean[(slice(None), *index)].to(copies.dtype)
        return copies.view(activation.shape)

    with model.hooks([(list(by_hook), setter)] if by_hook else []):
        if corrupted is not None and (layer or position):
            logits = corrupted.forward(model, layer, position, K)
        else:
            repeated = {key: value.repeat(K, 1) for key, value in (layout or {}).items()}
            logits, _ = model(*(x.repeat(K, *([1] * (x.dim() - 1))) for x in inputs), **repeated)  # copy k: rows kB..
    logits = logits.view(K, batch, *logits.shape[1:])
    return [(float(scalar(metric(logits[k]))), logits[k].numel()) for k in range(K)]


def patch_table(model, corrupted_tokens, clean_cache, patching_metric: Metric, kind: str,
                batch_size: int | None = None, progress: bool = False, stack: str | None = None,
                attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Exact patching of every site of one kind (see KINDS), as a table (layer, ...)."""
    indices, patches = kind_sites(model, kind, clean_cache, stack)
    values = activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patches, batch_size,
                              progress=kind if progress else None, attention_mask=attention_mask, doc_ids=doc_ids)
    shape = [max(ix[d] for ix in indices) + 1 for d in range(len(indices[0]))]
    table = torch.zeros(shape)
    table[tuple(torch.tensor(indices).T)] = values
    return table


def attribution_table(model, corrupted_tokens, clean_cache, patching_metric: Metric, kind: str,
                      stack: str | None = None, attention_mask: torch.Tensor | None = None,
                      doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Attribution patching of every site of one kind (see KINDS): patch_table's table, approximated."""
    return attribution_patch(model, corrupted_tokens, clean_cache, patching_metric, [kind], stack,
                             attention_mask, doc_ids)[kind]


# TransformerLens' names, one pair per kind of KINDS: get_act_patch_KIND (exact), get_attr_patch_KIND (attribution)
def get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, patching_metric,
                            batch_size=None, progress=False, stack=None,
                            attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of the residual stream entering each block: the metric, (layer, pos)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "resid_pre",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_resid_mid(model, corrupted_tokens, clean_cache, patching_metric,
                            batch_size=None, progress=False, stack=None,
                            attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of the residual stream between each block's attention and MLP: the metric, (layer, pos)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "resid_mid",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_out(model, corrupted_tokens, clean_cache, patching_metric,
                           batch_size=None, progress=False, stack=None,
                           attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each attention layer's output: the metric, (layer, pos)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_out",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_mlp_out(model, corrupted_tokens, clean_cache, patching_metric,
                          batch_size=None, progress=False, stack=None,
                          attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each MLP's output: the metric, (layer, pos)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "mlp_out",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                       batch_size=None, progress=False, stack=None,
                                       attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's output (z): the metric, (layer, pos, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_out_by_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_q_by_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                     batch_size=None, progress=False, stack=None,
                                     attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's queries: the metric, (layer, pos, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_q_by_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_k_by_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                     batch_size=None, progress=False, stack=None,
                                     attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's keys: the metric, (layer, pos, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_k_by_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_v_by_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                     batch_size=None, progress=False, stack=None,
                                     attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's values: the metric, (layer, pos, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_v_by_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                        batch_size=None, progress=False, stack=None,
                                        attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's output (z) at every position at once: the metric, (layer, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_out_all_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_q_all_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                      batch_size=None, progress=False, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's queries at every position at once: the metric, (layer, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_q_all_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_k_all_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                      batch_size=None, progress=False, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's keys at every position at once: the metric, (layer, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_k_all_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_v_all_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                      batch_size=None, progress=False, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's values at every position at once: the metric, (layer, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_v_all_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                            batch_size=None, progress=False, stack=None,
                                            attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's whole attention pattern: the metric, (layer, head)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_pattern_all_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                           batch_size=None, progress=False, stack=None,
                                           attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Exact patching of each head's attention pattern, row by row: the metric, (layer, head, dest_pos)."""
    return patch_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_pattern_by_pos",
                       batch_size, progress, stack, attention_mask, doc_ids)


def get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                             attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of the residual stream entering each block: (layer, pos)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "resid_pre", stack, attention_mask,
                             doc_ids)


def get_attr_patch_resid_mid(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                             attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of the residual stream between each block's attention and MLP: (layer, pos)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "resid_mid", stack, attention_mask,
                             doc_ids)


def get_attr_patch_attn_out(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                            attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each attention layer's output: (layer, pos)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_out", stack, attention_mask,
                             doc_ids)


def get_attr_patch_mlp_out(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                           attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each MLP's output: (layer, pos)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "mlp_out", stack, attention_mask,
                             doc_ids)


def get_attr_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                        attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's output (z): (layer, pos, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_out_by_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_q_by_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's queries: (layer, pos, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_q_by_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_k_by_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's keys: (layer, pos, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_k_by_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_v_by_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                      attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's values: (layer, pos, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_v_by_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                         attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's output (z) at every position at once: (layer, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_out_all_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_q_all_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                       attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's queries at every position at once: (layer, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_q_all_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_k_all_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                       attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's keys at every position at once: (layer, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_k_all_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_v_all_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                       attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's values at every position at once: (layer, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_v_all_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                             attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's whole attention pattern: (layer, head)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_pattern_all_pos",
                             stack, attention_mask, doc_ids)


def get_attr_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, patching_metric, stack=None,
                                            attention_mask=None, doc_ids=None) -> torch.Tensor:
    """Attribution patching of each head's attention pattern, row by row: (layer, head, dest_pos)."""
    return attribution_table(model, corrupted_tokens, clean_cache, patching_metric, "attn_head_pattern_by_pos",
                             stack, attention_mask, doc_ids)


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, patching_metric, batch_size=None,
                              progress=False, stack=None, attention_mask=None, doc_ids=None) -> torch.Tensor:
    """resid_pre, attn_out and mlp_out patched at every (layer, pos): (3, layer, pos)."""
    return torch.stack([patch_table(model, corrupted_tokens, clean_cache, patching_metric, kind, batch_size,
                                    progress, stack, attention_mask, doc_ids)
                        for kind in ("resid_pre", "attn_out", "mlp_out")])


def attribution_patch(model, corrupted_tokens, clean_cache, patching_metric: Metric, kinds: Sequence[str],
                      stack: str | None = None, attention_mask: torch.Tensor | None = None,
                      doc_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Attribution patching of several kinds from one forward and one backward pass: kind -> table.

    Each entry is sum over batch and the non-indexed dims of (clean - corrupted) * d metric / d act.
    """
    refuse_training(model, "attribution patching")
    structure = get_stack(model, stack)
    inputs = as_inputs(corrupted_tokens)
    check_lengths(inputs, clean_cache, structure)
    check_mask(attention_mask, inputs, structure, doc_ids)
    for kind in kinds:
        if kind not in KINDS:
            raise LensError(f"unknown patching kind {kind!r}; pick one of {', '.join(KINDS)}.")
    names = sorted({structure.name(l, KINDS[k][0]) for k in kinds for l in range(len(structure.blocks))})
    captured: dict[str, torch.Tensor] = {}

    def capture(activation: torch.Tensor, name: str) -> torch.Tensor | None:
        if not activation.requires_grad:  # nothing upstream needs a gradient: start the graph here
            activation = activation.detach().requires_grad_()
            captured[name] = activation
            return activation
        captured[name] = activation
        return None

    with torch.enable_grad(), model.hooks([(names, capture)]):
        metric = scalar(patching_metric(model(*inputs, **layout_kwargs(attention_mask, doc_ids))[0]))
    if not metric.requires_grad:
        raise LensError("the patching metric does not depend on the logits' gradient graph; compute it from the "
                        "logits with torch operations (no .item() or float()).")
    grads = torch.autograd.grad(metric, [captured[n] for n in names], allow_unused=True)
    tables = {}
    for kind in kinds:
        hook, dims = KINDS[kind]
        per_layer = []
        for l in range(len(structure.blocks)):
            name = structure.name(l, hook)
            grad = grads[names.index(name)]
            corrupted = captured[name].detach()
            if grad is None:
                grad = torch.zeros_like(corrupted)
            product = (clean_cache[name].to(corrupted.dtype) - corrupted) * grad  # (B, ...)
            keep = [d + 1 for d in dims]
            summed = product.sum(dim=[d for d in range(product.dim()) if d not in keep])
            order = sorted(keep)
            per_layer.append(summed.permute([order.index(d) for d in keep]))
        tables[kind] = torch.stack(per_layer).float()
    return tables
