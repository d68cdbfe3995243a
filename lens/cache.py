"""The activation cache: a dict of hook values that knows its model, with TransformerLens' methods.

    (logits, loss), cache = model.run_with_cache(idx)    # forward's pair, and a dict: cache["blocks.0.attn.pattern"]
    resid, labels = cache.accumulated_resid(return_labels=True)   # (n_layer + 1, B, T, C)
    parts, labels = cache.get_full_resid_decomposition(return_labels=True)  # heads, MLPs, embeddings, bias
    attrs = cache.logit_attrs(parts[:, :, -1], idx_next)  # each part's direct effect on the logit

Identities (pre-norm models, in eval mode; tested in tests/test_cache.py):
- the components of `decompose_resid` / `get_full_resid_decomposition` sum to the residual stream;
- `apply_ln_to_stack` applies the final norm with its scale frozen from the run (centring, division by
  the cached scale, the norm's gain; not its bias), so the components' results sum to
  ``ln_f(resid) - ln_f.bias``, and `logit_attrs` of all components sum to
  ``logit[token] - ln_f.bias @ W_U[token]``.
A post-norm model (BERT's default) normalises the sum after every branch: it has no such decomposition.
"""

from dataclasses import dataclass

import torch
from torch import nn

from weights.common import ConfigError, HookNameError

PosSlice = int | slice | list | torch.Tensor | None


class LensError(ConfigError):
    """A question the model's structure cannot answer (e.g. decomposing a post-norm model)."""


@dataclass
class Stack:
    """One stack of blocks: where its hooks live, its final norm and (decoders) its unembedding."""

    prefix: str  # "" (GPT, BERT), "encoder." or "decoder."
    blocks: nn.ModuleList
    ln_f: nn.Module
    unembed: nn.Linear | None  # None: no linear unembedding after ln_f (BERT's MLM head, an encoder)
    causal: bool
    cross: bool = False

    def name(self, layer: int, hook: str) -> str:
        """Full hook name, e.g. name(1, "attn.z") -> "decoder.blocks.1.attn.z"."""
        return f"{self.prefix}blocks.{layer}.{hook}"


def model_stacks(model) -> dict[str, Stack]:
    """The stacks of a model by name: "main" for GPT and BERT, "decoder" and "encoder" for Seq2Seq."""
    if not hasattr(model, "config") or not (hasattr(model, "blocks") or hasattr(model, "decoder")):
        raise LensError(f"{type(model).__name__} is not a headscope family (GPT, BERT, Seq2Seq); "
                        "the cache's methods need one.")
    if hasattr(model, "encoder") and hasattr(model, "decoder"):
        return {"decoder": Stack("decoder.", model.decoder.blocks, model.decoder.ln_f, model.lm_head, True, True),
                "encoder": Stack("encoder.", model.encoder.blocks, model.encoder.ln_f, None, False)}
    unembed = getattr(model, "lm_head", None)  # GPT; BERT's head is dense + activation + norm first
    return {"main": Stack("", model.blocks, model.ln_f, unembed, causal=unembed is not None)}


def get_stack(model, stack: str | None = None) -> Stack:
    """The named stack of a model (None: the one that makes the logits)."""
    stacks = model_stacks(model)
    if stack is None:
        return next(iter(stacks.values()))
    if stack not in stacks:
        raise LensError(f"this model has no {stack!r} stack; pick one of {', '.join(stacks)}.")
    return stacks[stack]


def slice_pos(t: torch.Tensor, pos_slice: PosSlice, dim: int = -2) -> torch.Tensor:
    """Select positions along `dim`: None keeps all, an int removes the dim, a slice or list keeps it."""
    if pos_slice is None:
        return t
    if isinstance(pos_slice, int):
        return t.select(dim, pos_slice)
    if isinstance(pos_slice, slice):
        index = [slice(None)] * t.dim()
        index[dim] = pos_slice
        return t[tuple(index)]
    return t.index_select(dim, torch.as_tensor(pos_slice, device=t.device).long())


def batch_size_hooks(model) -> tuple[list, dict]:
    """([(names, fn)], found): forward hooks on the token embeddings that put the run's batch size in
    found["batch_size"] (TransformerLens' (B, T, C) view of our (T, C) pos_embed needs it)."""
    names = [n for n in model.hook_names() if n == "embed" or n.endswith(".embed")]
    found = {}

    def note(tensor: torch.Tensor, name: str) -> None:
        found["batch_size"] = tensor.size(0)

    return ([(names, note)] if names else []), found


class ActivationCache(dict):
    """Hook name -> detached tensor, plus decompositions of the residual stream (TransformerLens names).

    `stack` picks which stack the methods describe ("decoder" or "encoder" in an encoder-decoder);
    `cache.stack("encoder")` gives the same values seen through the other one.
    """

    def __init__(self, values: dict, model, stack: str | None = None, batch_size: int | None = None):
        super().__init__(values)
        self.model = model
        self.stack_name = stack
        self.batch_size = batch_size  # of the run (run_with_cache notes it): hook_pos_embed's B when embed is left out
        self.training = model.training and getattr(getattr(model, "config", None), "dropout", 0) > 0

    @property
    def structure(self) -> Stack:
        """The described stack (found on first use: any HookedModel's cache works as a plain dict)."""
        return get_stack(self.model, self.stack_name)

    def stack(self, name: str) -> "ActivationCache":
        """The same cached values, with the methods describing stack `name`."""
        return ActivationCache(self, self.model, name, self.batch_size)

    def __missing__(self, key):
        base, grad = (key[:-5], "_grad") if isinstance(key, str) and key.endswith("_grad") else (key, "")
        if isinstance(base, str) and "hook_" in base and hasattr(self.model, "resolve_hook"):
            try:  # a TransformerLens name: blocks.0.attn.hook_z is our blocks.0.attn.z, in TL's layout
                name, head_first = self.model.resolve_hook(base)
            except KeyError:
                name, head_first = None, False
            if name is not None and name + grad in self:
                value = dict.__getitem__(self, name + grad)
                if name.split(".")[-1] == "pos_embed" and value.dim() == 2:
                    return self._batched_positions(name, value, grad)
                return value.transpose(1, 2) if head_first else value
        hint = "it was left out by names_filter; run run_with_cache without it" if key in self.model.hook_names() \
            else "see model.hook_names() for the names"
        raise HookNameError(f"the cache has no {key!r}: {hint}.")

    def _batched_positions(self, name: str, value: torch.Tensor, grad: str) -> torch.Tensor:
        """Our (T, C) position embeddings as TransformerLens' (B, T, C): a broadcast view, B from the cached
        token embeddings. Their gradient per example is the token embeddings' (both are summed into the stream)."""
        embed = name[:-len("pos_embed")] + "embed" + grad
        if not grad and embed not in self and self.batch_size is not None:
            return value.expand(self.batch_size, *value.shape)
        if embed not in self:
            raise LensError(f"hook_pos_embed{grad} is (batch, pos, d_model) in TransformerLens' layout and this cache "
                            f"has no {embed} to give it per example: cache it too, or read {name + grad!r} "
                            "((pos, d_model)).")
        if grad:
            return dict.__getitem__(self, embed)
        return value.expand(dict.__getitem__(self, embed).size(0), *value.shape)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hook values: {', '.join(list(self)[:4])}{', ...' if len(self) > 4 else ''})"

    @property
    def n_layers(self) -> int:
        """Number of blocks in the described stack."""
        return len(self.structure.blocks)

    def _layer(self, layer: int | None) -> int:
        """TransformerLens' layer argument: None or -1 means every block (the input to the unembedding)."""
        if layer is None or layer == -1:
            return self.n_layers
        if not 0 <= layer <= self.n_layers:
            raise LensError(f"layer {layer} is out of range; this stack has layers 0..{self.n_layers} "
                            f"({self.n_layers} = after the last block).")
        return layer

    def _check_additive(self, what: str) -> None:
        if self.model.config.post_norm:
            raise LensError(f"{what} needs a pre-norm model: with post_norm=True every block normalises the "
                            "residual sum, so it is not a sum of components; train with post_norm=False.")
        if self.training:
            raise LensError(f"{what}: the cache was captured in training mode with dropout; call model.eval() "
                            "and run run_with_cache again.")

    def final_resid(self) -> torch.Tensor:
        """The residual stream after the last block (the final norm's input), (B, T, C)."""
        return self[self.structure.name(self.n_layers - 1, "resid_post")]

    def stack_activation(self, activation_name: str, layer: int = -1) -> torch.Tensor:
        """One hook (e.g. "attn.z", "resid_pre") of every block up to `layer`, stacked on a new first dim."""
        return torch.stack([self[self.structure.name(l, activation_name)] for l in range(self._layer(layer))])

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False):
        """The residual stream before each block up to `layer` (and after the last when layer is None), stacked.

        apply_ln at the unembedding applies the final norm to each entry with its own statistics (the
        logit lens); at an inner layer it applies that block's ln_1 with the scale frozen from the run.
        """
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self.n_layers:
                parts.append(self.final_resid())
                labels.append("final_post")
                continue
            parts.append(self[self.structure.name(l, "resid_pre")])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self[self.structure.name(l, "resid_mid")])
                labels.append(f"{l}_mid")
        components = torch.stack([slice_pos(p, pos_slice) for p in parts])  # (n, B, [T], C)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, mlp_input, pos_slice,
                                                recompute_ln=layer == self.n_layers)
        return (components, labels) if return_labels else components

    def _norm_and_input(self, layer: int, mlp_input: bool) -> tuple[nn.Module, torch.Tensor]:
        """The norm that reads the residual stream at `layer` and the cached stream it read."""
        if layer == self.n_layers:
            return self.structure.ln_f, self.final_resid()
        block = self.structure.blocks[layer]
        if not mlp_input:
            return block.ln_1, self[self.structure.name(layer, "resid_pre")]
        if self.structure.cross or block.attn_only:
            raise LensError("mlp_input needs a block whose MLP reads resid_mid (no cross-attention, not attention-only).")
        return block.ln_2, self[self.structure.name(layer, "resid_mid")]

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: PosSlice = None, recompute_ln: bool = False) -> torch.Tensor:
        """Apply the norm that reads the stream at `layer` (None: the final norm) to each component.

        The scale is frozen from the run (so the results add up), the norm's gain is applied and its
        bias is not. `pos_slice` is applied to the cached scale: the stack must already be sliced.
        recompute_ln applies the whole norm (gain and bias) to each component with its own statistics.
        """
        self._check_additive("apply_ln_to_stack")
        layer = self._layer(layer)
        norm, resid = self._norm_and_input(layer, mlp_input)
        if isinstance(norm, nn.Identity):
            return residual_stack
        if recompute_ln:
            with torch.no_grad():
                return norm(residual_stack)
        centre = isinstance(norm, nn.LayerNorm)
        resid = slice_pos(resid, pos_slice)
        if centre:
            resid = resid - resid.mean(-1, keepdim=True)
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        scale = (resid.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()  # (B, [T], 1) frozen from the run
        out = residual_stack / scale
        return out * norm.weight.detach() if norm.weight is not None else out

    def _embeddings(self) -> tuple[list[torch.Tensor], list[str]]:
        """Token and position embeddings, (B, T, C) each; a model without those hooks (BERT) gives its
        block-0 input as one "embed" component."""
        embed_name = self.structure.prefix + "embed"
        if embed_name not in self.model.hook_names():
            return [self[self.structure.name(0, "resid_pre")]], ["embed"]
        parts, labels = [self[embed_name]], ["embed"]
        pos_name = self.structure.prefix + "pos_embed"
        if pos_name in self:  # learned positions (with rope there is no such hook value)
            parts.append(self[pos_name].expand_as(parts[0]))
            labels.append("pos_embed")
        return parts, labels

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: PosSlice = None, incl_embeds: bool = True,
                        return_labels: bool = False):
        """The stream before block `layer` (None: after the last) as embeddings + each attention and MLP output."""
        self._check_additive("decompose_resid")
        if mode not in ("all", "mlp", "attn"):
            raise LensError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}.")
        layer = self._layer(layer)
        parts, labels = self._embeddings() if incl_embeds else ([], [])
        for l in range(layer + 1):
            if l == self.n_layers:
                break
            kinds = [("attn", "attn.out", "attn_out")]
            if self.structure.cross:
                kinds.append(("attn", "cross_attn.out", "cross_out"))
            if not self.structure.blocks[l].attn_only:
                kinds.append(("mlp", "mlp.out", "mlp_out"))
            for kind, hook, label in kinds:
                last = l == layer and not (mlp_input and kind == "attn")
                if mode in ("all", kind) and not last:
                    parts.append(self[self.structure.name(l, hook)])
                    labels.append(f"{l}_{label}")
        components = self._finish(parts, layer, mlp_input, apply_ln, pos_slice)
        return (components, labels) if return_labels else components

    def _finish(self, parts, layer, mlp_input, apply_ln, pos_slice) -> torch.Tensor:
        """Slice positions, stack on a new first dim, apply the frozen norm if asked; no parts: (0, B, [T], C)."""
        if not parts:  # e.g. the heads before block 0: an empty stack of the residual stream's shape
            return slice_pos(self[self.structure.name(0, "resid_pre")], pos_slice)[None][:0]
        components = torch.stack([slice_pos(p, pos_slice) for p in parts])  # (n, B, [T], C)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, mlp_input, pos_slice)
        return components

    def _attention_modules(self, layer: int) -> list[tuple[str, nn.Module, str]]:
        """(hook prefix, module, label prefix) of each attention in block `layer`: self, then cross."""
        block = self.structure.blocks[layer]
        found = [("attn", block.attn, f"L{layer}H")]
        if self.structure.cross:
            found.append(("cross_attn", block.cross_attn, f"L{layer}XH"))
        return found

    def head_results(self, layer: int, cross: bool = False) -> torch.Tensor:
        """Each head's own output of block `layer`: its z times its slice of c_proj, (nh, B, T, C), no bias."""
        module = self.structure.blocks[layer].cross_attn if cross else self.structure.blocks[layer].attn
        z = self[self.structure.name(layer, ("cross_attn" if cross else "attn") + ".z")]  # (B, nh, T, hs)
        weight = module.c_proj.weight.view(-1, module.n_head, module.head_dim)  # (C, nh, hs)
        return torch.einsum("bhtd,chd->hbtc", z, weight.detach().to(z.dtype))

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: PosSlice = None, apply_ln: bool = False):
        """Every head's output in blocks before `layer` (-1: all), labelled L{l}H{h} (cross-attention: L{l}XH{h})."""
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer):
            for hook, module, label in self._attention_modules(l):
                parts.extend(self.head_results(l, cross=hook == "cross_attn"))
                labels.extend(f"{label}{h}" for h in range(module.n_head))
        if incl_remainder:
            self._check_additive("stack_head_results(incl_remainder=True)")
            stream = self.final_resid() if layer == self.n_layers else self[self.structure.name(layer, "resid_pre")]
            parts.append(stream - sum(parts) if parts else stream)
            labels.append("remainder")
        components = self._finish(parts, layer, False, apply_ln, pos_slice)
        return (components, labels) if return_labels else components

    def stack_neuron_results(self, layer: int) -> torch.Tensor:
        """Each MLP neuron's output in block `layer`: its activation times its c_proj column, (n, B, T, C)."""
        mlp = self.structure.blocks[layer].mlp
        post = self[self.structure.name(layer, "mlp.post")]  # (B, T, hidden)
        return torch.einsum("btn,cn->nbtc", post, mlp.c_proj.weight.detach().to(post.dtype))

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False,
                                     pos_slice: PosSlice = None, return_labels: bool = False):
        """The stream before `layer` (None: after the last block) as heads, MLPs (or neurons), embeddings, bias.

        "bias" gathers the output projections' biases (and the MLPs' with expand_neurons).
        """
        self._check_additive("get_full_resid_decomposition")
        layer = self._layer(layer)
        heads, labels = self.stack_head_results(layer + int(mlp_input), return_labels=True)
        parts, bias = list(heads), 0.0
        for l in range(layer + int(mlp_input)):
            for _, module, _ in self._attention_modules(l):
                if module.c_proj.bias is not None:
                    bias = bias + module.c_proj.bias.detach()
        for l in range(layer):
            mlp = getattr(self.structure.blocks[l], "mlp", None)
            if mlp is None:
                continue
            if expand_neurons:
                parts.extend(self.stack_neuron_results(l))
                labels.extend(f"L{l}N{n}" for n in range(mlp.c_proj.in_features))
                bias = bias + (mlp.c_proj.bias.detach() if mlp.c_proj.bias is not None else 0.0)
            else:
                parts.append(self[self.structure.name(l, "mlp.out")])
                labels.append(f"{l}_mlp_out")
        embeds, embed_labels = self._embeddings()
        parts += embeds
        labels += embed_labels
        parts.append(torch.zeros_like(embeds[0]) + bias)
        labels.append("bias")
        components = self._finish(parts, layer, mlp_input, apply_ln, pos_slice)
        return (components, labels) if return_labels else components

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None,
                    pos_slice: PosSlice = None) -> torch.Tensor:
        """Each component's direct effect on the logit of `tokens` (minus `incorrect_tokens`'): (n, B[, T]).

        The stack is normalised by apply_ln_to_stack (frozen final scale; pass the pos_slice the stack
        was cut with) and projected on the unembedding rows. tokens: an int, (B,) or (B, T) ids.
        """
        unembed = self.structure.unembed
        if unembed is None:
            raise LensError("logit attribution needs a linear unembedding after the final norm; this stack has "
                            "none (BERT's MLM head and an encoder are not linear): attribute to the residual stream.")
        if getattr(self.model.config, "logit_softcap", 0) > 0:
            raise LensError("logit_softcap bends the logits (tanh), so component logits do not add up; "
                            "use a model trained with logit_softcap=0.")
        directions = self._directions(tokens, unembed)
        if incorrect_tokens is not None:
            other = self._directions(incorrect_tokens, unembed)
            if other.shape != directions.shape:
                raise LensError(f"tokens and incorrect_tokens must have the same shape, got "
                                f"{tuple(directions.shape[:-1])} and {tuple(other.shape[:-1])}.")
            directions = directions - other
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)  # (n, B, [T], C)
        if directions.dim() == 2 and scaled.dim() == 4:  # one token per batch row, over every position
            directions = directions[:, None]
        return (scaled * directions).sum(-1)

    def _directions(self, tokens, unembed: nn.Linear) -> torch.Tensor:
        """Unembedding rows of token ids: (..., C)."""
        ids = torch.as_tensor(tokens, device=unembed.weight.device).long()
        vocab = unembed.weight.size(0)
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise LensError(f"token ids must be in 0..{vocab - 1}, got {ids.min().item()}..{ids.max().item()}.")
        return unembed.weight[ids].detach()
