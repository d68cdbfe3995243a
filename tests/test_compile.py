"""CPU proxies of the GPU paths: torch.compile (inductor on the CPU) and bf16 autocast.

Compiling is the slow part (inductor writes and builds C++ kernels; a cold cache takes a minute or
more on 2 busy cores), so each family is compiled once, at one tiny size shared by all three (many
kernels are then cache hits), and the compiled step is reused. fullgraph=True makes any graph break
in the forward pass an error, so "compiles" here also means "one graph, no Python fallback".
"""

import pytest
import torch

from conftest import run_script
from model import BERT, GPT, BERTConfig, GPTConfig, Seq2Seq, Seq2SeqConfig, load_checkpoint
from test_train import SMALL, metrics

# compiled vs eager float32: inductor fuses and reorders reductions, so equal up to rounding
LOSS_RTOL, GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-5, 1e-4
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=48, dropout=0.0)


def gpt_case():
    model = GPT(GPTConfig(**TINY))
    idx = torch.randint(0, 48, (2, 16))
    return model, {"idx": idx, "targets": torch.roll(idx, -1, dims=1)}


def bert_case():
    model = BERT(BERTConfig(**TINY))
    ids = torch.randint(0, 48, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # a padded row: the key-padding mask path
    labels = torch.full((2, 16), -100)
    labels[:, ::3] = ids[:, ::3]
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seq2seq_case():
    model = Seq2Seq(Seq2SeqConfig(**TINY))
    src, tgt = torch.randint(0, 48, (2, 12)), torch.randint(0, 48, (2, 16))
    src_mask = torch.ones(2, 12, dtype=torch.bool)
    src_mask[0, 9:] = False
    return model, {"src": src, "tgt": tgt, "targets": torch.roll(tgt, -1, dims=1), "src_mask": src_mask}


def train_step(model, batch, call=None):
    """Loss and gradients of one forward/backward pass of `call` (model itself, or its compiled form)."""
    model.zero_grad(set_to_none=True)
    _, loss = (model if call is None else call)(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make_case", [gpt_case, bert_case, seq2seq_case], ids=["gpt", "bert", "seq2seq"])
def test_compiled_training_step_equals_eager(make_case):
    torch._dynamo.reset()  # no shapes remembered from other tests in this process (they would make these dynamic)
    torch.manual_seed(0)
    model, batch = make_case()
    eager_loss, eager_grads = train_step(model, batch)
    compiled = torch.compile(model, fullgraph=True)  # a graph break in the forward is an error
    for _ in range(2):  # the second call reuses the compiled graphs (no recompilation)
        loss, grads = train_step(model, batch, compiled)
        assert torch.allclose(loss, eager_loss, rtol=LOSS_RTOL), (loss, eager_loss)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, eager_grads[name], atol=GRAD_ATOL, rtol=GRAD_RTOL), name


@pytest.mark.parametrize("make_case", [gpt_case, bert_case, seq2seq_case], ids=["gpt", "bert", "seq2seq"])
def test_the_forward_compiles_as_one_graph_with_dynamic_shapes(make_case):
    """What a recompilation for a new length does (Dynamo then marks the length dynamic), asked for at once:
    no Python value may come from a symbolic size (SDPA's is_causal was one). aot_eager: tracing, not C++."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, batch = make_case()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for length in (16, 11, 1):
        cropped = {name: value[:, :length] for name, value in batch.items()}
        assert torch.allclose(compiled(**cropped)[1], model(**cropped)[1], rtol=LOSS_RTOL), length


def test_hooks_and_graph_breaks():
    """Inactive hook points leave one graph; so do hooks that cache or replace a tensor (they are
    traced into it). A hook that reads a value into Python (.item(), print, numpy) breaks the graph."""
    torch.manual_seed(0)
    model, batch = gpt_case()
    model.eval()
    idx = batch["idx"]
    explain = torch._dynamo.explain(model)(idx)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    cache = {}
    store = lambda tensor, name: cache.__setitem__(name, tensor.detach())  # what run_with_cache attaches
    with model.hooks([("blocks.0.attn.pattern", store), ("blocks.0.attn.z", lambda tensor, name: tensor * 0.5)]):
        traced = torch._dynamo.explain(model)(idx)
    assert traced.graph_break_count == 0, traced.break_reasons
    assert cache["blocks.0.attn.pattern"].shape == (2, 2, 16, 16)
    seen = []
    with model.hooks([("blocks.0.attn.z", lambda tensor, name: seen.append(tensor.sum().item()))]):
        breaking = torch._dynamo.explain(model)(idx)
    assert breaking.graph_break_count >= 1 and seen


def test_train_script_compiled_end_to_end_and_resume(char_data, tmp_path):
    """train.py --compile=True on the CPU: trains, saves, resumes; the same losses as eager (rounding aside)."""
    common = [f"--data_dir={char_data}", "--eval_interval=10", "--lr_decay_iters=20", "--device=cpu",
              "--n_layer=1", *SMALL[1:]]
    run_script("train.py", f"--out_dir={tmp_path / 'eager'}", "--max_iters=20", *common)
    run_script("train.py", f"--out_dir={tmp_path / 'compiled'}", "--max_iters=10", "--compile=True", *common)
    proc = run_script("train.py", f"--out_dir={tmp_path / 'compiled'}", "--max_iters=20", "--init_from=resume")
    assert "resuming" in proc.stdout
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert [r["iter"] for r in compiled] == [0, 10, 20]
    assert load_checkpoint(str(tmp_path / "compiled"))["train_config"]["compile"] is True
    for a, b in zip(eager, compiled):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-3, (a, b)
    assert compiled[-1]["val_loss"] < compiled[0]["val_loss"] - 0.3
