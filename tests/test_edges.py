"""Edge attribution patching (lens/edges.py, lens/eap.py, lens/circuit.py) against exact patching and known circuits."""

import pytest
import torch
from torch import nn

from lens.circuit import faithfulness, faithfulness_curve, greedy_circuit, top_circuit
from lens.eap import eap, eap_ig, edge_patching
from lens import circuit, edges
from lens.edges import Circuit, EdgeGraph, Pairs, Plain, edge_forward
from lens.ground_truth import induction_task, recovery, successor_task
from model import BERT, GPT, BERTConfig, GPTConfig, Seq2Seq, Seq2SeqConfig
from lens.cache import LensError
from model.config import RNNConfig
from model.rnn import RNNEncoderDecoder


def randomised(model):
    """Every parameter drawn at random (norm gains and biases too), in eval mode."""
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def tiny_gpt(**overrides):
    config = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=11, block_size=8, bias=True)
    return randomised(GPT(GPTConfig(**{**config, **overrides})))


def run(model, *inputs):
    """The model's logits (its forward returns the pair (logits, loss))."""
    with torch.no_grad():
        return model(*inputs)[0]


def last_logit_diff(logits, batch):
    rows = torch.arange(len(batch.rows))
    return logits[rows, batch.lengths - 1, 3] - logits[rows, batch.lengths - 1, 5]


def ragged_pairs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 8, (n,), generator=g).tolist()
    clean = [torch.randint(0, 11, (k,), generator=g).tolist() for k in lengths]
    return Pairs(clean, [torch.randint(0, 11, (k,), generator=g).tolist() for k in lengths])


def test_graph_names_and_edges():
    graph = EdgeGraph(tiny_gpt())
    assert graph.senders == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert graph.receivers[:6] == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>"]
    assert graph.receivers[-1] == "logits" and len(graph) == 6 * 1 + 3 + 6 * 4 + 6 + 7
    assert graph.names[graph.edge("a0.h1->a1.h0<k>")] == "a0.h1->a1.h0<k>"
    assert graph.edge(("m1", "logits")) == len(graph) - 1


def test_circuit_runs_are_the_model_on_clean_and_corrupted_inputs_full_f_1_empty_f_0():
    model = tiny_gpt(pos_emb="rope", qk_norm=True)
    pairs = ragged_pairs()
    clean, corrupted = pairs.clean[0], pairs.corrupted[0]
    graph = EdgeGraph(model)
    torch.testing.assert_close(edge_forward(graph, (clean,), Plain()), run(model, clean), atol=1e-5, rtol=0)
    result = faithfulness(model, pairs, metric=last_logit_diff, circuits=[torch.ones(len(graph)), torch.zeros(len(graph))],
                          batch_size=2)
    batch = next(pairs.batches(len(pairs)))
    assert result.metric[0] == pytest.approx(float(last_logit_diff(run(model, clean), batch).mean()), abs=1e-5)
    assert result.metric[1] == pytest.approx(float(last_logit_diff(run(model, corrupted), batch).mean()), abs=1e-5)
    assert result.f == pytest.approx([1.0, 0.0], abs=1e-5)


def test_eap_on_a_linear_model_equals_exact_edge_patching():
    model = tiny_gpt()
    for block in model.blocks:  # no norms, identity activations, constant attention patterns: linear in the input
        block.ln_1, block.ln_2, block.mlp.act = nn.Identity(), nn.Identity(), nn.Identity()
        with torch.no_grad():
            block.attn.c_attn.weight[:32] = 0
            block.attn.c_attn.bias[:32] = 0
    model.ln_f = nn.Identity()
    pairs = ragged_pairs()
    approx = eap(model, pairs, metric=last_logit_diff, batch_size=2)
    exact = edge_patching(model, pairs, metric=last_logit_diff, batch_size=2)
    assert exact.values.abs().max() > 0.5
    torch.testing.assert_close(approx.values, exact.values, atol=1e-4, rtol=0)


def test_eap_ig_converges_to_patching_every_input_edge():
    """Integrated gradients are complete: the input's edges sum to the exact effect of patching all of them
    (the whole corrupted input). The error shrinks as 1 / steps: measured 0.036 (EAP), 0.0066, 0.0015 and
    0.00038 at 4, 16 and 64 steps for an effect of 0.133; the test asks for under 1% of it at 64 steps."""
    model, pairs = tiny_gpt(), ragged_pairs()
    graph = EdgeGraph(model)
    from_input = torch.tensor([graph.senders[s] == "input" for s, _ in graph.edges])
    patched = faithfulness(model, pairs, metric=last_logit_diff, circuits=[~from_input], graph=graph)
    exact = patched.metric[0] - patched.full
    errors = {steps: abs(float(eap_ig(model, pairs, metric=last_logit_diff, steps=steps, graph=graph)
                               .values[from_input].sum()) - exact) for steps in (0, 4, 16, 64)}
    assert abs(exact) > 0.1 and errors[64] < 0.01 * abs(exact)
    assert errors[64] < errors[16] < errors[4] < errors[0]


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_shared_norm_gradients_equal_each_receivers_own(norm, monkeypatch):
    """The gradient pass runs a layer's q/k/v receivers through one norm and one projection (NormLinear) and
    the logits' backward at the read positions only (RowsLinear); the scores equal those of a pass keeping
    every receiver's norm apart with autograd's own backward (the metric reads two positions)."""
    model, pairs = tiny_gpt(norm=norm, qk_norm=True), ragged_pairs()
    metric = lambda logits, batch: last_logit_diff(logits, batch) + logits[:, 0, 2]  # noqa: E731
    shared = eap_ig(model, pairs, metric=metric, steps=2).values
    monkeypatch.setattr(edges, "shared_norm", lambda norm: False)
    graph = EdgeGraph(model)
    graph.stack.grad_head = None
    apart = eap_ig(model, pairs, metric=metric, steps=2, graph=graph).values
    assert shared.abs().max() > 0.01
    torch.testing.assert_close(shared, apart, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_circuit_projections_equal_norm_then_project(norm, monkeypatch):
    """A circuit pass projects each receiver's raw input and corrects for the norm on the output
    (normed_projection), and circuits of one batch share memory for their differences; the metrics equal
    those of norming every receiver's input first, each circuit run alone."""
    model, pairs = tiny_gpt(norm=norm, n_layer=3), ragged_pairs()
    graph = EdgeGraph(model)
    g = torch.Generator().manual_seed(3)
    circuits = [torch.rand(len(graph), generator=g) < p for p in (0.3, 0.7, 0.5)]
    together = faithfulness(model, pairs, metric=last_logit_diff, circuits=circuits, batch_size=3, graph=graph)
    monkeypatch.setattr(edges, "shared_norm", lambda norm: False)
    alone = [faithfulness(model, pairs, metric=last_logit_diff, circuits=[c], batch_size=3, graph=graph).metric[0]
             for c in circuits]
    assert len(set(together.metric.round(3))) == 3  # three different circuits
    torch.testing.assert_close(torch.as_tensor(together.metric), torch.as_tensor(alone, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_circuits_compute_only_the_logits_the_metric_reads():
    """A circuit pass computes the logits at the positions where the metric's gradient is not zero (the others
    NaN) when the metric ignores the others (checked with NaN and random values there); the metrics equal
    those of full logits. A metric reading every position, or one whose reads the gradient misses (an argmax),
    gets full logits."""
    model, pairs = tiny_gpt(n_layer=3), ragged_pairs()
    graph = EdgeGraph(model)
    g = torch.Generator().manual_seed(4)
    circuits = [torch.rand(len(graph), generator=g) < p for p in (0.3, 0.6)]
    saw_nan = []

    def watched(logits, batch):
        saw_nan.append(bool(logits.isnan().any()))
        return last_logit_diff(logits, batch)
    rows = faithfulness(model, pairs, metric=watched, circuits=circuits, batch_size=3, graph=graph)
    assert any(saw_nan)
    saw_nan.clear()
    full = faithfulness(model, pairs, metric=watched, circuits=circuits, batch_size=3, graph=graph, all_logits=True)
    assert not any(saw_nan)
    torch.testing.assert_close(torch.as_tensor(rows.metric), torch.as_tensor(full.metric), atol=1e-6, rtol=0)
    logits, batch = run(model, pairs.clean[0]), next(pairs.batches(len(pairs)))
    assert circuit.read_positions(last_logit_diff, logits, batch).sum() == len(pairs)
    assert circuit.read_positions(lambda lg, b: lg.mean((1, 2)), logits, batch) is None
    by_argmax = lambda lg, b: lg[:, 0].gather(1, lg[:, 1].argmax(-1, keepdim=True)).squeeze(1)  # noqa: E731
    assert circuit.read_positions(by_argmax, logits, batch) is None


def test_padded_batches_give_each_pairs_own_scores():
    model, pairs = tiny_gpt(), ragged_pairs(4)
    together = eap_ig(model, pairs, metric=last_logit_diff, steps=2, batch_size=3).values
    alone = [eap_ig(model, Pairs([pairs.clean[0][i, :n]], [pairs.corrupted[0][i, :n]]), metric=last_logit_diff,
                    steps=2).values for i, n in enumerate(pairs.lengths.tolist())]
    torch.testing.assert_close(together, torch.stack(alone).mean(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [induction_task, successor_task])
def test_hand_built_circuits_are_the_top_edges(make):
    task = make(n_pairs=8)
    clean_metric = task.metric(run(task.model, task.pairs.clean[0]), next(task.pairs.batches(8))).mean()
    assert clean_metric > 1.5  # the hand-set weights do the task
    for scores in (eap_ig(task.model, task.pairs, metric=task.metric, steps=5),
                   edge_patching(task.model, task.pairs, metric=task.metric)):
        assert set(scores.top(len(task.true_edges))) == set(task.true_edges), scores.method
        assert recovery(scores, task.true_edges)["auc"] == 1.0
    curve = faithfulness_curve(task.model, task.pairs, metric=task.metric, scores=scores, sizes=(0.0, 0.2, 1.0),
                               method="greedy")
    assert curve.f[0] == pytest.approx(0.0, abs=1e-6) and curve.f[1] > 0.9 and curve.f[2] == pytest.approx(1.0)


def test_circuits_top_and_greedy_connected():
    model, pairs = tiny_gpt(), ragged_pairs()
    scores = eap(model, pairs, metric=last_logit_diff)
    graph = scores.graph
    assert top_circuit(scores, 5).sum() == 5 and set(scores.top(5)) == {graph.names[i] for i in top_circuit(scores, 5).nonzero()}
    mask = greedy_circuit(scores, 8)
    reached = {"logits"}
    for e in mask.nonzero().squeeze(1).tolist():  # in the order added: each edge's receiver is already reached
        s, r = graph.edges[e]
        reached.add(graph.senders[s])
    receivers = {graph.receivers[graph.edges[e][1]].split("<")[0] for e in mask.nonzero().squeeze(1).tolist()}
    assert mask.sum() == 8 and receivers <= reached


def test_bert_and_the_encoder_decoder_have_edge_graphs():
    bert = randomised(BERT(BERTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=8, post_norm=False)))
    ids, other = torch.randint(0, 20, (2, 6)), torch.randint(0, 20, (2, 6))
    graph = EdgeGraph(bert)
    torch.testing.assert_close(edge_forward(graph, (ids,), Plain()), run(bert, ids), atol=1e-5, rtol=0)
    seq = randomised(Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=8, bias=True)))
    src, tgt, src2 = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 6)), torch.randint(0, 20, (2, 5))
    graph = EdgeGraph(seq)
    assert "encoder->x1.h0<k>" in graph.names and "encoder->a0.h0<q>" not in graph.names
    torch.testing.assert_close(edge_forward(graph, (src, tgt), Plain()), run(seq, src, tgt), atol=1e-5, rtol=0)
    pairs = Pairs((src, tgt), (src2, tgt))
    metric = lambda logits, batch: logits[:, -1, 3]  # noqa: E731
    exact = edge_patching(seq, pairs, metric=metric, edges=["encoder->x1.h1<v>", "x1.h1->logits"])
    result = faithfulness(seq, pairs, metric=metric, circuits=[torch.ones(len(graph)), torch.zeros(len(graph))])
    assert result.empty == pytest.approx(float(run(seq, src2, tgt)[:, -1, 3].mean()), abs=1e-5)
    assert result.metric[1] == pytest.approx(result.empty, abs=1e-5) and exact.values.isfinite().sum() == 2


def test_clear_errors():
    graph = EdgeGraph(tiny_gpt())
    with pytest.raises(LensError, match="unknown sender 'a9.h0'"):
        graph.edge("a9.h0->logits")
    with pytest.raises(LensError, match="unknown receiver"):
        graph.edge("a0.h0->a1.h0<z>")
    with pytest.raises(LensError, match="not an edge"):
        graph.edge("a1.h0->a0.h0<k>")
    with pytest.raises(LensError, match="has no edge graph"):
        EdgeGraph(RNNEncoderDecoder(RNNConfig(vocab_size=10)))
    with pytest.raises(LensError, match="post-norm"):
        EdgeGraph(BERT(BERTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=8)))
    with pytest.raises(LensError, match="pair 1 has 3 clean and 4 corrupted tokens"):
        Pairs([[1, 2], [1, 2, 3]], [[3, 4], [1, 2, 3, 4]])
    with pytest.raises(LensError, match="one value per pair"):
        eap(tiny_gpt(), [[1, 2, 3]], [[3, 2, 1]], metric=lambda logits, batch: logits.sum())
