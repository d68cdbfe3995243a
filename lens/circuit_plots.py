"""Figures of edge circuits: faithfulness against circuit size, and a circuit drawn as a graph (matplotlib)."""

import torch

from lens.circuit import Faithfulness, node_of
from lens.edges import EdgeGraph
from lens.report import pyplot

EDGE_COLORS = {"q": "C0", "k": "C2", "v": "C3"}  # an edge into a query, key or value input; others grey


def faithfulness_figure(curves: dict[str, Faithfulness], title: str = "faithfulness"):
    """f against circuit size (fraction of edges, log axis), one line per method, CPR and CMD in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot(curve.sizes * 100, curve.f, marker="o", ms=3,
                label=f"{label} (CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f})")
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (% of edges)")
    ax.set_ylabel("faithfulness f")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def node_positions(graph: EdgeGraph) -> dict[str, tuple[float, float]]:
    """Where each node sits: input at the bottom, a layer's heads then its MLP above, logits on top."""
    n, pos = graph.n_head, {"input": ((graph.n_head - 1) / 2, 0.0), "encoder": (-1.5, 0.0)}
    for name in graph.senders:
        if name.startswith(("a", "x")):
            layer, head = name[1:].split(".h")
            pos[name] = (int(head) + (n + 0.5 if name[0] == "x" else 0), 3 * int(layer) + 1 + (name[0] == "x"))
        elif name.startswith("m"):
            pos[name] = ((n - 1) / 2, 3 * int(name[1:]) + 2.5)
    pos["logits"] = ((n - 1) / 2, 3 * graph.n_layer + 1)
    return pos


def circuit_figure(graph: EdgeGraph, mask: torch.Tensor, values: torch.Tensor | None = None, title: str = "circuit"):
    """The circuit's edges between their nodes, coloured by the receiving input (q, k, v, other), widths by |score|."""
    plt = pyplot()
    pos = node_positions(graph)
    chosen = mask.nonzero().squeeze(1).tolist()
    scale = float(values[chosen].abs().max()) if values is not None and chosen else 1.0
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * graph.n_head + 2), max(4, 1.0 * graph.n_layer + 3)))
    used = {"logits"}
    for e in chosen:
        s, r = graph.edges[e]
        sender, receiver = graph.senders[s], graph.receivers[r]
        used |= {sender, node_of(receiver)}
        (x0, y0), (x1, y1) = pos[sender], pos[node_of(receiver)]
        part = receiver[-2] if receiver.endswith(">") else ""
        width = 0.5 + 3.5 * (abs(float(values[e])) / scale if values is not None and scale > 0 else 1.0)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=EDGE_COLORS.get(part, "0.4"), lw=width, alpha=0.7,
                                    shrinkA=9, shrinkB=9, connectionstyle="arc3,rad=0.08"))
    for name, (x, y) in pos.items():
        if name in used:
            ax.text(x, y, name, ha="center", va="center", fontsize=8, parse_math=False,
                    bbox=dict(boxstyle="round", fc="white", ec="0.3"))
    xs, ys = zip(*pos.values())
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(-0.8, max(ys) + 0.8)
    ax.axis("off")
    legend = [plt.Line2D([], [], color=c, lw=2, label=f"into {p}") for p, c in EDGE_COLORS.items()]
    ax.legend(handles=legend + [plt.Line2D([], [], color="0.4", lw=2, label="into MLP / logits")], fontsize=7,
              loc="upper left")
    ax.set_title(f"{title} ({len(chosen)} of {len(graph)} edges)")
    fig.tight_layout()
    return fig


def top_edges_rows(graph: EdgeGraph, values: torch.Tensor, mask: torch.Tensor) -> list[list]:
    """[rank, edge, score] of the circuit's edges, best first (for report.html_table)."""
    chosen = mask.nonzero().squeeze(1)
    order = chosen[torch.argsort(values[chosen].abs(), descending=True)]
    return [[i + 1, graph.names[e], float(values[e])] for i, e in enumerate(order.tolist())]

