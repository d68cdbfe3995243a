"""Figures and an offline HTML page for circuit analysis; objects that display inline in Jupyter.

    fig = attribution_figure(labels, attrs)               # matplotlib figures (PNG with fig.savefig)
    page = report_html("title", [("heading", html_table(header, rows)), ("chart", png_img(fig))])
    HTMLView(page)                                         # shown inline in a notebook (_repr_html_)
    AttentionNotebookView(views)                          # the attention viewer inline (in an iframe)

Every piece of text that reaches the page (token strings, labels) goes through html.escape.
"""

import base64
import html
import io

import numpy as np

from lens.viewer import viewer_html
from lens.views import AttentionView, display_token


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported only when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def logit_lens_figure(top: list[list[str]], probs: np.ndarray, row_labels: list[str], tokens: list[str],
                      title: str = "logit lens"):
    """Heatmap (entry x position) of the top token's probability, each cell labelled with that token."""
    plt = pyplot()
    rows, cols = probs.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * cols + 2), max(3, 0.4 * rows + 1.5)))
    ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            ax.text(c, r, display_token(top[r][c])[:8], ha="center", va="center", fontsize=7,
                    color="white" if probs[r, c] > 0.6 else "black", parse_math=False)
    ax.set_yticks(range(rows), row_labels, fontsize=8)
    ax.set_xticks(range(cols), [display_token(t)[:8] for t in tokens], rotation=90, fontsize=8, parse_math=False)
    ax.set_xlabel("input position (its token)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def attribution_figure(labels: list[str], values: np.ndarray, k: int = 20, title: str = "direct logit attribution"):
    """Horizontal bars of the k components with the largest |value|."""
    plt = pyplot()
    order = np.argsort(-np.abs(values))[:k][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(order) + 1.2))
    ax.barh(range(len(order)), values[order], color=["C3" if v < 0 else "C0" for v in values[order]])
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("logit contribution")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def detector_figure(scores: dict[str, np.ndarray], title: str = "head detectors (share of attention)"):
    """One layer x head heatmap per detector score, side by side (0..1)."""
    plt = pyplot()
    n_layer, n_head = next(iter(scores.values())).shape
    fig, axes = plt.subplots(1, len(scores), figsize=(len(scores) * max(2.6, 0.3 * n_head + 1.2), max(2.4, 0.3 * n_layer + 1.4)),
                             squeeze=False)
    for ax, (name, table) in zip(axes[0], scores.items()):
        image = ax.imshow(table, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n_head), [str(h) for h in range(n_head)], fontsize=7)
        ax.set_yticks(range(n_layer), [str(l) for l in range(n_layer)], fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]))
    fig.suptitle(title, fontsize=10)
    return fig


def patching_figure(table: np.ndarray, xlabels: list[str], ylabel: str, xlabel: str, title: str):
    """Heatmap of a patching table (rows: layers), centred on zero."""
    plt = pyplot()
    bound = max(float(np.abs(table).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * table.shape[1] + 2), max(2.5, 0.35 * table.shape[0] + 1.5)))
    image = ax.imshow(table, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(xlabels)), [display_token(x)[:8] for x in xlabels], rotation=90, fontsize=8,
                  parse_math=False)
    ax.set_yticks(range(table.shape[0]), [str(i) for i in range(table.shape[0])], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def png_img(fig, alt: str = "figure") -> str:
    """An <img> element holding the figure as an inline PNG (and the figure closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_table(header: list[str], rows: list[list]) -> str:
    """An HTML table; every cell escaped (floats with 3 decimals)."""
    cell = lambda v: html.escape(f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}img{max-width:100%}")


def report_html(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page: a title, then each (heading, HTML fragment built by this module)."""
    parts = [f"<h2>{html.escape(heading)}</h2>\n{fragment}" for heading, fragment in sections]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "</body></html>")


class HTMLView:
    """HTML shown inline by Jupyter (and its source in .html)."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html


class AttentionNotebookView:
    """The attention viewer inline in a notebook: its page in a sandboxed iframe (scripts run there only)."""

    def __init__(self, views: list[AttentionView], title: str = "attention", height: int = 640):
        self.views, self.title, self.height = views, title, height

    def _repr_html_(self) -> str:
        page = html.escape(viewer_html(self.views, self.title), quote=True)
        return (f'<iframe sandbox="allow-scripts" style="width:100%;height:{self.height}px;border:0" '
                f'srcdoc="{page}"></iframe>')
