"""REINFORCE for hard attention: the estimator against the exact gradient of the expected loss, masks, the families."""

import copy

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, HardAttentionConfig, RNNConfig, RNNEncoderDecoder
from model.hard_attention import Hard

S, D, N = 4, 3, 40_000  # keys, value width, sampled sequences


def reinforce(baseline="none", entropy=0.0, temperature=1.0) -> Hard:
    """A REINFORCE hard weighting in training mode."""
    cfg = HardAttentionConfig(estimator="reinforce", baseline=baseline, baseline_momentum=0.9, entropy=entropy,
                              temperature=temperature)
    return Hard(cfg).train()


def enumerable_case(masked_key: int | None = None):
    """Scores of one query over S keys, fixed values and target: loss f(key) = |v_key - target|^2."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.5, -0.3, 1.0, 0.1], requires_grad=True)
    values, target = torch.randn(S, D, generator=gen), torch.randn(D, generator=gen)
    f = ((values - target) ** 2).sum(-1)  # (S,) the loss each choice leads to
    mask = torch.ones(S, dtype=torch.bool)
    if masked_key is not None:
        mask[masked_key] = False
    return theta, values, target, f, mask


def estimate(weighting: Hard, theta, values, target, mask):
    """REINFORCE gradient of the mean loss over N sequences (one choice each); also the per-sequence estimates."""
    scores = theta.masked_fill(~mask, float("-inf")).expand(N, 1, 1, S)  # (N, nh=1, T=1, S)
    weights = weighting(scores)  # one-hot, no gradient through the choice
    loss = (((weights @ values) - target) ** 2).sum(-1).view(N)  # (N,)
    weight = torch.full((N,), 1.0 / N)
    baseline = weighting.baseline.clone() if weighting.use_baseline else torch.tensor(float("nan"))
    term = weighting.reinforce_term(loss, weight)
    assert term.item() == 0.0  # adds nothing to the reported loss
    (loss.mean() + term).backward()
    p = F.softmax(theta.detach().masked_fill(~mask, float("-inf")), -1)
    advantage = loss - (0.0 if baseline.isnan() else baseline)
    per_sequence = advantage[:, None] * (weights.view(N, S) - p)  # (N, S): (f - b) grad log p(choice)
    return theta.grad.clone(), per_sequence, weights.view(N, S)


def exact_gradient(theta, f, mask):
    """d/dtheta of E_{key ~ softmax(theta)}[f(key)] = p * (f - E[f])."""
    p = F.softmax(theta.detach().masked_fill(~mask, float("-inf")), -1)
    expected = (p * f.masked_fill(~mask, 0.0)).sum()
    return p * (f - expected).masked_fill(~mask, 0.0)


@pytest.mark.parametrize("baseline", [None, 1.0, "moving_average"])
def test_reinforce_gradient_matches_the_exact_gradient_of_the_expected_loss(baseline):
    torch.manual_seed(0)
    theta, values, target, f, mask = enumerable_case()
    weighting = reinforce("none" if baseline is None else "moving_average")
    if baseline == 1.0:
        weighting.baseline.fill_(1.0)  # any constant baseline leaves the estimate unbiased
    grad, per_sequence, _ = estimate(weighting, theta, values, target, mask)
    exact = exact_gradient(theta, f, mask)
    torch.testing.assert_close(grad, per_sequence.mean(0), atol=1e-6, rtol=1e-5)  # autograd = the formula
    stderr = per_sequence.std(0) / N ** 0.5
    assert ((grad - exact).abs() < 4 * stderr).all(), (grad, exact, stderr)
    assert exact.norm() > 20 * stderr.norm()  # the exact gradient is far from 0: a sign error would show
    if baseline == "moving_average":  # first step: the baseline starts at the batch's mean loss
        expected = (F.softmax(theta.detach(), -1) * f).sum()
        assert abs(weighting.baseline.item() - expected.item()) < 0.05


def test_a_baseline_cuts_the_variance():
    torch.manual_seed(0)
    theta, values, target, f, mask = enumerable_case()
    _, without, _ = estimate(reinforce("none"), theta, values, target, mask)
    theta.grad = None
    weighting = reinforce("moving_average")
    weighting.baseline.fill_((F.softmax(theta.detach(), -1) * f).sum())  # the expected loss
    _, with_baseline, _ = estimate(weighting, theta, values, target, mask)
    assert with_baseline.var(0).sum() < 0.5 * without.var(0).sum()


def test_masked_keys_are_never_sampled_and_get_no_gradient():
    torch.manual_seed(0)
    theta, values, target, f, mask = enumerable_case(masked_key=2)  # the most likely key, masked
    grad, per_sequence, choices = estimate(reinforce(), theta, values, target, mask)
    assert choices[:, 2].sum() == 0 and (choices.sum(1) == 1).all()
    assert grad[2] == 0.0
    exact = exact_gradient(theta, f, mask)
    assert ((grad - exact).abs() < 4 * per_sequence.std(0) / N ** 0.5 + 1e-9).all()
    frequencies = choices.mean(0)
    torch.testing.assert_close(frequencies, F.softmax(theta.detach().masked_fill(~mask, -float("inf")), -1),
                               atol=0.01, rtol=0)
    weighting = reinforce()
    all_masked = torch.full((2, 1, 3, S), float("-inf"))  # rows of padding
    all_masked[0, 0, 0] = 0.0
    weights = weighting(all_masked)
    assert weights[1].sum() == 0 and weights[0, 0, 1:].sum() == 0 and weights[0, 0, 0].sum() == 1
    assert weighting.log_prob[1] == 0  # a row without keys makes no choice


def test_entropy_bonus_is_the_gradient_of_minus_the_entropy():
    theta, values, target, f, mask = enumerable_case()
    weighting = reinforce("none", entropy=0.3)
    scores = theta.expand(8, 1, 1, S)
    weighting(scores)
    weighting.reinforce_term(torch.zeros(8), torch.full((8,), 1 / 8)).backward()  # zero advantage: entropy only
    p = F.softmax(theta, -1)
    (exact,) = torch.autograd.grad(-0.3 * -(p * p.log()).sum(), theta)
    torch.testing.assert_close(theta.grad, exact)


def test_families_train_the_scores_by_reinforce_and_report_the_plain_loss():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, attn_score="general",
                        attn_weighting="hard", hard_attention=HardAttentionConfig(estimator="reinforce")))
    idx = torch.randint(0, 11, (4, 8))
    logits, loss = gpt(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 11), idx.view(-1)))
    loss.backward()
    score = gpt.blocks[0].attn.scorer.weight
    assert score.grad is not None and score.grad.abs().sum() > 0  # only REINFORCE reaches W: the choice is one-hot
    assert torch.isfinite(gpt.blocks[0].attn.weighting.baseline)
    gpt.eval()
    gpt(idx, idx)
    assert gpt.blocks[0].attn.weighting.log_prob is None  # evaluation samples nothing to learn from
    rnn = RNNEncoderDecoder(RNNConfig(n_embd=16, block_size=8, vocab_size=11, attn_score="general",
                                      attn_weighting="hard", hard_attention=HardAttentionConfig(estimator="reinforce")))
    _, loss = rnn(idx, idx, idx)
    loss.backward()
    assert rnn.decoder.cross_attn.scorer.weight.grad.abs().sum() > 0


def test_a_reinforce_training_step_compiles_as_one_graph_and_equals_eager():
    """The surrogate is part of the family's forward, so fullgraph compile must trace it (baseline included)."""
    torch.manual_seed(0)
    eager = GPT(GPTConfig(n_layer=1, n_head=3, n_embd=15, block_size=8, vocab_size=11, attn_score="general",
                          attn_weighting="hard", hard_attention=HardAttentionConfig(estimator="reinforce")))
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")  # a graph break is an error
    for step in range(3):  # the first step sets the baseline, the next ones use and move it
        idx = torch.randint(0, 11, (4, 8))
        for model, call in ((eager, eager), (twin, compiled)):
            torch.manual_seed(step)  # the same samples in both
            model.zero_grad()
            call(idx, idx)[1].backward()
        torch.testing.assert_close(twin.blocks[0].attn.weighting.baseline, eager.blocks[0].attn.weighting.baseline)
        for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=name)
