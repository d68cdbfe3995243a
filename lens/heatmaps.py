"""Looking at attention maps: PNG heatmap grids, the HTML viewer (lens/viewer.py), raw maps in .npz.

    views = views_from_maps(cache_or_maps, tokens)      # group layers by stack: self, encoder, cross
    write_attention(out_dir, views)                     # *.png, attention.html, attention.npz

matplotlib is imported only when PNGs are drawn.
"""

import math
import os

import numpy as np

from lens.viewer import TOP_K, viewer_html
from lens.views import AttentionView, display_token, views_from_maps
from weights.common import ConfigError, atomic_write

__all__ = ["AttentionView", "display_token", "views_from_maps", "save_heatmaps", "heatmap_figure", "save_npz",
           "write_attention", "viewer_html"]


# ----------------------------------------------------------------------------------------------
# PNG heatmaps


def save_heatmaps(view: AttentionView, out_dir: str, max_labels: int = 80) -> list[str]:
    """One PNG per layer: a grid with one panel per head, query tokens down, key tokens across."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("matplotlib draws the PNG heatmaps; install it with `pip install matplotlib`.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, maps in view.layers.items():
        fig = heatmap_figure(maps, view.query_tokens, view.key_tokens, f"{view.title}: {name}", max_labels)
        path = os.path.join(out_dir, f"{name}.png")
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def heatmap_figure(maps: np.ndarray, query_tokens: list[str], key_tokens: list[str], title: str,
                   max_labels: int = 80):
    """A matplotlib figure of maps (n_head, T, S): one panel per head, token labels on both axes."""
    import matplotlib.pyplot as plt

    n_head, T, S = maps.shape
    cols = min(n_head, 4)
    rows = math.ceil(n_head / cols)
    panel = min(12.0, max(3.0, 0.14 * max(T, S)))  # inches: room for the labels of long sequences
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.6), squeeze=False)
    font = max(4, min(9, int(700 / max(T, S, 1))))
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        ax.imshow(maps[h], cmap="viridis", vmin=0.0, vmax=max(float(maps[h].max()), 1e-6),
                  interpolation="nearest", aspect="auto")
        ax.set_title(f"head {h}", fontsize=10)
        for axis, tokens, set_ticks, set_labels in ((0, query_tokens, ax.set_yticks, ax.set_yticklabels),
                                                    (1, key_tokens, ax.set_xticks, ax.set_xticklabels)):
            step = math.ceil(len(tokens) / max_labels)
            ticks = list(range(0, len(tokens), step))
            set_ticks(ticks)
            set_labels([display_token(tokens[i]) for i in ticks], fontsize=font, rotation=90 if axis else 0,
                       parse_math=False)  # a token such as "$$" is text, not a formula
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Writing everything


def save_npz(views: list[AttentionView], path: str) -> None:
    """Raw float maps: one array (n_head, T, S) per layer name, plus each view's tokens."""
    arrays = {}
    for i, view in enumerate(views):
        arrays.update({name: maps.astype(np.float32) for name, maps in view.layers.items()})
        arrays[f"view{i}.query_tokens"] = np.array(view.query_tokens, dtype=str)
        arrays[f"view{i}.key_tokens"] = np.array(view.key_tokens, dtype=str)
    with atomic_write(path) as f:  # a temporary file, renamed onto path once whole
        np.savez_compressed(f, **arrays)


def write_attention(out_dir: str, views: list[AttentionView], title: str = "attention",
                    png: bool = True, top_k: int = TOP_K) -> list[str]:
    """Write PNGs (one per layer), attention.html and attention.npz into out_dir; return the paths.
    Each file is written atomically: an interrupted call leaves the previous one whole.

    A long page keeps each query row's top_k weights (lens/viewer.py); attention.npz keeps them all.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if png:
        for view in views:
            paths += save_heatmaps(view, out_dir)
    html_path = os.path.join(out_dir, "attention.html")
    page = viewer_html(views, title, top_k=top_k)
    with atomic_write(html_path, "w") as f:
        f.write(page)
    npz_path = os.path.join(out_dir, "attention.npz")
    save_npz(views, npz_path)
    return paths + [html_path, npz_path]
