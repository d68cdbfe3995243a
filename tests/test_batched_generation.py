"""Batched generation of left-padded prompts: each row gets exactly what it gets alone."""

import pytest
import torch

from conftest import one_line_error, run_script
from data.tokenizer import CharTokenizer
from model import GPT, GPTConfig, save_checkpoint
from lens.recorder import AttentionRecorder
from training.config import to_dict
from model.generation import pack

LENGTHS = (1, 5, 16, 9)  # a one-token prompt and one at the context limit (block_size 16)


def tiny_gpt(pos_emb: str) -> GPT:
    """A random GPT with spread-out logits (N(0, 0.2) weights), so greedy choices are far from ties."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=48, pos_emb=pos_emb))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 48, (n,), generator=g) for n in LENGTHS]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_padded_batch_gives_each_prompt_its_own_greedy_tokens(pos_emb, use_cache):
    model = tiny_gpt(pos_emb)
    rows = prompts()
    idx, mask = pack(rows)
    assert mask.sum(1).tolist() == list(LENGTHS) and mask[0, :-1].sum() == 0  # left padding
    n_new = 24  # more than the window: every row's context moves on, at different steps
    out = model.generate(idx, n_new, temperature=0, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (4, 16 + n_new) and torch.equal(out[:, :16], idx)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], n_new, temperature=0, use_cache=use_cache)
        assert torch.equal(out[i, 16:], alone[0, len(row):]), i
    streamed = torch.cat(list(model.generate_stream(idx, n_new, temperature=0, attention_mask=mask,
                                                    use_cache=use_cache)), dim=1)
    assert torch.equal(streamed, out[:, 16:])


def test_unpadded_mask_changes_nothing():
    model = tiny_gpt("learned")
    idx = torch.randint(0, 48, (3, 6))
    ones = torch.ones_like(idx)
    assert torch.allclose(model(idx, attention_mask=ones)[0], model(idx)[0], atol=1e-6)
    assert torch.equal(model.generate(idx, 20, temperature=0, attention_mask=ones),
                       model.generate(idx, 20, temperature=0))


def test_seeded_top_k_top_p_is_reproducible_per_row():
    model = tiny_gpt("rope")
    rows = prompts()
    idx, mask = pack(rows)
    seeds = [10, 11, 12, 13]
    batch = model.generate(idx, 12, temperature=1.0, top_k=20, top_p=0.9, attention_mask=mask,
                           generator=[torch.Generator().manual_seed(s) for s in seeds])
    for i, row in enumerate(rows):
        alone = model.generate(row[None], 12, temperature=1.0, top_k=20, top_p=0.9,
                               generator=[torch.Generator().manual_seed(seeds[i])])
        assert torch.equal(batch[i, 16:], alone[0, len(row):]), i
    again = model.generate(idx, 12, temperature=1.0, top_k=20, top_p=0.9, attention_mask=mask,
                           generator=[torch.Generator().manual_seed(s) for s in seeds[::-1]])
    assert not torch.equal(again[:, 16:], batch[:, 16:])  # other seeds, other samples


def test_bad_masks_are_clear_errors():
    model = tiny_gpt("learned")
    idx = torch.randint(0, 48, (2, 4))
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(idx, 2, attention_mask=right_padded)
    with pytest.raises(ValueError, match="no tokens"):
        model.generate(idx, 2, attention_mask=torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="must match"):
        model.generate(idx, 2, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="one per row"):
        model.generate(idx, 2, generator=[torch.Generator()])


def test_attention_recorder_on_a_padded_batch_shows_no_padding():
    model = tiny_gpt("rope")
    rows = prompts()[:2] + prompts()[3:]  # lengths 1, 5, 9: no window move while recording
    idx, mask = pack(rows)
    with AttentionRecorder(model) as recorder:
        model.generate(idx, 4, temperature=0, attention_mask=mask)
    per_row = recorder.row_maps(idx.size(1), mask)
    with pytest.raises(ValueError, match="attention_mask must be left-padded"):
        recorder.row_maps(idx.size(1), mask.flip(1))  # generation takes left padding only
    for row, maps in zip(rows, per_row):
        with AttentionRecorder(model) as alone:
            model.generate(row[None], 4, temperature=0)
        for name, m in alone.maps(len(row)).items():
            assert maps[name].shape == m[0].shape == (2, len(row) + 3, len(row) + 3)
            assert torch.allclose(maps[name], m[0], atol=1e-5), name
            assert torch.allclose(maps[name].sum(-1), torch.ones(2, len(row) + 3), atol=1e-5)


CHARS = "abcdefghijklmnopqrstuvwxyz ,.:!?ABCDEFGHIJKLMNOP"  # 48 characters: tiny_gpt's vocabulary


def test_sample_script_continues_several_prompts(tmp_path):
    model = tiny_gpt("learned")
    tokenizer = CharTokenizer(CHARS)
    save_checkpoint({"model": model.state_dict(), "model_type": "gpt", "model_args": to_dict(model.config),
                     "tokenizer": tokenizer.meta()}, str(tmp_path / "ckpt.pt"))
    lines = ["ab", "hello there", "x" * 20]  # the last is longer than the context: its end is kept
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    common = [f"--out_dir={tmp_path}", "--num_samples=1", "--max_new_tokens=12", "--temperature=0", "--device=cpu"]
    proc = run_script("sample.py", f"--prompts={tmp_path / 'prompts.txt'}", *common)
    out = proc.stdout.splitlines()
    assert [line.split("]")[0] for line in out] == ["[prompt 1", "[prompt 2", "[prompt 3"]
    assert "prompt 3: 20 tokens cropped to its last 16" in proc.stderr
    for line, prompt in list(zip(out, lines))[::2]:  # the shortest and the cropped prompt, each alone
        alone = run_script("sample.py", f"--start={prompt[-16:]}", *common).stdout
        assert line.split("] ", 1)[1] == alone.rstrip("\n"), (line, alone)
    fast_alone = run_script("sample.py", f"--start={lines[0]}", *common, "--fast_decode=True")
    assert "for 1 prompt(s)" in fast_alone.stderr
    assert fast_alone.stdout.rstrip("\n") == out[0].split("] ", 1)[1]
    fast = run_script("sample.py", f"--prompts={tmp_path / 'prompts.txt'}", *common, "--fast_decode=True")
    assert "--fast_decode: a static KV cache for 3 prompt(s)" in fast.stderr  # the batch went through it
    assert fast.stdout == proc.stdout  # the static cache and compiled step: the same padded greedy text
    (tmp_path / "bad.txt").write_text("ab\n\ncd\n")
    error = one_line_error(run_script("sample.py", f"--prompts={tmp_path / 'bad.txt'}", *common, check=False))
    assert "line 2" in error and "empty" in error
    error = one_line_error(run_script("sample.py", f"--prompts={tmp_path / 'none.txt'}", *common, check=False))
    assert "cannot read prompts file" in error
