"""Scores for every edge of a model's graph (lens/edges.py) over a dataset of clean/corrupted pairs.

    pairs = Pairs(clean_token_lists, corrupted_token_lists)
    metric = lambda logits, batch: logits[range(len(batch.rows)), batch.lengths - 1, answer] - ...   # (b,)
    scores = eap(model, pairs, metric)          # EdgeScores: .values (E,), .names, .top(10), .rank(edge)
    ig = eap_ig(model, pairs, metric, steps=5)
    exact = edge_patching(model, pairs, metric, edges=scores.top(20))

Every score estimates the same quantity, the mean over pairs of metric(clean run with that one edge
corrupted) - metric(clean run): its receiver reads the sender's value of the corrupted run (or, with
ablation="mean", its mean over the dataset's clean runs).

- `eap` (Syed et al. 2023): (a_s(corrupted) - a_s(clean)) . d metric / d input_r on the clean run. One
  forward on the corrupted inputs, one on the clean, one backward for the gradients of every receiver's
  input; then one einsum per group of receivers.
- `eap_ig` (Hanna et al. 2024): the same difference times the gradient averaged over `steps` runs whose
  input embeddings lie on the line from corrupted to clean, k / steps of the way for k = 1 .. steps.
- `edge_patching`: the exact value, one patched copy of the batch per edge (batched along the batch).

The metric takes (logits (b, T, V), Batch) and returns one value per pair, (b,).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lens.edges import Batch, Circuit, EdgeGraph, EdgePatch, Pairs, Recorder, as_pairs, edge_forward, key_mask
from lens.cache import LensError

EdgeMetric = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass
class EdgeScores:
    """One value per edge of `graph` (in graph.edges' order), with lookups by name."""

    graph: EdgeGraph
    values: torch.Tensor  # (E,)
    method: str

    @property
    def names(self) -> list[str]:
        """`sender->receiver` for each value."""
        return self.graph.names

    def __getitem__(self, edge) -> float:
        return float(self.values[self.graph.edge(edge)])

    def order(self, absolute: bool = True) -> torch.Tensor:
        """Edge positions from the highest score down (by |score| unless absolute=False)."""
        key = self.values.abs() if absolute else self.values
        return torch.argsort(key, descending=True, stable=True)

    def top(self, n: int, absolute: bool = True) -> list[str]:
        """The names of the n best edges."""
        return [self.graph.names[i] for i in self.order(absolute)[:n].tolist()]

    def rank(self, edge, absolute: bool = True) -> int:
        """1 for the best edge."""
        return int((self.order(absolute) == self.graph.edge(edge)).nonzero()[0]) + 1

    def matrix(self) -> torch.Tensor:
        """(senders, receivers), nan at the pairs that are not edges."""
        return self.graph.matrix(self.values, fill=float("nan"))


def metric_values(metric: EdgeMetric, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """metric(logits, batch) checked to be one value per pair."""
    value = torch.as_tensor(metric(logits, batch))
    if value.shape != batch.rows.shape:
        raise LensError(f"the metric returned shape {tuple(value.shape)} for {len(batch.rows)} pairs; return one value "
                        "per pair (b,), e.g. logits[rows, batch.lengths - 1, right] - logits[rows, batch.lengths - 1, wrong].")
    return value


def prepare(model, clean, corrupted, graph: EdgeGraph | None) -> tuple[EdgeGraph, Pairs]:
    """The graph (built once) and the dataset."""
    return graph if graph is not None else EdgeGraph(model), as_pairs(clean, corrupted)


def record(graph: EdgeGraph, inputs: tuple, batch: Batch) -> tuple[Recorder, torch.Tensor]:
    """A plain run without gradients: (the recorder holding its senders, logits)."""
    recorder = Recorder()
    with torch.no_grad():
        logits = edge_forward(graph, inputs, recorder, keys=key_mask(graph, batch))
    return recorder, logits


def memory_of(graph: EdgeGraph, inputs: tuple) -> torch.Tensor | None:
    """The encoder output of an encoder-decoder's inputs (None for a decoder-only stack)."""
    if graph.stack.encode is None:
        return None
    with torch.no_grad():
        return graph.stack.encode(inputs)


def mean_activations(graph: EdgeGraph, pairs: Pairs, batch_size: int = 32):
    """Each sender's mean over the clean inputs at each position, (S, 1, T, C) (padding left out), and the
    encoder output's, (1, S_src, C)."""
    total = count = memory = None
    for batch in pairs.batches(batch_size, device=next(graph.stack.blocks.parameters()).device):
        recorder, _ = record(graph, batch.clean, batch)
        senders = recorder.senders(graph)  # (S, b, T, C)
        real = (torch.arange(senders.size(2), device=senders.device)[None] < batch.lengths[:, None]).to(senders.dtype)
        part = (senders * real[None, :, :, None]).sum(1, keepdim=True)
        total = part if total is None else total + part
        count = real.sum(0) if count is None else count + real.sum(0)
        enc = memory_of(graph, batch.clean)
        if enc is not None:
            memory = enc.sum(0, keepdim=True) if memory is None else memory + enc.sum(0, keepdim=True)
    mean_memory = None if memory is None else memory / len(pairs)
    return total / count.clamp(min=1)[None, None, :, None], mean_memory


def group_scores(graph: EdgeGraph, scores: torch.Tensor, diff: torch.Tensor, memory_diff: torch.Tensor | None,
                 grads: Sequence[torch.Tensor]) -> None:
    """Add (alt - clean) . gradient to scores (S, R), one einsum per group of receivers."""
    for group, grad in zip(graph.groups, grads):
        grad = grad.flatten(1)  # (R, B T C)
        if group.kind == "cross_kv":
            scores[1, group.receivers] += grad @ memory_diff.flatten()
        else:
            scores[:group.n_prev, group.receivers] += diff[:group.n_prev].flatten(1) @ grad.T


def gradients(graph: EdgeGraph, batch: Batch, metric: EdgeMetric, input_value: torch.Tensor,
              memory_value: torch.Tensor | None) -> tuple[list[torch.Tensor], Recorder]:
    """d sum(metric) / d every receiver's input, one forward and one backward from the given input embeddings;
    and the run's recorder (its senders)."""
    mixer = Recorder(keep=True)
    with torch.enable_grad():
        input_value = input_value.detach().requires_grad_(True)
        if memory_value is not None:
            memory_value = memory_value.detach().requires_grad_(True)
        logits = edge_forward(graph, batch.clean, mixer, input_value, memory_value, keys=key_mask(graph, batch))
        total = metric_values(lambda lg, b: metric(lg, b), logits, batch).sum()
        if not total.requires_grad:
            raise LensError("the metric's value does not depend on the logits' gradient; compute it from the logits "
                            "with torch operations (no .item(), no argmax).")
        return list(torch.autograd.grad(total, mixer.inputs_kept)), mixer


def alt_run(graph: EdgeGraph, batch: Batch, ablation: str, means) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The senders (S, b|1, T, C) and encoder output that a patched edge carries."""
    return alt_run_logits(graph, batch, ablation, means)[:2]


def alt_run_logits(graph: EdgeGraph, batch: Batch, ablation: str, means):
    """alt_run's senders and encoder output, and the corrupted run's logits (None for mean ablation)."""
    if ablation == "mean":
        return (*means, None)
    recorder, logits = record(graph, batch.corrupted, batch)
    return recorder.senders(graph), memory_of(graph, batch.corrupted), logits


def check_ablation(ablation: str) -> None:
    """A LensError unless ablation is corrupted or mean."""
    if ablation not in ("corrupted", "mean"):
        raise LensError(f"ablation must be 'corrupted' or 'mean', got {ablation!r}.")


def eap(model, clean, corrupted=None, metric: EdgeMetric = None, batch_size: int = 32, graph: EdgeGraph | None = None,
        ablation: str = "corrupted") -> EdgeScores:
    """Edge attribution patching: every edge's score from one corrupted forward, one clean forward and one
    backward per batch (the mean over pairs; see the module docstring)."""
    return eap_ig(model, clean, corrupted, metric, steps=0, batch_size=batch_size, graph=graph, ablation=ablation)


def eap_ig(model, clean, corrupted=None, metric: EdgeMetric = None, steps: int = 5, batch_size: int = 32,
           graph: EdgeGraph | None = None, ablation: str = "corrupted") -> EdgeScores:
    """EAP with integrated gradients (Hanna et al. 2024): the gradients averaged over `steps` points on the
    line from the corrupted input embeddings (and encoder output) to the clean ones; steps=0 is plain EAP."""
    graph, pairs = prepare(model, clean, corrupted, graph)
    check_ablation(ablation)
    if metric is None or not isinstance(steps, int) or steps < 0:
        raise LensError("give a metric(logits, batch) -> (b,) and steps >= 1 (a whole number).")
    device = next(model.parameters()).device
    means = mean_activations(graph, pairs, batch_size) if ablation == "mean" else None
    scores = torch.zeros(graph.valid.shape, device=device)
    for batch in pairs.batches(batch_size, device):
        alt, alt_memory = alt_run(graph, batch, ablation, means)
        with torch.no_grad():
            clean_input = graph.stack.embed(batch.clean)  # (b, T, C)
        clean_memory = memory_of(graph, batch.clean)
        points = [1.0] if steps == 0 else [k / steps for k in range(1, steps + 1)]
        total = None
        for alpha in points:  # the last point (alpha 1) is the clean run: its senders give the differences
            x = alt[0] + alpha * (clean_input - alt[0])
            memory = None if clean_memory is None else alt_memory + alpha * (clean_memory - alt_memory)
            grads, run = gradients(graph, batch, metric, x, memory)
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        memory_diff = None if clean_memory is None else alt_memory - clean_memory
        group_scores(graph, scores, alt - run.senders(graph), memory_diff, [t / len(points) for t in total])
    return EdgeScores(graph, (scores / len(pairs))[graph.valid.to(device)].cpu(), "eap" if steps == 0 else f"eap_ig{steps}")


def edge_list(graph: EdgeGraph, edges) -> list[int]:
    """Edge positions from names, (sender, receiver) pairs or positions; None: every edge."""
    if edges is None:
        return list(range(len(graph)))
    return [e if isinstance(e, int) else graph.edge(e) for e in edges]


def repeat_rows(batch: Batch, copies: int) -> tuple:
    """The clean inputs repeated `copies` times along the batch."""
    return tuple(p.repeat(copies, *([1] * (p.dim() - 1))) for p in batch.clean)


def edge_patching(model, clean, corrupted=None, metric: EdgeMetric = None, edges=None, batch_size: int = 32,
                  graph: EdgeGraph | None = None, ablation: str = "corrupted", copies: int | None = None) -> EdgeScores:
    """The exact effect of corrupting each edge alone (the mean over pairs of metric(patched) - metric(clean)),
    for `edges` (names, pairs or positions; default every edge). Edges not asked for score nan.

    `copies` patched copies of a batch share one forward pass (default: about 2^25 logits per pass).
    """
    graph, pairs = prepare(model, clean, corrupted, graph)
    check_ablation(ablation)
    if metric is None:
        raise LensError("give a metric(logits, batch) -> (b,).")
    chosen = edge_list(graph, edges)
    device = next(model.parameters()).device
    means = mean_activations(graph, pairs, batch_size) if ablation == "mean" else None
    effects = torch.zeros(len(chosen), dtype=torch.float64)
    for batch in pairs.batches(batch_size, device):
        alt, alt_memory = alt_run(graph, batch, ablation, means)
        run, logits = record(graph, batch.clean, batch)
        base = metric_values(metric, logits, batch).detach()
        clean_memory = memory_of(graph, batch.clean)
        size = copies or max(1, (1 << 25) // logits.numel())
        for start in range(0, len(chosen), size):
            todo = [graph.edges[e] for e in chosen[start:start + size]]
            mixer = EdgePatch(graph, todo, run.senders(graph), alt, clean_memory, alt_memory)
            inputs = repeat_rows(batch, len(todo))
            memory = None if clean_memory is None else clean_memory.repeat(len(todo), 1, 1)
            with torch.no_grad():
                patched = edge_forward(graph, inputs, mixer, memory_value=memory, keys=key_mask(graph, batch, len(todo)))
            for k, part in enumerate(patched.split(len(batch.rows))):
                effects[start + k] += float((metric_values(metric, part, batch) - base).sum())
    values = torch.full((len(graph),), float("nan"))
    values[chosen] = (effects / len(pairs)).float()
    return EdgeScores(graph, values, "exact")
