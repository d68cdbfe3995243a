"""The modern recipe's options: rotary positions, RMSNorm, QK-norm, relu^2/SwiGLU, zero init, untied
head, logit soft-capping and the Muon optimizer."""

import pytest
import torch

from conftest import run_script
from model import GPT, ConfigError, GPTConfig
from training.config import TrainConfig
from model.attention import Attention, PastKeyValues
from training.config import read_config_file
from model.layers import Block, make_norm
from training.muon import NS_COEFFS, Muon, block_matrices, make_muon_adamw, orthogonalize
from model.rotary import Rotary

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=23, dropout=0.0)
# the model options of config/shakespeare_char_cpu_modern.py, which the tests below check one by one
PRESET = {k: v for k, v in read_config_file("config/shakespeare_char_cpu_modern.py").items()
          if k in GPTConfig.__dataclass_fields__ and k not in ("n_layer", "n_head", "n_embd", "block_size",
                                                               "dropout", "bias")}
CLASSIC = {k: GPTConfig.__dataclass_fields__[k].default for k in PRESET}


def tiny(**kw):
    return GPT(GPTConfig(**{**TINY, **kw}))


def overfit(model, opt, steps: int) -> tuple[float, float]:
    """Train on one fixed batch; return the first loss and the lowest of the last 20 (one step can spike)."""
    idx = torch.randint(0, 23, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-20:])


def test_preset_changes_model_options():
    assert PRESET and PRESET != CLASSIC
    assert read_config_file("config/shakespeare_char_cpu_modern.py")["optimizer"] == "muon"


# ---------------------------------------------------------------------------------------------- rotary


def test_rotary_scores_depend_only_on_relative_position():
    rot = Rotary(head_dim=8, max_len=64)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    scores = rot(q) @ rot(k).transpose(-2, -1)
    for shift in (1, 7, 54):
        shifted = rot(q, offset=shift) @ rot(k, offset=shift).transpose(-2, -1)
        assert torch.allclose(scores, shifted, atol=1e-4)
    # a rotation keeps lengths, and moving the keys alone does change the scores
    assert torch.allclose(rot(q, 5).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(scores, rot(q) @ rot(k, offset=3).transpose(-2, -1), atol=1e-2)


def test_rotary_matches_complex_rotation():
    """Feature pair (i, i + hs/2) at position m is the complex number x_i + j x_{i+hs/2} times e^{j m theta_i}."""
    hs, base = 6, 100.0
    x = torch.randn(1, 1, 5, hs, dtype=torch.float64)
    theta = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    z = torch.complex(x[..., :hs // 2], x[..., hs // 2:]) * torch.exp(1j * torch.arange(3, 8)[:, None] * theta)
    expected = torch.cat([z.real, z.imag], dim=-1)
    assert torch.allclose(Rotary(hs, 16, base)(x.float(), offset=3).double(), expected, atol=1e-5)


def test_rope_attention_is_invariant_to_shifting_all_positions():
    """Prefill a cache with 5 tokens, then attend over 4 more that see only themselves: same as at position 0."""
    att = Attention(GPTConfig(**TINY, pos_emb="rope")).eval()
    x = torch.randn(2, 4, 32)
    plain = att(x, causal=True)
    cache = PastKeyValues(16)
    att(torch.randn(2, 5, 32), causal=True, cache=cache)
    # mask out the 5 cached keys: the new queries see the same 4 keys, now at positions 5..8
    mask = torch.ones(4, 9, dtype=torch.bool).tril(diagonal=5)
    mask[:, :5] = False
    assert torch.allclose(att(x, cache=cache, mask=mask[None, None]), plain, atol=1e-5)


def test_rope_model_has_no_position_table_and_checkpoint_keys_stay_classic():
    assert "wpe.weight" not in tiny(pos_emb="rope").state_dict()
    classic = tiny().state_dict()
    assert "wpe.weight" in classic and not any("norm" in k.split(".")[-2] for k in classic if "attn" in k)
    assert classic["lm_head.weight"].data_ptr() == classic["wte.weight"].data_ptr()


@pytest.mark.parametrize("family", ["bert", "seq2seq"])
def test_encoder_families_take_the_same_options(family):
    from model import BERT, BERTConfig, Seq2Seq, Seq2SeqConfig

    def build(**kw):
        torch.manual_seed(0)
        if family == "bert":
            return BERT(BERTConfig(**TINY, **kw)).eval()
        return Seq2Seq(Seq2SeqConfig(**TINY, source_block_size=12, **kw)).eval()

    def run(model, idx):
        return (model(idx) if family == "bert" else model(idx[:, :12], idx))[0]

    idx = torch.randint(0, 23, (2, 16))
    rope = build(pos_emb="rope")
    assert not any("wpe" in k for k in rope.state_dict())  # rotary positions replace the learned table
    if family == "bert":  # no table, yet order matters: a bag of tokens would just permute its outputs
        with torch.no_grad():
            for p in rope.parameters():
                torch.nn.init.normal_(p, std=0.3)
            perm = torch.randperm(16)
            assert not torch.allclose(run(rope, idx[:, perm]), run(rope, idx)[:, perm], atol=1e-3)
    else:  # cached decoding agrees with recomputing every step
        src = idx[:, :12]
        assert rope.generate(src, 1, 2, max_new_tokens=8) == rope.generate(src, 1, 2, max_new_tokens=8, use_cache=False)
    untied = build(tie_embeddings=False, zero_init=True)
    head = untied.head.decoder if family == "bert" else untied.lm_head
    assert head.weight.data_ptr() != untied.state_dict()["wte.weight" if family == "bert" else "decoder.wte.weight"].data_ptr()
    assert torch.count_nonzero(head.weight) == 0  # an untied head starts at zero with zero_init
    capped, plain = build(logit_softcap=2.0), build()  # the same weights (the cap has no parameters)
    with torch.no_grad():
        for model in (capped, plain):
            for p in model.parameters():
                p.mul_(20)  # large logits, which the cap must bound
        raw = run(plain, idx)
        assert raw.abs().max() > 2.0
        assert torch.allclose(run(capped, idx), 2.0 * torch.tanh(raw / 2.0), atol=1e-5)


@pytest.mark.parametrize("prompt_len,new", [(1, 15), (6, 10), (9, 7)])  # within block_size 16
def test_cached_greedy_equals_uncached_with_the_preset(prompt_len, new):
    model = tiny(**PRESET).eval()
    for p in model.parameters():  # zero-initialised projections would make every token alike
        torch.nn.init.normal_(p, std=0.3)
    idx = torch.randint(0, 23, (2, prompt_len))
    cached = model.generate(idx, new, top_k=1, use_cache=True)
    assert torch.equal(cached, model.generate(idx, new, top_k=1, use_cache=False))


def test_decoder_block_with_cross_attention_caches_rope_and_qk_norm():
    """A seq2seq decoder block: self-attention rotated, cross-attention content-only; step-by-step == at once."""
    cfg = GPTConfig(**{**TINY, **PRESET})
    block = Block(cfg, cross=True).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert block.attn.rotary is not None and block.cross_attn.rotary is None
    assert isinstance(block.cross_attn.k_norm, torch.nn.RMSNorm)
    x, source = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    whole = block(x, causal=True, source=source)
    cache, cross_cache = PastKeyValues(16), PastKeyValues(16)
    steps = [block(x[:, t:t + 1], causal=True, source=source, cache=cache, cross_cache=cross_cache) for t in range(7)]
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)


# ---------------------------------------------------------------------------------------------- norms


def test_rmsnorm_matches_its_definition():
    norm = make_norm(GPTConfig(**TINY, norm="rmsnorm"))
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 32) * 4 + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-5)


def test_qk_norm_normalises_each_head_before_the_scores():
    att = Attention(GPTConfig(**TINY, qk_norm=True)).eval()
    torch.nn.init.normal_(att.q_norm.weight)
    torch.nn.init.normal_(att.k_norm.weight)
    seen = {}
    att.q.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o))
    att.k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))
    x = torch.randn(2, 6, 32)
    y, weights = att(x, causal=True, need_weights=True)
    q, k, _ = att.c_attn(x).split(32, dim=2)
    q, k = (t.view(2, 6, 2, 16).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)

    def rms(t, g):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    q, k = rms(q, att.q_norm.weight), rms(k, att.k_norm.weight)
    assert torch.allclose(seen["q"], q, atol=1e-5) and torch.allclose(seen["k"], k, atol=1e-5)
    scores = (q @ k.transpose(-2, -1) / 4.0).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    assert torch.allclose(weights, scores.softmax(-1), atol=1e-5)
    assert torch.allclose(att(x, causal=True), y, atol=1e-5)  # the SDPA path agrees


# ---------------------------------------------------------------------------------------------- MLP, init, head


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
def test_mlp_activations(activation):
    model = tiny(activation=activation)
    mlp = model.blocks[0].mlp
    x = torch.randn(4, 32)
    h = mlp.c_fc(x)
    if activation == "relu2":
        expected = torch.relu(h) ** 2
    else:
        a, b = h.chunk(2, dim=-1)
        expected = a * torch.sigmoid(a) * b
    assert torch.allclose(mlp.c_proj(expected), mlp(x), atol=1e-5)
    # SwiGLU keeps the plain MLP's parameter count (to a rounding of its hidden width)
    assert abs(sum(p.numel() for p in mlp.parameters()) - 8 * 32 * 32) <= 3 * 32 * 8


def test_zero_init_untied_head_and_softcap():
    model = tiny(zero_init=True, tie_embeddings=False, logit_softcap=5.0)
    for block in model.blocks:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.c_attn.weight.std() > 0.01
    assert not model.lm_head.weight.any() and model.wte.weight.std() > 0.01
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    torch.nn.init.normal_(model.lm_head.weight, std=10.0)
    idx = torch.randint(0, 23, (2, 8))
    logits, _ = model(idx)
    assert 4.0 < logits.abs().max() <= 5.0
    uncapped = tiny(zero_init=True, tie_embeddings=False)
    uncapped.load_state_dict(model.state_dict())
    raw, _ = uncapped(idx)
    assert raw.abs().max() > 10.0 and torch.allclose(logits, 5.0 * torch.tanh(raw / 5.0), atol=1e-5)


# ---------------------------------------------------------------------------------------------- Muon


def svd_reference(G: torch.Tensor, steps: int) -> torch.Tensor:
    """float64: the Newton-Schulz polynomial applied to each singular value, through an SVD."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / G.double().norm()
    a, b, c = NS_COEFFS
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return U @ torch.diag(s) @ Vh


@pytest.mark.parametrize("shape", [(48, 32), (32, 96), (40, 40)])
def test_orthogonalize_matches_float64_reference(shape):
    G = torch.randn(*shape)
    X = orthogonalize(G)
    assert X.dtype == G.dtype and X.shape == G.shape
    assert torch.allclose(X.double(), svd_reference(G, 5), atol=2e-4)
    # and it is close to orthogonal: every singular value near 1 (the quintic stops in [0.7, 1.2])
    s = torch.linalg.svdvals(X.double())
    assert s.min() > 0.6 and s.max() < 1.25
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    cosine = (X.double() * (U @ Vh)).sum() / (X.double().norm() * (U @ Vh).norm())
    assert cosine > 0.97


def test_muon_step_is_the_scaled_orthogonalised_nesterov_momentum():
    w = torch.nn.Parameter(torch.randn(64, 16))
    start = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    g = torch.randn(64, 16)
    w.grad = g.clone()
    opt.step()
    # first step: momentum = g, Nesterov direction g + 0.9 g (NS ignores the scale), sqrt(64/16) = 2
    expected = start * (1 - 0.1 * 0.5) - 0.1 * 2.0 * svd_reference(g, 5).float()
    assert torch.allclose(w.detach(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="matrices only"):
        Muon([torch.nn.Parameter(torch.randn(5))])


def test_muon_takes_block_matrices_and_adamw_the_rest():
    model = tiny(tie_embeddings=False)
    matrices = block_matrices(model)
    assert len(matrices) == TINY["n_layer"] * 4  # c_attn, attn c_proj, c_fc, mlp c_proj
    ids = {id(p) for p in matrices}
    assert id(model.wte.weight) not in ids and id(model.lm_head.weight) not in ids
    opt = make_muon_adamw(model, muon_lr=0.02, adamw_lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert [g["lr_scale"] for g in opt.optimizers["muon"].param_groups] == [20.0]


def test_muon_trains_a_small_model_and_its_state_round_trips():
    torch.manual_seed(0)
    model = tiny(**PRESET).train()
    opt = make_muon_adamw(model, muon_lr=0.02, adamw_lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    first, low = overfit(model, opt, 60)
    assert low < 0.5 and first > 3.0, (first, low)  # from chance (log 23 = 3.1)
    again = make_muon_adamw(model, muon_lr=0.02, adamw_lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    again.load_state_dict(opt.state_dict())
    p = block_matrices(model)[0]
    assert torch.equal(again.optimizers["muon"].state[p]["momentum_buffer"], opt.optimizers["muon"].state[p]["momentum_buffer"])


# ---------------------------------------------------------------------------------------------- combinations


def combinations():
    """(name, model options, optimizer): each preset option alone on the classic model with AdamW, the
    whole preset and the preset less each option with Muon (the preset's optimizer)."""
    cases = [("preset", dict(PRESET), "muon"), ("preset_swiglu", {**PRESET, "activation": "swiglu"}, "muon"),
             ("preset_adamw", dict(PRESET), "adamw")]
    for key, value in PRESET.items():
        cases.append((f"only_{key}", {key: value}, "adamw"))
        cases.append((f"preset_without_{key}", {**PRESET, key: CLASSIC[key]}, "muon"))
    return cases


@pytest.mark.parametrize("options,optimizer", [c[1:] for c in combinations()], ids=[c[0] for c in combinations()])
def test_every_option_combination_overfits_one_batch(options, optimizer):
    torch.manual_seed(0)  # the conftest fixture also runs each test on one thread
    model = tiny(**options).train()
    if optimizer == "muon":
        opt = make_muon_adamw(model, muon_lr=0.03, adamw_lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # 150 steps reach about 0.003 on every combination (0.03 at worst, on one thread or two); 80 steps left
    # some at 0.17 on another CPU's kernels. Chance is log(23) = 3.1; a broken option stays far above 0.1.
    first, low = overfit(model, opt, 150)
    assert low < 0.1 and first > 3.0, (first, low)


# ---------------------------------------------------------------------------------------------- config and train.py


@pytest.mark.parametrize("kw,match", [
    (dict(pos_emb="alibi"), "pos_emb"),
    (dict(pos_emb="rope", n_embd=30, n_head=2), "even"),
    (dict(activation="swish"), "activation"),
    (dict(norm="batchnorm"), "norm"),
    (dict(logit_softcap=-1.0), "logit_softcap"),
    (dict(rope_base=0.5), "rope_base"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**{**TINY, **kw})


def test_train_config_errors():
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="muon_lr"):
        TrainConfig(optimizer="muon", muon_lr=0.0)


def test_train_with_the_preset_resumes_and_refuses_another_optimizer(char_data, tmp_path):
    out = tmp_path / "out"
    small = [f"--data_dir={char_data}", f"--out_dir={out}", "--n_layer=2", "--n_head=2", "--n_embd=32",
             "--batch_size=8", "--eval_iters=5", "--eval_interval=10", "--log_interval=10", "--max_iters=20",
             "--lr_decay_iters=40", "--warmup_iters=5"]
    run_script("train.py", "config/shakespeare_char_cpu_modern.py", *small)
    run_script("train.py", "config/shakespeare_char_cpu_modern.py", *small, "--init_from=resume", "--max_iters=30")
    import json

    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["iter"] for r in rows] == [0, 10, 20, 30]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5, rows  # measured: 4.17 -> 3.11
    # the config file's schedule, resumed: warmup to 3e-3 over 5 iterations, the peak until the cooldown's start
    # (40% of 40 before the end: 24), then linear to min_lr 3e-4 at 40
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 / 6, 3e-3, 3e-3, 3e-3 - 6 / 16 * (3e-3 - 3e-4)], rel=1e-9)
    proc = run_script("train.py", *small, "--init_from=resume", "--optimizer=adamw", "--max_iters=40", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "optimizer=muon" in proc.stderr
    # settings given on resume are the ones used (not the saved optimizer's), as the checkpoint then records
    run_script("train.py", *small, "--init_from=resume", "--max_iters=31", "--muon_lr=0.5", "--weight_decay=0.3")
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    groups, lr = ckpt["optimizer"]["param_groups"], ckpt["train_config"]["learning_rate"]
    assert ckpt["train_config"]["muon_lr"] == 0.5
    assert sorted((g["lr_scale"], g["weight_decay"]) for g in groups) == [(1.0, 0.0), (1.0, 0.3), (0.5 / lr, 0.0)]
    proc = run_script("sample.py", f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=20")
    from data.tokenizer import from_meta
    from model import load_checkpoint
    from training.families import model_from_checkpoint

    ckpt = load_checkpoint(str(out))
    model, tokenizer = model_from_checkpoint(ckpt).eval(), from_meta(ckpt["tokenizer"])
    prompt = torch.tensor([tokenizer.encode("\n")])  # sample.py's defaults: start, temperature, top_k and seed
    expected = model.generate(prompt, 20, 0.8, 200, generator=torch.Generator().manual_seed(1337))
    assert proc.stdout == tokenizer.decode(expected[0].tolist()) + "\n"
