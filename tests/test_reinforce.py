"""REINFORCE for hard attention: every baseline and credit against the exact gradient of the expected loss
(the enumerable case), their variance, masks, reach, the families, compile, resume and the option errors."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

import train

from conftest import one_line_error, run_script
from model import (GPT, GPTConfig, HardAttentionConfig, RNNConfig, RNNEncoderDecoder, Seq2Seq, Seq2SeqConfig,
                   load_checkpoint)
from model.hard_attention import Hard, check_options_apply
from model.config import ConfigError
from model.reinforce import reach_of

S, N = 4, 20_000  # keys per query, sampled sequences
REINFORCE = HardAttentionConfig(estimator="reinforce")


def reinforce(baseline="none", entropy=0.0, credit="query", reach="own", samples=1, normalize=False) -> Hard:
    """A REINFORCE hard weighting with one head, in training mode."""
    options = HardAttentionConfig(estimator="reinforce", baseline=baseline, entropy=entropy, credit=credit,
                                  samples=samples, normalize=normalize)
    weighting = Hard(options, n_head=1).train()
    weighting.reinforce_term = functools.partial(weighting.reinforce_term, reach=reach)
    return weighting


def enumerable_case(masked_key: int | None = None):
    """Two queries over S keys: theta (2, S) their scores; f (2, S) the loss target t gets when query t picks
    each key; g (S,) what query 0's pick adds to target 1's loss (a choice that reaches a later target)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.tensor([[0.5, -0.3, 1.0, 0.1], [-0.2, 0.8, 0.0, 0.4]])
    f, g = torch.rand(2, S, generator=gen) * 3, torch.rand(S, generator=gen)
    mask = torch.ones(2, S, dtype=torch.bool)
    if masked_key is not None:
        mask[:, masked_key] = False
    return theta, f, g, mask


def estimate(weighting: Hard, theta, f, g, mask, n: int = N, later: bool = False):
    """REINFORCE gradient of the mean target loss over n sequences; also each sequence's own estimate (n, 2, S)."""
    scores = theta.masked_fill(~mask, float("-inf")).expand(n, 1, 2, S).clone().requires_grad_()
    weights = weighting(scores)  # (n, 1, 2, S) one-hot, no gradient through the choice
    token_loss = (weights[:, 0] * f).sum(-1)  # (n, 2)
    if later:
        token_loss = token_loss + torch.stack([torch.zeros(n), weights[:, 0, 0] @ g], 1)
    term = weighting.reinforce_term(token_loss, torch.ones(n, 2, dtype=torch.bool))
    assert term.item() == 0.0  # adds nothing to the reported loss
    (token_loss.mean() + term).backward()
    rows = scores.grad[:, 0] * n  # each sequence's share, scaled to an estimate of its own
    return rows.mean(0), rows, weights[:, 0]


def exact_gradient(theta, f, g, mask, later: bool = False):
    """d/dtheta of the expected mean loss (two targets): p_t * (f_t - E f_t) / 2 (+ query 0's share of target 1)."""
    p = F.softmax(theta.masked_fill(~mask, float("-inf")), -1)
    loss = f.clone()
    if later:
        loss[0] = loss[0] + g
    loss = loss.masked_fill(~mask, 0.0)
    return p * (loss - (p * loss).sum(-1, keepdim=True)) / 2


def trained_value_head(weighting: Hard, theta, f, g, mask) -> Hard:
    """Fit the learned baseline's value head to the case's rewards (60 steps of Adam)."""
    opt = torch.optim.Adam(weighting.parameters(), lr=0.1)
    for _ in range(60):
        estimate(weighting, theta, f, g, mask, n=128)
        opt.step()
        opt.zero_grad()
    return weighting


BASELINES = {  # name -> a weighting with that baseline, ready to estimate
    "none": lambda case: reinforce("none"),
    "moving_average": lambda case: warmed(reinforce("moving_average"), case),
    "batch": lambda case: reinforce("batch"),
    "samples": lambda case: reinforce("samples", samples=4),
    "learned": lambda case: trained_value_head(reinforce("learned"), *case),
}


def warmed(weighting: Hard, case) -> Hard:
    """A moving-average baseline after a few steps (the first step of a run has none)."""
    for _ in range(20):
        estimate(weighting, *case, n=256)
    return weighting


@pytest.mark.parametrize("baseline", list(BASELINES))
def test_each_baseline_is_unbiased_and_cuts_the_variance(baseline):
    torch.manual_seed(0)
    case = enumerable_case()
    exact = exact_gradient(*case)
    grad, rows, _ = estimate(BASELINES[baseline](case), *case)
    stderr = rows.std(0) / N ** 0.5
    assert ((grad - exact).abs() < 4 * stderr + 1e-7).all(), (grad, exact, stderr)
    assert exact.norm() > 20 * stderr.norm()  # far from 0: a sign error would show
    if baseline != "none":
        _, plain, _ = estimate(reinforce("none"), *case)
        assert rows.var(0).sum() < 0.5 * plain.var(0).sum()


def test_credit_per_query_is_unbiased_and_less_noisy_than_per_sequence():
    torch.manual_seed(0)
    case = enumerable_case()
    exact = exact_gradient(*case)
    per_query, query_rows, _ = estimate(reinforce("none", credit="query"), *case)
    per_sequence, sequence_rows, _ = estimate(reinforce("none", credit="sequence"), *case)
    for grad, rows in ((per_query, query_rows), (per_sequence, sequence_rows)):
        assert ((grad - exact).abs() < 4 * rows.std(0) / N ** 0.5).all()
    assert query_rows.var(0).sum() < 0.7 * sequence_rows.var(0).sum()


def test_a_choice_that_reaches_later_targets_needs_reach_later():
    """Query 0's pick also changes target 1: reach 'later' is unbiased, 'own' (the last layer's) would not be."""
    torch.manual_seed(0)
    case = enumerable_case()
    exact = exact_gradient(*case, later=True)
    grad, rows, _ = estimate(reinforce("batch", reach="later"), *case, later=True)
    assert ((grad - exact).abs() < 4 * rows.std(0) / N ** 0.5 + 1e-7).all()
    wrong, rows, _ = estimate(reinforce("batch", reach="own"), *case, later=True)
    assert ((wrong - exact)[0].abs() > 6 * rows.std(0)[0] / N ** 0.5).any()


def test_credit_own_ignores_later_targets_exact_in_the_last_layer():
    """credit='own' gives each choice its own target's loss whatever the layer's reach: the exact gradient
    where that is all a choice changes, and without query 0's share of target 1 where it changes more."""
    torch.manual_seed(0)
    case = enumerable_case()
    grad, rows, _ = estimate(reinforce("batch", credit="own", reach="own"), *case)
    assert ((grad - exact_gradient(*case)).abs() < 4 * rows.std(0) / N ** 0.5 + 1e-7).all()
    biased, rows, _ = estimate(reinforce("batch", credit="own", reach="later"), *case, later=True)
    stderr = rows.std(0) / N ** 0.5
    assert ((biased - exact_gradient(*case)).abs() < 4 * stderr + 1e-7).all()  # target 1's share is left out
    assert ((biased - exact_gradient(*case, later=True))[0].abs() > 6 * stderr[0]).any()


def test_normalized_advantages_estimate_the_gradient_divided_by_the_running_rms():
    torch.manual_seed(0)
    case = enumerable_case()
    weighting = reinforce("batch", normalize=True)
    estimate(weighting, *case, n=256)  # the first step sets the running RMS
    rms = weighting.advantage_rms.item()
    assert 0.1 < rms < 10
    grad, rows, _ = estimate(weighting, *case)
    exact = exact_gradient(*case)
    assert ((grad * rms - exact).abs() < 4 * rms * rows.std(0) / N ** 0.5).all()


def test_masked_keys_are_never_sampled_and_get_no_gradient():
    torch.manual_seed(0)
    case = enumerable_case(masked_key=2)
    grad, rows, choices = estimate(reinforce("batch"), *case)
    assert choices[..., 2].sum() == 0 and (choices.sum(-1) == 1).all()
    assert (grad[:, 2] == 0).all()
    exact = exact_gradient(*case)
    assert ((grad - exact).abs() < 4 * rows.std(0) / N ** 0.5 + 1e-9).all()
    theta, _, _, mask = case
    torch.testing.assert_close(choices.mean(0), F.softmax(theta.masked_fill(~mask, -float("inf")), -1),
                               atol=0.015, rtol=0)
    weighting = reinforce()
    all_masked = torch.full((2, 1, 3, S), float("-inf"))  # rows of padding
    all_masked[0, 0, 0] = 0.0
    weights = weighting(all_masked)
    assert weights[1].sum() == 0 and weights[0, 0, 1:].sum() == 0 and weights[0, 0, 0].sum() == 1
    assert (weighting.log_prob[1] == 0).all()  # a row without keys makes no choice


def test_entropy_bonus_is_the_gradient_of_minus_the_entropy():
    theta = torch.tensor([0.5, -0.3, 1.0, 0.1], requires_grad=True)
    weighting = reinforce("batch", entropy=0.3)
    weighting(theta.expand(8, 1, 1, S))
    weighting.reinforce_term(torch.zeros(8, 1), torch.ones(8, 1, dtype=torch.bool)).backward()  # entropy only
    p = F.softmax(theta, -1)
    (exact,) = torch.autograd.grad(-0.3 * -(p * p.log()).sum(), theta)
    torch.testing.assert_close(theta.grad, exact)


def test_reach_marks_what_each_choice_can_change():
    """In a causal stack the attention output at query t moves targets t.. (targets t only in the last layer)."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=6, vocab_size=11, attn_weighting="hard",
                        hard_attention=REINFORCE))
    assert [reach_of(gpt, b.attn.weighting) for b in gpt.blocks] == ["later", "own"]
    outputs = []
    with gpt.hooks([("blocks.*.attn.z", lambda z, name: outputs.append(z))]):
        idx = torch.randint(0, 11, (1, 6))
        logits, _ = gpt(idx, idx)
    token_loss = F.cross_entropy(logits[0], torch.randint(0, 11, (6,)), reduction="none")
    for layer, z in enumerate(outputs):
        reached = torch.stack([torch.autograd.grad(token_loss[t], z, retain_graph=True)[0][0].abs().sum((0, 2)) > 0
                               for t in range(6)])  # (target, query)
        expected = torch.eye(6, dtype=torch.bool) if layer == 1 else torch.ones(6, 6).tril().bool()
        assert not (reached & ~expected).any() and reached.diagonal().all(), layer  # hard: a subset of the reach
    rnn = RNNEncoderDecoder(RNNConfig(n_embd=16, block_size=8, vocab_size=11, attn_weighting="hard"))
    assert reach_of(rnn, rnn.decoder.cross_attn.weighting) == "own"
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=2, n_encoder_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11,
                                attn_weighting="hard", cross_attn_weighting="hard"))
    assert [reach_of(s2s, b.cross_attn.weighting) for b in s2s.decoder.blocks] == ["later", "own"]
    assert [reach_of(s2s, b.attn.weighting) for b in s2s.decoder.blocks] == ["later", "own"]
    assert reach_of(s2s, s2s.encoder.blocks[0].attn.weighting) == "all"


def test_families_train_the_scores_by_reinforce_and_report_the_plain_loss():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, attn_score="general",
                        attn_weighting="hard", hard_attention=HardAttentionConfig(estimator="reinforce", baseline="learned")))
    idx = torch.randint(0, 11, (4, 8))
    logits, loss = gpt(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 11), idx.view(-1)))
    loss.backward()
    score = gpt.blocks[0].attn.scorer.weight
    assert score.grad is not None and score.grad.abs().sum() > 0  # only REINFORCE reaches W: the choice is one-hot
    assert all(p.grad.abs().sum() > 0 for p in gpt.blocks[0].attn.weighting.value_head.parameters())
    gpt.eval()
    gpt(idx, idx)
    assert gpt.blocks[0].attn.weighting.log_prob is None  # evaluation samples nothing to learn from
    rnn = RNNEncoderDecoder(RNNConfig(n_embd=16, block_size=8, vocab_size=11, attn_score="general",
                                      attn_weighting="hard", hard_attention=REINFORCE))
    _, loss = rnn(idx, idx, idx)
    loss.backward()
    assert rnn.decoder.cross_attn.scorer.weight.grad.abs().sum() > 0


def test_a_reinforce_training_step_compiles_as_one_graph_and_equals_eager():
    """The surrogate is part of the family's forward, so fullgraph compile must trace it (running statistics included)."""
    torch.manual_seed(0)
    eager = GPT(GPTConfig(n_layer=2, n_head=3, n_embd=15, block_size=8, vocab_size=11, attn_score="general",
                          attn_weighting="hard", hard_attention=HardAttentionConfig(
                              estimator="reinforce", baseline="learned", normalize=True)))
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")  # a graph break is an error
    for step in range(3):  # the first step sets the running statistics, the next ones use and move them
        idx = torch.randint(0, 11, (4, 8))
        for model, call in ((eager, eager), (twin, compiled)):
            torch.manual_seed(step)  # the same samples in both
            model.zero_grad()
            call(idx, idx)[1].backward()
        torch.testing.assert_close(dict(twin.named_buffers()), dict(eager.named_buffers()))
        for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_the_learned_baseline_resumes_exactly(char_data, tmp_path):
    """Value head, its optimizer state and the running statistics go through the checkpoint."""
    common = [f"--data_dir={char_data}", "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
              "--batch_size=4", "--eval_iters=1", "--eval_interval=3", "--log_interval=100", "--warmup_iters=0",
              "--always_save_checkpoint=True", "--attn_weighting=hard", "--hard_attention_estimator=reinforce",
              "--hard_attention_baseline=learned", "--hard_attention_normalize=True", "--lr_decay_iters=6"]
    train.main([f"--out_dir={tmp_path / 'full'}", "--max_iters=6", *common])
    train.main([f"--out_dir={tmp_path / 'split'}", "--max_iters=3", *common])
    train.main([f"--out_dir={tmp_path / 'split'}", "--max_iters=6", "--init_from=resume"])
    full, split = (load_checkpoint(str(tmp_path / d)) for d in ("full", "split"))
    assert any("value_head" in k for k in full["model"]) and any("advantage_rms" in k for k in full["model"])
    for k in full["model"]:
        assert torch.equal(full["model"][k], split["model"][k]), k
    assert full["optimizer"]["state"] and same(full["optimizer"], split["optimizer"])


def same(a, b) -> bool:
    """Whether two nested state dicts hold equal tensors and values."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_reinforce_options_without_reinforce_are_one_clear_error(char_data, tmp_path):
    message = one_line_error(run_script("train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path}",
                                        "--attn_weighting=hard", "--hard_attention_baseline=learned", check=False))
    assert "hard_attention_estimator=reinforce" in message, message
    for option in ("--hard_attention_credit=sequence", "--hard_attention_samples=2", "--hard_attention_normalize=True"):
        with pytest.raises(ConfigError, match="hard_attention_estimator=reinforce"):
            train.load_config([f"--data_dir={char_data}", "--attn_weighting=hard", option])
    with pytest.raises(ConfigError, match="go together"):
        HardAttentionConfig(estimator="reinforce", samples=2)
    check_options_apply(GPTConfig(attn_weighting="hard", hard_attention=REINFORCE))


def test_samples_train_on_each_sequence_that_many_times_in_a_row(char_data, tmp_path, monkeypatch):
    seen = []
    forward = GPT.forward

    def spy(self, idx, targets=None, *args, **kwargs):
        seen.append(idx)
        return forward(self, idx, targets, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", spy)
    train.main([f"--data_dir={char_data}", f"--out_dir={tmp_path}", "--device=cpu", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=16", "--batch_size=3", "--eval_iters=1", "--eval_interval=100",
                "--max_iters=1", "--attn_weighting=hard", "--hard_attention_estimator=reinforce",
                "--hard_attention_baseline=samples", "--hard_attention_samples=2"])
    trained = [idx for idx in seen if idx.size(0) != 3]  # evaluation batches keep their 3 rows
    assert len(trained) == 1 and trained[0].size(0) == 6
    assert torch.equal(trained[0][0::2], trained[0][1::2])  # each sequence twice in a row
