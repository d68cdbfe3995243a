"""CUDA-only checks (skipped without a GPU; python tools/gpu_check.py runs them on one)."""

import pytest
import torch

from conftest import run_script
from model import GPTConfig, load_checkpoint
from model.attention import Attention
from model.fast_decode import StaticDecoder
from test_batched_generation import tiny_gpt
from test_bf16 import BF16_ATOL
from test_compile import GRAD_ATOL, GRAD_RTOL, LOSS_RTOL, gpt_case, train_step
from test_distributed import TINY, metrics, torchrun

pytestmark = pytest.mark.cuda


def test_flash_sdpa_matches_explicit_attention_under_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attn = Attention(GPTConfig(n_layer=1, n_head=4, n_embd=256, block_size=128, vocab_size=48)).cuda().eval()
    x = torch.randn(2, 128, 256, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash or an error: no silent fallback
            fast = attn(x, causal=True)
        explicit, _ = attn(x, causal=True, need_weights=True)
    assert (fast.float() - explicit.float()).abs().max() < BF16_ATOL


def test_compiled_training_step_equals_eager_on_cuda():
    torch.manual_seed(0)
    model, batch = gpt_case()
    model = model.cuda()
    batch = {k: v.cuda() for k, v in batch.items()}
    eager_loss, eager_grads = train_step(model, batch)
    compiled = torch.compile(model, fullgraph=True)
    loss, grads = train_step(model, batch, compiled)
    assert torch.allclose(loss, eager_loss, rtol=LOSS_RTOL)
    for name, grad in grads.items():
        assert torch.allclose(grad, eager_grads[name], atol=GRAD_ATOL, rtol=GRAD_RTOL), name


def test_kv_cache_static_cache_and_cuda_graphs_give_uncached_tokens():
    model = tiny_gpt("rope").cuda()
    idx = torch.randint(0, 48, (2, 5), device="cuda")
    uncached = model.generate(idx, 30, temperature=0, use_cache=False)
    assert torch.equal(model.generate(idx, 30, temperature=0), uncached)
    decoder = StaticDecoder(model, batch_size=2, compile=True)  # mode="reduce-overhead": CUDA graphs
    assert torch.equal(decoder.generate(idx, 30, temperature=0), uncached)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_one_gpu_torchrun_nccl_trains_and_resumes(char_data, tmp_path, fsdp):
    args = [f"--data_dir={char_data}", f"--out_dir={tmp_path}", f"--fsdp={fsdp}",
            *[a for a in TINY if a != "--device=cpu"], "--device=cuda"]
    torchrun(*args, "--max_iters=5", nproc=1)
    proc = torchrun(*args, "--max_iters=10", "--init_from=resume", nproc=1)
    assert "resuming" in proc.stdout
    rows = metrics(tmp_path)
    assert [r["iter"] for r in rows] == [0, 5, 10] and rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert load_checkpoint(str(tmp_path))["iter_num"] == 10


def test_bf16_compiled_train_script_on_cuda(char_data, tmp_path):
    proc = run_script("train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path}", "--max_iters=10",
                      "--device=cuda", "--dtype=bfloat16", "--compile=True",
                      *[a for a in TINY if a != "--device=cpu"])
    rows = metrics(tmp_path)
    assert "dtype bfloat16" in proc.stdout and rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_document_mask_through_flex_attention_matches_the_cpu_path():
    """On CUDA, doc_ids go through compiled FlexAttention block masks; the loss and the gradients equal the
    CPU's (SDPA with a bool mask), eager and compiled."""
    import copy

    from model import GPT
    from model.documents import document_mask

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=48, n_layer=2, n_head=4, n_embd=64, block_size=256, pos_emb="rope"))
    idx, targets = torch.randint(0, 48, (2, 256)), torch.randint(0, 48, (2, 256))
    doc_ids = torch.tensor([[0] * 100 + [1] * 30 + [2] * 126, [0] * 200 + [1] * 56])
    _, cpu_loss = model(idx, targets, doc_ids=doc_ids)
    cpu_loss.backward()
    cuda_model = copy.deepcopy(model).cuda()
    cuda_model.zero_grad()
    assert not isinstance(document_mask(doc_ids.cuda(), 256, True, flex=True), torch.Tensor)  # a FlexMask (a BlockMask)
    for run in (cuda_model, torch.compile(cuda_model)):
        cuda_model.zero_grad()
        _, loss = run(idx.cuda(), targets.cuda(), doc_ids=doc_ids.cuda())
        loss.backward()
        assert abs(loss.item() - cpu_loss.item()) < 1e-4
        for (name, p), q in zip(model.named_parameters(), cuda_model.parameters()):
            assert torch.allclose(q.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3), name
