"""Models whose circuit is known, built by hand in headscope's GPT, and how well scores recover it.

    task = induction_task()                 # weights set by hand; task.true_edges is the circuit
    scores = eap(task.model, task.pairs, task.metric)
    recovery(scores, task.true_edges)       # {"tpr", "fpr", "auc", "ranks"}

Both models use RMSNorm (every stream at a position then has the same norm, so the norm is a fixed
scale), no biases and an untied unembedding, with the residual stream cut into subspaces:
TOK (the token, one-hot), POS (the position), PREV (the previous token, written by a layer-0 head),
OUT (the answer, read by the unembedding) and JUNK. Each model has distractor heads (and MLPs) with
random weights that read everything and write only to JUNK: their edges matter only through the
norms' scale, little but not nothing.

- induction: 2 attention-only layers. a0.h0 attends from position p to p - 1 and copies that token into
  PREV; a1.h0's query reads TOK, its key reads PREV (K-composition), its value reads TOK and it writes
  OUT: on [A, A] (A a permutation of the vocabulary) it predicts A's next token in the second half.
- successor: a0.h0 copies the previous token into PREV, the MLP m0 maps PREV_i to OUT_{i+1 mod V}:
  the model predicts the previous token plus one.

The true edges are the ones a clean/corrupted pair can tell apart. The positional routing of a0.h0
(input -> a0.h0<q>, <k>) is part of each mechanism, but both runs share positions, so no patching
method, exact patching included, sees it: it is left out of the true set.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lens.eap import EdgeScores
from lens.edges import Batch, Pairs
from model.config import GPTConfig
from model.gpt import GPT

V, T = 8, 16  # vocabulary, sequence length
TOK, POS, PREV, OUT, JUNK = 0, V, V + T, 2 * V + T, 3 * V + T  # subspace starts; JUNK has V dims
WIDTH = 4 * V + T  # 48


@dataclass
class Task:
    """A hand-built model, a dataset of clean/corrupted pairs, a metric and the true edge names."""

    model: GPT
    pairs: Pairs
    metric: Callable[[torch.Tensor, Batch], torch.Tensor]
    true_edges: list[str]


def blank_gpt(attn_only: bool) -> GPT:
    """A 2-layer, 2-head GPT of width 48 with every weight 0 (RMSNorm gains 1), in eval mode."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=WIDTH, vocab_size=V, block_size=T, dropout=0.0, norm="rmsnorm",
                       bias=False, tie_embeddings=False, attn_only=attn_only, mlp_hidden=2 * V, activation="relu2")
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.zero_()
        model.wte.weight[:, TOK:TOK + V] = torch.eye(V)
        model.wpe.weight[:, POS:POS + T] = torch.eye(T)
        model.lm_head.weight[:, OUT:OUT + V] = 2.0 * torch.eye(V)
    return model


def set_head(model: GPT, layer: int, head: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor) -> None:
    """Set one head's (hs, C) query, key and value maps and its (C, hs) output map."""
    attn = model.blocks[layer].attn
    C, hs = WIDTH, attn.head_dim
    rows = slice(head * hs, (head + 1) * hs)
    with torch.no_grad():
        for j, w in enumerate((q, k, v)):
            attn.c_attn.weight[j * C:(j + 1) * C][rows] = w
        attn.c_proj.weight[:, rows] = o


def map_between(src: int, dst: int, n: int, scale: float, hs: int, shift: int = 0) -> torch.Tensor:
    """(hs, C): residual dims src .. src + n - 1 -> head dims (i + shift) (dropped past n), times scale."""
    w = torch.zeros(hs, WIDTH)
    for i in range(n - shift):
        w[dst + i + shift, src + i] = scale
    return w


def distractors(model: GPT, heads: list[tuple[int, int]], seed: int) -> None:
    """Random heads (and the layer-1 MLP, when there is one) that read everything and write only to JUNK."""
    g = torch.Generator().manual_seed(seed)
    hs = model.config.head_dim
    for layer, head in heads:
        qkv = [torch.randn(hs, WIDTH, generator=g) * 0.3 for _ in range(3)]
        o = torch.zeros(WIDTH, hs)
        o[JUNK:JUNK + V, :V] = torch.randn(V, V, generator=g) * 0.1
        set_head(model, layer, head, *qkv, o)
    if not model.config.attn_only:
        mlp = model.blocks[1].mlp
        with torch.no_grad():
            mlp.c_fc.weight.copy_(torch.randn(mlp.c_fc.weight.shape, generator=g) * 0.3)
            mlp.c_proj.weight[JUNK:JUNK + V] = torch.randn(V, mlp.c_proj.weight.size(1), generator=g) * 0.1


def previous_token_head(model: GPT, scale: float) -> None:
    """a0.h0: from position p to p - 1 (query POS_p -> dim p, key POS_p' -> dim p' + 1), copying TOK into PREV."""
    hs = model.config.head_dim
    pos_gain = 2.0
    o = torch.zeros(WIDTH, hs)
    o[PREV:PREV + V, :V] = torch.eye(V) * scale
    set_head(model, 0, 0, map_between(POS, 0, T, pos_gain, hs), map_between(POS, 0, T, pos_gain, hs, shift=1),
             map_between(TOK, 0, V, 1.0, hs), o)


def induction_task(n_pairs: int = 16, seed: int = 0) -> Task:
    """The hand-built induction model on [A, A] (A a random permutation of the vocabulary) against [B, C]
    (two other permutations); the metric is the mean logit of the right next token over positions 8 .. 14."""
    model = blank_gpt(attn_only=True)
    rms = math.sqrt(2 / WIDTH)  # the stream's RMS before layer 0: two one-hot entries
    previous_token_head(model, scale=rms)
    hs = model.config.head_dim
    o = torch.zeros(WIDTH, hs)
    o[OUT:OUT + V, :V] = torch.eye(V) * math.sqrt(3 / WIDTH)
    set_head(model, 1, 0, map_between(TOK, 0, V, 2.5, hs), map_between(PREV, 0, V, 2.5, hs),
             map_between(TOK, 0, V, 1.0, hs), o)
    distractors(model, [(0, 1), (1, 1)], seed + 1)
    g = torch.Generator().manual_seed(seed)
    halves = [torch.stack([torch.randperm(V, generator=g) for _ in range(n_pairs)]) for _ in range(3)]
    clean = torch.cat([halves[0], halves[0]], dim=1)
    corrupted = torch.cat([halves[1], halves[2]], dim=1)

    def metric(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        positions = torch.arange(V, T - 1)
        answers = batch.clean[0][:, positions + 1]  # (b, 7)
        return logits[:, positions].gather(-1, answers.unsqueeze(-1)).squeeze(-1).mean(1)

    true = ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<q>", "input->a1.h0<v>", "a1.h0->logits"]
    return Task(model, Pairs(clean, corrupted), metric, true)


def successor_task(n_pairs: int = 16, seed: int = 0) -> Task:
    """The hand-built successor model: random sequences against other random sequences; the metric is the
    mean logit of (previous token + 1) mod V over positions 1 .. 15."""
    model = blank_gpt(attn_only=False)
    previous_token_head(model, scale=math.sqrt(2 / WIDTH))
    mlp = model.blocks[0].mlp
    with torch.no_grad():  # hidden unit i fires (value 4) on PREV_i; it writes OUT_{i+1 mod V}
        mlp.c_fc.weight[:V, PREV:PREV + V] = torch.eye(V) * 2 * math.sqrt(3 / WIDTH)
        mlp.c_proj.weight[OUT:OUT + V, :V] = torch.roll(torch.eye(V), 1, dims=0) * 0.25
    distractors(model, [(0, 1), (1, 0), (1, 1)], seed + 1)
    g = torch.Generator().manual_seed(seed)
    clean, corrupted = (torch.randint(0, V, (n_pairs, T), generator=g) for _ in range(2))

    def metric(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        answers = (batch.clean[0][:, :-1] + 1) % V  # (b, T - 1): the answer at positions 1 .. T - 1
        return logits[:, 1:].gather(-1, answers.unsqueeze(-1)).squeeze(-1).mean(1)

    return Task(model, Pairs(clean, corrupted), metric, ["input->a0.h0<v>", "a0.h0->m0", "m0->logits"])


def recovery(scores: EdgeScores, true_edges: list[str]) -> dict:
    """How well |scores| rank the true edges: TPR and FPR of the top len(true) edges, the ROC area (the chance
    that a true edge outranks a false one, ties half) and each true edge's rank."""
    truth = torch.zeros(len(scores.graph), dtype=torch.bool)
    truth[[scores.graph.edge(e) for e in true_edges]] = True
    top = torch.zeros_like(truth)
    top[scores.order()[:len(true_edges)]] = True
    key = scores.values.abs()
    pos, neg = key[truth], key[~truth]
    auc = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    return {"tpr": float((top & truth).sum() / truth.sum()), "fpr": float((top & ~truth).sum() / (~truth).sum()),
            "auc": float(auc), "ranks": {e: scores.rank(e) for e in true_edges}}
