"""The HTML attention viewer: one self-contained page (no network) built from the files in lens/assets/.

    viewer = AttentionViewer(views, title="my prompt")   # views from lens.views.views_from_maps
    viewer.save("attention.html")                        # or display `viewer` in a Jupyter notebook

The page has a model view (every layer x head as a thumbnail, coloured or sorted by a per-head
statistic), a lines view (several heads of a layer overlaid in their colours) and a matrix view.
What it stores is what the eye can see, so that long prompts still open:
- thumbnails: each map mean-pooled to at most THUMB x THUMB cells, each row scaled to its strongest
  cell, one byte per cell;
- the detailed views: every weight when the page is small (all views together hold at most
  DENSE_WEIGHTS weights), else each query row's `top_k` largest; kept weights are exact to 1/65535,
  and the mass each row loses is stored and shown. The exact maps belong in attention.npz.
Style, script and data are inlined into viewer.html; token text reaches the page only as JSON read
with textContent.
"""

import base64
import html
import json
import math
import os
import re

import numpy as np
import torch

from lens.recorder import head_stats
from lens.views import AttentionView
from weights.common import atomic_write

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
THUMB = 64  # thumbnail side, in cells
TOP_K = 8  # weights kept per query row when the page would be too big to keep them all
DENSE_WEIGHTS = 1_000_000  # up to this many weights in all views (at most about 5 MB of page), keep every one
LEVELS = 65535  # kept weights are stored as round(weight * LEVELS) in 16 bits


def read_asset(name: str) -> str:
    """The text of one file in lens/assets/."""
    with open(os.path.join(ASSETS, name), encoding="utf-8") as f:
        return f.read()


def thumbnail(maps: np.ndarray, side: int = THUMB) -> np.ndarray:
    """maps (n_head, T, S) mean-pooled to (n_head, <=side, <=side), each row scaled to its max, as bytes."""
    n_head, T, S = maps.shape
    rows = np.arange(min(T, side)) * T // min(T, side)  # first query row of each cell
    cols = np.arange(min(S, side)) * S // min(S, side)
    summed = np.add.reduceat(np.add.reduceat(maps, rows, axis=1), cols, axis=2)  # (n_head, th, tw)
    counts = np.diff(np.append(rows, T))[:, None] * np.diff(np.append(cols, S))[None, :]  # (th, tw)
    pooled = summed / counts
    top = pooled.max(axis=2, keepdims=True)
    scaled = np.divide(pooled, top, out=np.zeros_like(pooled), where=top > 0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def sparse_rows(maps: np.ndarray, top_k: int | None) -> tuple[np.ndarray, int]:
    """maps (n_head, T, S) as uint16 words: counts (n_head*T), lost mass (n_head*T), keys, weights.

    Row r of head h keeps its `top_k` largest weights (all when None) that do not round to 0, in key
    order; returns the words and the number of weights kept.
    """
    n_head, T, S = maps.shape
    if S > LEVELS:
        raise ValueError(f"the viewer shows at most {LEVELS} keys, got {S}; write attention.npz alone for longer maps.")
    if top_k is None or top_k >= S:
        keys = np.broadcast_to(np.arange(S), maps.shape)
    else:
        keys = np.sort(np.argpartition(-maps, top_k - 1, axis=-1)[..., :top_k], axis=-1)  # (n_head, T, K)
    weights = np.take_along_axis(maps, keys, axis=-1)
    levels = np.rint(np.clip(weights, 0.0, 1.0) * LEVELS).astype(np.uint16)
    kept = levels > 0
    lost = maps.sum(-1) - np.where(kept, weights, 0.0).sum(-1)  # (n_head, T)
    lost = np.rint(np.clip(lost, 0.0, 1.0) * LEVELS).astype(np.uint16)
    words = np.concatenate([kept.sum(-1).astype(np.uint16).ravel(), lost.ravel(), keys[kept].astype(np.uint16),
                            levels[kept]])
    return words.astype("<u2"), int(kept.sum())


def layer_stats(maps: np.ndarray, cross: bool, name: str, scores: dict) -> dict[str, list]:
    """Per-head statistics of one layer (entropy, max, distance, then the caller's scores); NaN or inf -> None."""
    stats = {key: value.tolist() for key, value in head_stats(torch.from_numpy(maps), cross=cross).items()}
    for score, per_layer in scores.items():
        if name in per_layer:
            values = [float(v) for v in per_layer[name]]
            if len(values) != maps.shape[0]:
                raise ValueError(f"score {score!r} of {name} has {len(values)} values for {maps.shape[0]} heads.")
            stats[score] = values
    return {key: [round(v, 4) if math.isfinite(v) else None for v in values] for key, values in stats.items()}


def view_data(view: AttentionView, top_k: int | None, scores: dict) -> dict:
    """One view as the page's JSON: tokens, thumbnails, per-layer weights and statistics, a note."""
    layers, thumbs, kept, lost, rows = [], [], 0, 0.0, 0
    for name, maps in view.layers.items():
        maps = maps.astype(np.float32)
        words, n_kept = sparse_rows(maps, top_k)
        n_rows = maps.shape[0] * maps.shape[1]
        kept, rows = kept + n_kept, rows + n_rows
        lost += float(words[n_rows:2 * n_rows].astype(np.float64).sum()) / LEVELS
        thumbs.append(thumbnail(maps))
        layers.append({"name": name, "n_head": int(maps.shape[0]), "stats": layer_stats(maps, view.cross, name, scores),
                       "weights": base64.b64encode(words.tobytes()).decode("ascii")})
    T, S = len(view.query_tokens), len(view.key_tokens)
    shown = "every weight" if top_k is None or top_k >= S else f"each query row's {top_k} largest weights of {S}"
    note = (f"{shown} kept ({kept:,} in all; weights under {0.5 / LEVELS:.0e} dropped); on average "
            f"{lost / max(rows, 1):.3f} of a row's attention is not shown. Exact maps: attention.npz.")
    th, tw = thumbs[0].shape[1:] if thumbs else (0, 0)
    return {"title": view.title, "queries": view.query_tokens, "keys": view.key_tokens, "note": note,
            "prompt_length": view.prompt_length, "query_documents": view.query_documents,
            "key_documents": view.key_documents,
            "thumb": {"rows": th, "cols": tw, "data": base64.b64encode(np.concatenate(thumbs).tobytes() if thumbs
                                                                        else b"").decode("ascii")},
            "layers": layers}


def viewer_html(views: list[AttentionView], title: str = "attention", top_k: int | None = TOP_K,
                scores: dict[str, dict[str, list[float]]] | None = None) -> str:
    """A self-contained HTML page showing the views (see the module docstring for what it stores).

    `top_k` applies only when all views hold more than DENSE_WEIGHTS weights (None: keep every weight,
    however many); `scores` adds per-head statistics to colour or sort the model view by:
    {score name: {layer name: one value per head}}.
    """
    total = sum(maps.size for view in views for maps in view.layers.values())
    data = [view_data(view, None if total <= DENSE_WEIGHTS else top_k, scores or {}) for view in views]
    payload = json.dumps(data, ensure_ascii=True, allow_nan=False)
    # inside <script>, "</script>" or "<!--" in a token would end or confuse the element: escape the brackets
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fields = {"__TITLE__": html.escape(title), "__DATA__": payload,  # one pass: a title may say "__DATA__"
              "__STYLE__": read_asset("viewer.css"), "__SCRIPT__": read_asset("viewer.js")}
    return re.sub("__TITLE__|__DATA__|__STYLE__|__SCRIPT__", lambda m: fields[m.group()], read_asset("viewer.html"))


class AttentionViewer:
    """The viewer page as an object: `save(path)`, or display it inline in Jupyter (an isolated iframe)."""

    def __init__(self, views: list[AttentionView], title: str = "attention", top_k: int | None = TOP_K,
                 scores: dict[str, dict[str, list[float]]] | None = None, height: int = 640):
        self.views, self.title, self.top_k, self.scores, self.height = views, title, top_k, scores, height

    def html(self) -> str:
        """The whole page."""
        return viewer_html(self.views, self.title, self.top_k, self.scores)

    def save(self, path: str) -> str:
        """Write the page to path (atomically: a temporary file, then a rename); return path."""
        page = self.html()
        with atomic_write(path, "w") as f:
            f.write(page)
        return path

    def _repr_html_(self) -> str:
        # an iframe keeps the page's element ids and script apart from the notebook's (and from other viewers)
        return (f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" style="width: 100%; '
                f'height: {int(self.height)}px; border: 1px solid #ddd" title="{html.escape(self.title)}"></iframe>')
