"""TransformerLens' hook names as aliases of ours, with TransformerLens' layouts (outside the learner's files).

model/__init__.py installs them: ``HookedModel.aliases = TransformerLensNames()`` (model/hooks.py asks it
wherever a name is accepted) and ``HookedModel.add_methods(HookNameMethods)``. So ``blocks.0.attn.hook_z``,
``blocks.0.hook_resid_pre``, ``hook_pos_embed``, ... work in hooks(), capture(), run_with_cache and names
filters. A hook attached by such a name sees q, k, v, z and result in TransformerLens' layout,
(B, T, n_head, d_head); by our name, in ours, (B, n_head, T, d_head). ``hook_pos_embed`` sees (B, T, C), a
broadcast view of ours (``pos_embed``: (T, C), one row per position). Every hook function gets a `HookName`:
a str with TransformerLens' ``.name``, ``.layer()`` and ``.ctx`` (a dict kept per hook point).

Like lens/methods.py, this file imports nothing of model/ (tests/test_layout.py checks it).
"""

import re

import torch

from weights.errors import HookNameError

# (our hook name's ending, TransformerLens' ending): "blocks.0.attn.z" is also "blocks.0.attn.hook_z"
TL_NAMES = (("embed", "hook_embed"), ("pos_embed", "hook_pos_embed"), ("resid_pre", "hook_resid_pre"),
            ("resid_mid", "hook_resid_mid"), ("resid_post", "hook_resid_post"), ("attn.out", "hook_attn_out"),
            ("mlp.out", "hook_mlp_out"), ("attn.q", "attn.hook_q"), ("attn.k", "attn.hook_k"),
            ("attn.v", "attn.hook_v"), ("attn.z", "attn.hook_z"), ("attn.result", "attn.hook_result"),
            ("attn.scores", "attn.hook_attn_scores"), ("attn.pattern", "attn.hook_pattern"),
            ("mlp.post", "mlp.hook_post"))
HEAD_FIRST = ("attn.q", "attn.k", "attn.v", "attn.z", "attn.result")  # (B, nh, T, .) here, (B, T, nh, .) in TL
POS_EMBED = "pos_embed"  # (T, C) here (one row per position), (B, T, C) in TL


def swap_ending(name: str, old: str, new: str) -> str | None:
    """name with its ending `old` (a whole dotted part) replaced by `new`; None if it does not end so."""
    if name == old:
        return new
    return name[:-len(old)] + new if name.endswith("." + old) else None


def renamed(name: str, to_tl: bool) -> str | None:
    """name in the other naming: TransformerLens' for ours (to_tl) or ours for TransformerLens' (a glob too);
    None when it has none."""
    for ours, tl in TL_NAMES:
        found = swap_ending(name, ours, tl) if to_tl else swap_ending(name, tl, ours)
        if found is not None:
            return found
    return None


def ours_from_tl(name: str) -> str | None:
    """Our hook name (or glob) for a TransformerLens one; None when it is not TransformerLens'."""
    return renamed(name, to_tl=False)


def tl_from_ours(name: str) -> str | None:
    """TransformerLens' name for one of ours; None when it has none."""
    return renamed(name, to_tl=True)


def head_first(name: str) -> bool:
    """Whether our hook point `name` holds a (B, n_head, T, .) value (TransformerLens shows it (B, T, n_head, .))."""
    return any(name.endswith("." + ending) for ending in HEAD_FIRST)


class HookName(str):
    """A hook point's name as a hook function gets it: a str, plus TransformerLens' hook attributes."""

    def __new__(cls, name: str, ctx: dict):
        hook = super().__new__(cls, name)
        hook.ctx = ctx  # kept by the hook point until reset_hooks()
        return hook

    @property
    def name(self) -> str:
        return str(self)

    def layer(self) -> int:
        """The block number in the name; a HookNameError for a hook outside the blocks."""
        found = re.search(r"blocks\.(\d+)\.", self)
        if not found:
            raise HookNameError(f"{self} is not inside a block: it has no layer.")
        return int(found.group(1))


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _heads_second(tensor: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, .) as (B, T, nh, .) and back (its own inverse)."""
    return tensor.transpose(1, 2)


class TransformerLensNames:
    """The aliases model/hooks.py's HookedModel asks for (its `aliases`): TransformerLens' names and layouts."""

    hint = "; TransformerLens' names such as blocks.0.attn.hook_z work too"

    def ours(self, name: str) -> str | None:
        """Our hook name (or glob) for a TransformerLens name (or glob); None when it is not one."""
        return ours_from_tl(name) if "hook_" in name else None

    def alias(self, name: str) -> str | None:
        """TransformerLens' name for our hook name; None when it has none."""
        return tl_from_ours(name)

    def label(self, name: str, ctx: dict) -> HookName:
        """The name a hook function gets: with TransformerLens' .name, .layer() and .ctx (the hook point's dict)."""
        return HookName(name, ctx)

    def layout(self, name: str, points: dict) -> tuple:
        """(widen, turn, handles) for a hook attached to our point `name` by its TransformerLens name: the
        position embeddings (T, C) widen to a (B, T, C) broadcast view, B learnt from the `embed` point by the
        forward hook in handles; head-first values turn to (B, T, n_head, .)."""
        embed = swap_ending(name, POS_EMBED, "embed")
        if embed not in points:
            return _same, _heads_second if head_first(name) else _same, []
        batch = {}
        noting = points[embed].register_forward_hook(lambda module, inputs, output: batch.update(size=output.size(0)))

        def widen(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.expand(batch["size"], *tensor.shape) if batch and tensor.dim() == 2 else tensor

        return widen, _same, [noting]


class HookNameMethods:
    """Methods every hooked model gets (model/__init__.py adds them): TransformerLens' names resolved."""

    def resolve_hook(self, name: str) -> tuple[str, bool]:
        """(our name, whether its value is seen in TransformerLens' (B, T, n_head, .) layout) of one exact hook name."""
        ours = ours_from_tl(name) if "hook_" in name else None
        if (ours or name) not in self.hook_points():
            raise HookNameError(f"{name!r} is not a hook point of this model (see model.hook_names()).")
        return ours or name, ours is not None and head_first(ours)
