"""Circuits from edge scores, and how faithful they are.

    scores = eap_ig(model, pairs, metric)
    curve = faithfulness_curve(model, pairs, metric, scores)    # f at 0.1% .. 100% of the edges
    curve.cpr, curve.cmd                                        # MIB's area under f, area between f and 1
    mask = greedy_circuit(scores, 40)                           # 40 edges, every one connected to the logits

A circuit is a boolean mask over the graph's edges. It runs with every edge outside it patched: its
receiver reads the sender's corrupted value (or its mean over the dataset). Faithfulness
f = (m(circuit) - m(empty)) / (m(full) - m(empty)), m the mean metric over the pairs: 1 when the circuit
does what the model does, 0 when it does what the fully corrupted model does. `cpr` is the area under f
over the circuit sizes (fractions of the edges, trapezoids; higher is better) and `cmd` the area under
|1 - f| (0 is best), as in the Mechanistic Interpretability Benchmark (Mueller et al. 2025).
"""

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from lens.eap import EdgeMetric, EdgeScores, alt_run_logits, check_ablation, mean_activations, metric_values, prepare, record
from lens.edges import Circuit, EdgeGraph, edge_forward, key_mask
from lens.cache import LensError

SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # MIB's circuit sizes, fractions of the edges


def edge_count(graph: EdgeGraph, size: float) -> int:
    """The number of edges of a circuit of `size` (a fraction in [0, 1]); at least 1 for a size above 0."""
    if not 0 <= size <= 1:
        raise LensError(f"circuit sizes are fractions of the edges in [0, 1], got {size!r}.")
    return 0 if size == 0 else max(1, round(size * len(graph)))


def top_circuit(scores: EdgeScores, n: int, absolute: bool = True) -> torch.Tensor:
    """The n best-scoring edges, (E,) bool."""
    mask = torch.zeros(len(scores.graph), dtype=torch.bool)
    mask[scores.order(absolute)[:n]] = True
    return mask


def node_of(receiver: str) -> str:
    """The node a receiver belongs to: a1.h0<k> -> a1.h0."""
    return receiver.split("<")[0]


def greedy_circuit(scores: EdgeScores, n: int, absolute: bool = True) -> torch.Tensor:
    """n edges grown from the logits (Hanna et al. 2024's greedy search): each step adds the best edge whose
    receiver's node is already in the circuit, so every edge has a path to the logits."""
    graph = scores.graph
    key = (scores.values.abs() if absolute else scores.values).tolist()
    into = {}  # node -> edge positions into it
    for e, (s, r) in enumerate(graph.edges):
        into.setdefault(node_of(graph.receivers[r]), []).append(e)
    mask = torch.zeros(len(graph), dtype=torch.bool)
    heap, reached = [], set()

    def reach(node: str) -> None:
        if node not in reached:
            reached.add(node)
            for e in into.get(node, []):
                heapq.heappush(heap, (-key[e], e))

    reach("logits")
    while heap and int(mask.sum()) < n:
        _, e = heapq.heappop(heap)
        mask[e] = True
        reach(graph.senders[graph.edges[e][0]])
    return mask


@dataclass
class Faithfulness:
    """m(circuit) for each circuit, m(full), m(empty) and f; with sizes, the curve's areas."""

    metric: np.ndarray  # (n_circuits,)
    full: float
    empty: float
    sizes: np.ndarray | None = None  # fractions of the edges
    edges: np.ndarray | None = None  # edge counts

    @property
    def f(self) -> np.ndarray:
        """(m(circuit) - m(empty)) / (m(full) - m(empty))."""
        gap = self.full - self.empty
        if gap == 0:
            raise LensError("the metric is the same on the clean and the corrupted inputs, so faithfulness is "
                            "undefined; pick a corruption that changes the metric.")
        return (self.metric - self.empty) / gap

    def area(self, values: np.ndarray) -> float:
        """Trapezoid area over the sizes."""
        x = np.asarray(self.sizes, dtype=float)
        return float(np.sum((x[1:] - x[:-1]) * (values[1:] + values[:-1]) / 2))

    @property
    def cpr(self) -> float:
        """The area under f (MIB's CPR; higher is better)."""
        return self.area(self.f)

    @property
    def cmd(self) -> float:
        """The area under |1 - f| (MIB's CMD; 0 is best)."""
        return self.area(np.abs(1 - self.f))


def faithfulness(model, clean, corrupted=None, metric: EdgeMetric = None, circuits=(), batch_size: int = 32,
                 graph: EdgeGraph | None = None, ablation: str = "corrupted", all_logits: bool = False) -> Faithfulness:
    """m(circuit) for each (E,) bool mask in `circuits`, with m(full) (the clean model) and m(empty) (every edge
    patched: the corrupted model, or every sender at its mean). all_logits=True: circuits compute the logits at
    every position, not only where the metric reads them (read_positions)."""
    graph, pairs = prepare(model, clean, corrupted, graph)
    check_ablation(ablation)
    if metric is None:
        raise LensError("give a metric(logits, batch) -> (b,).")
    masks = [graph.matrix(torch.as_tensor(c, dtype=torch.float32)) for c in circuits]
    if any(torch.as_tensor(c).shape != (len(graph),) for c in circuits):
        raise LensError(f"a circuit is a mask of one value per edge, ({len(graph)},); see top_circuit.")
    device = next(model.parameters()).device
    means = mean_activations(graph, pairs, batch_size) if ablation == "mean" else None
    totals = torch.zeros(len(masks) + 2, dtype=torch.float64)
    for batch in pairs.batches(batch_size, device):
        totals += batch_metrics(graph, batch, metric, masks, ablation, means, all_logits).cpu()
    means_per_pair = (totals / len(pairs)).numpy()
    return Faithfulness(means_per_pair[1:-1], float(means_per_pair[0]), float(means_per_pair[-1]))


def read_positions(metric: EdgeMetric, logits: torch.Tensor, batch) -> torch.Tensor | None:
    """The positions (B, T) whose logits the metric reads, or None for all: those where its gradient on `logits` is
    not zero, accepted only when the metric's value is unchanged with every other position's logits set to NaN
    and, separately, to random values (so a circuit pass may compute the logits at these positions only)."""
    leaf = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        value = metric_values(metric, leaf, batch)
        if not value.requires_grad:
            return None
        (grad,) = torch.autograd.grad(value.sum(), leaf, allow_unused=True)
    if grad is None:
        return None
    rows = grad.ne(0).any(-1)  # (B, T)
    if bool(rows.all()):
        return None
    for fill in (torch.full_like(logits, float("nan")), torch.randn_like(logits)):
        probe = torch.where(rows[..., None], logits.detach(), fill)
        if not torch.equal(metric_values(metric, probe, batch).detach(), value.detach()):
            return None
    return rows


def batch_metrics(graph: EdgeGraph, batch, metric: EdgeMetric, masks: list[torch.Tensor], ablation: str,
                  means, all_logits: bool = False) -> torch.Tensor:
    """Sums over a batch of m(full), m(circuit) for each mask, m(empty). The full model's run is the full
    circuit's when there is one, the empty one's the corrupted run. Circuits compute the logits only at the
    positions the metric reads (read_positions), and again at every position if a value comes out NaN."""
    device = batch.lengths.device
    alt, alt_memory, corrupted_logits = alt_run_logits(graph, batch, ablation, means)
    clean_logits = record(graph, batch.clean, batch)[1]
    clean = metric_values(metric, clean_logits, batch)
    rows = None if all_logits else read_positions(metric, clean_logits, batch)
    runs = [*masks, None if corrupted_logits is not None else torch.zeros(graph.valid.shape)]
    values, alt_sums = [None] * len(runs), alt.cumsum(0)  # the sums are shared by every circuit, and so is
    shared = {}  # the memory for each circuit's differences from alt and its logits
    with torch.no_grad():
        for i, mask in enumerate(runs):
            if mask is None:
                values[i] = metric_values(metric, corrupted_logits, batch)
            elif bool((mask[graph.valid] > 0).all()):  # the full circuit is the clean run
                values[i] = clean
            else:
                for positions in ([rows, None] if rows is not None else [None]):
                    mixer = Circuit(graph, mask.to(device), alt, alt_memory, alt_sums, shared, positions)
                    logits = edge_forward(graph, batch.clean, mixer, keys=key_mask(graph, batch))
                    values[i] = metric_values(metric, logits, batch)
                    if not bool(values[i].isnan().any()):
                        break
    return torch.stack([v.double().sum() for v in [clean, *values]])


def faithfulness_curve(model, clean, corrupted=None, metric: EdgeMetric = None, scores: EdgeScores = None,
                       sizes=SIZES, method: str = "top", absolute: bool = True, batch_size: int = 32,
                       ablation: str = "corrupted", all_logits: bool = False) -> Faithfulness:
    """Faithfulness of the circuits of `scores` at each size (fractions of the edges): method "top" (the best
    edges) or "greedy" (grown from the logits, connected)."""
    if scores is None:
        raise LensError("give the edge scores to build circuits from (eap, eap_ig or edge_patching).")
    builders = {"top": top_circuit, "greedy": greedy_circuit}
    if method not in builders:
        raise LensError(f"method must be one of {', '.join(builders)}, got {method!r}.")
    counts = [edge_count(scores.graph, s) for s in sizes]
    circuits = [builders[method](scores, n, absolute) for n in counts]
    result = faithfulness(model, clean, corrupted, metric, circuits, batch_size, scores.graph, ablation, all_logits)
    result.sizes, result.edges = np.asarray(sizes, dtype=float), np.asarray(counts)
    return result
