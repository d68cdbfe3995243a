"""The training loop's core, run in-process on a tiny model: precision, compile, optimizer groups, clipping,
the checkpoint policy, --attn_stats_interval, and the GPT-2 initialisation it starts from."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import train
from conftest import copy_dataset
from data.tokenizer import from_meta
from lens.recorder import head_stats_all, stats_table
from model import GPT, GPTConfig, load_checkpoint
from training import distributed
from training.config import TrainConfig
from training.families import FAMILIES, family, model_from_checkpoint

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=2",
        "--log_interval=100", "--warmup_iters=2", "--learning_rate=3e-3", "--device=cpu", "--dtype=float32"]


@pytest.fixture(scope="module")
def data(char_data, tmp_path_factory):
    """A private copy of the char dataset (the session fixture's files stay untouched)."""
    return copy_dataset(char_data, tmp_path_factory.mktemp("loopdata"))


def run(data, out, *args):
    """train.main on the tiny model; returns the metrics rows."""
    train.main([f"--data_dir={data}", f"--out_dir={out}", *TINY, *args])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def grad_norm(optimizer) -> float:
    """The global L2 norm of the gradients the optimizer is about to apply."""
    grads = [p.grad.float() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return math.sqrt(sum(g.square().sum().item() for g in grads))


class RecordingGPT(GPT):
    """A GPT that notes the dtype of its logits in every training forward pass."""

    dtypes: list = []

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.training:
            RecordingGPT.dtypes.append((out[0] if isinstance(out, tuple) else out).dtype)
        return out


class RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that notes whether it is enabled and how often it scales a loss."""

    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaled = 0
        RecordingScaler.made.append(self)

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)


class Steps(list):
    """Gradient norms at each optimizer step; `changed`: whether each step moved the weights."""

    def __init__(self):
        super().__init__()
        self.changed = []


@pytest.fixture
def recorded(monkeypatch):
    """Record the logits' dtype, the GradScaler and the gradient norm at every optimizer step of train.main."""
    RecordingGPT.dtypes, RecordingScaler.made = [], []
    monkeypatch.setitem(FAMILIES, "gpt", dataclasses.replace(FAMILIES["gpt"], model=RecordingGPT))
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    norms, make_optimizer = Steps(), train.make_optimizer

    def make(model, cfg, device):
        optimizer = make_optimizer(model, cfg, device)
        before = []

        def pre(opt, args, kwargs):
            norms.append(grad_norm(opt))
            before[:] = [p.detach().clone() for p in model.parameters()]

        def post(opt, args, kwargs):
            norms.changed.append(any(not torch.equal(a, p) for a, p in zip(before, model.parameters())))

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", make)
    return norms


CLIP = 0.05  # well below this model's gradient norms (0.77 to 1.10 over these steps, measured without clipping)


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                                ("float16", torch.float16)])
def test_dtype_autocast_gradscaler_and_clipping(data, tmp_path, recorded, dtype, torch_dtype):
    rows = run(data, tmp_path / "out", "--max_iters=10", "--eval_interval=10", f"--dtype={dtype}",
               f"--grad_clip={CLIP}")
    assert RecordingGPT.dtypes == [torch_dtype] * 10  # the loop's forward passes ran under autocast(dtype)
    (scaler,) = RecordingScaler.made
    assert scaler.is_enabled() == (dtype == "float16")
    assert scaler.scaled == 10  # every loss went through scaler.scale (a no-op when disabled)
    # gradients are unscaled before they are clipped: the steps apply norms of exactly CLIP, not CLIP / scale
    assert len(recorded) >= 8 and all(n == pytest.approx(CLIP, rel=1e-3) for n in recorded), recorded
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3  # it trains (measured: 4.18 -> 3.7 in all three)
    ckpt = load_checkpoint(str(tmp_path / "out"))
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())  # master weights stay float32


def test_without_clipping_the_gradient_norm_is_larger(data, tmp_path, recorded):
    run(data, tmp_path / "out", "--max_iters=10", "--eval_interval=10", "--grad_clip=0")
    assert len(recorded) == 10 and min(recorded) > 10 * CLIP, recorded


def test_float16_skips_a_step_with_an_infinite_gradient(data, tmp_path, recorded, monkeypatch):
    """The GradScaler path: an overflow skips the step and halves the scale; it is not a divergence."""
    calls = []
    forward = RecordingGPT.forward

    class InfiniteGradient(torch.autograd.Function):
        """Identity forward; an infinite gradient backward (a float16 overflow in the backward pass)."""

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    def overflow_once(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        calls.append(self.training)
        return logits, InfiniteGradient.apply(loss) if sum(calls) == 3 and self.training else loss  # step 3

    monkeypatch.setattr(RecordingGPT, "forward", overflow_once)
    run(data, tmp_path / "out", "--max_iters=5", "--eval_interval=5", "--dtype=float16", "--max_nonfinite_steps=1",
        "--eval_iters=1")
    (scaler,) = RecordingScaler.made
    assert scaler.get_scale() == 2.0 ** 15  # 2 ** 16 halved once
    assert recorded.changed == [True, True, False, True, True]  # the third step left the weights alone


def test_adamw_decays_matrices_and_embeddings_only():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=True,
                          tie_embeddings=False))
    cfg = TrainConfig(weight_decay=0.5, learning_rate=0.1)
    optimizer = train.make_optimizer(model, cfg, "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.5 for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {"wte.weight", "wpe.weight", "lm_head.weight"} | {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert plain == set(names.values()) - decayed  # biases and norm gains
    assert all(n.endswith(".bias") or "ln" in n for n in plain)
    # with zero gradients AdamW moves a parameter only by its decay: p <- p (1 - lr * wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if n in decayed else 1.0
        assert torch.allclose(p.detach(), before[n] * factor, atol=1e-7), n


def test_checkpoint_policy_best_only_and_always(data, tmp_path, monkeypatch):
    """always_save_checkpoint=False saves only on a better val loss; a non-finite one is never saved."""
    saves, save = [], train.save_checkpoint

    def record(payload, path):
        saves.append((payload["iter_num"], payload["best_val_loss"]))
        save(payload, path)

    monkeypatch.setattr(train, "save_checkpoint", record)
    for always, expected in ((False, [(2, 3.0), (6, 2.5)]), (True, [(2, 3.0), (4, 3.0), (6, 2.5)])):
        script = iter([4.0, 3.0, 3.5, 2.5, float("nan")])  # val loss at iterations 0, 2, 4, 6, 8
        monkeypatch.setattr(train, "estimate_loss", lambda *a: dict.fromkeys(("train_loss", "val_loss"), next(script)))
        saves.clear()
        run(data, tmp_path / f"out{always}", "--max_iters=8", "--eval_interval=2",
            f"--always_save_checkpoint={always}")
        assert saves == expected
        assert load_checkpoint(str(tmp_path / f"out{always}"))["iter_num"] == 6


def test_overwrite_replaces_a_checkpoint_only_when_asked(data, tmp_path):
    from model import ConfigError

    out = tmp_path / "out"
    run(data, out, "--max_iters=4", "--eval_interval=2", "--seed=1")
    before = (out / "ckpt.pt").read_bytes()
    with pytest.raises(ConfigError, match="--overwrite=True"):
        run(data, out, "--max_iters=2", "--eval_interval=2", "--seed=2")
    assert (out / "ckpt.pt").read_bytes() == before
    rows = run(data, out, "--max_iters=2", "--eval_interval=2", "--seed=2", "--overwrite=True")
    assert [r["iter"] for r in rows] == [0, 2]  # the old run's metrics are gone too
    ckpt = load_checkpoint(str(out))
    assert ckpt["iter_num"] == 2 and ckpt["train_config"]["seed"] == 2


def test_compile_and_the_keys_it_saves(data, tmp_path, monkeypatch):
    """--compile compiles the model in place; the checkpoint's keys carry no wrapper prefix and resume.

    The eager backend stands in for inductor (which takes minutes to compile on 2 busy CPU cores)."""
    compiled, compile_ = [], nn.Module.compile

    def eager_compile(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return compile_(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    out = tmp_path / "out"
    run(data, out, "--max_iters=2", "--eval_interval=2", "--compile=True")
    assert compiled == ["GPT"]
    ckpt = load_checkpoint(str(out))
    plain = GPT(model_from_checkpoint(ckpt).config)
    assert set(ckpt["model"]) == set(plain.state_dict())  # no _orig_mod. or module. in any key
    rows = run(data, out, "--max_iters=4", "--init_from=resume", "--compile=True")
    assert [r["iter"] for r in rows] == [0, 2, 4] and compiled == ["GPT", "GPT"]


def test_compiled_and_wrapped_state_dicts_load():
    """Keys of torch.compile (`_orig_mod.`), DDP (`module.`), both, and compiled blocks (FSDP's layout)."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 11, (2, 8))
    expected, _ = model(idx)

    ddp_like = nn.Module()
    ddp_like.module = torch.compile(model)  # DDP(torch.compile(model)), as nanoGPT: module._orig_mod.*
    for wrapped, prefix in ((torch.compile(model), "_orig_mod."), (ddp_like, "module._orig_mod.")):
        state = wrapped.state_dict()
        assert all(k.startswith(prefix) for k in state)
        loaded = model_from_checkpoint({"model": state, "model_args": train.to_dict(cfg)}).eval()
        assert torch.equal(loaded(idx)[0], expected), prefix

    blocks = GPT(cfg)  # FSDP with --compile compiles each Block: keys blocks.N._orig_mod.*
    blocks.load_state_dict(model.state_dict())
    for i, block in enumerate(list(blocks.blocks)):
        blocks.blocks[i] = torch.compile(block)
    assert any("._orig_mod." in k for k in blocks.state_dict())
    optimizer = train.make_optimizer(blocks, TrainConfig(), "cpu")
    model_state, optim_state = distributed.full_state(blocks, optimizer)  # what train.py saves
    assert set(model_state) == set(model.state_dict())
    assert torch.equal(model_from_checkpoint({"model": model_state, "model_args": train.to_dict(cfg)}).eval()(idx)[0],
                       expected)
    fresh = GPT(cfg)
    distributed.load_full_state(fresh, train.make_optimizer(fresh, TrainConfig(), "cpu"), model_state, optim_state)
    assert torch.equal(fresh.eval()(idx)[0], expected)


def test_attn_stats_interval_prints_the_model_s_head_statistics(data, tmp_path, capsys):
    out = tmp_path / "out"
    run(data, out, "--max_iters=6", "--eval_interval=3", "--attn_stats_interval=3")
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("attention at step")] == [
        f"attention at step {i}:" for i in (0, 3, 6)]
    # the last table: the saved model (iteration 6) on the first row of the fixed validation batch
    ckpt = load_checkpoint(str(out))
    model = model_from_checkpoint(ckpt).eval()
    tokenizer = from_meta(ckpt["tokenizer"])
    batches = family("gpt").batches(str(data), model.config, 4, "cpu", tokenizer)
    batch = batches.get("val", torch.Generator().manual_seed(TrainConfig().seed + 2))
    _, cache = model.run_with_cache(batch["idx"][:1], names_filter="*attn.pattern")
    assert f"attention at step 6:\n{stats_table(head_stats_all(cache))}\n" in printed
    run(data, tmp_path / "off", "--max_iters=3", "--eval_interval=3")
    assert "attention at step" not in capsys.readouterr().out


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    n_layer = 6
    model = GPT(GPTConfig(n_layer=n_layer, n_head=4, n_embd=128, block_size=64, vocab_size=300, bias=True))
    scaled = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # attention and MLP outputs into the residual stream
            assert p.std().item() == pytest.approx(scaled, rel=0.05), name
        elif name.endswith(".bias"):
            assert (p == 0).all(), name
        elif "ln" in name:
            assert (p == 1).all(), name
        else:  # wte, wpe, c_attn, c_fc
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(p.mean().item()) < 0.002, name
