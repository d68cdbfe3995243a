"""GPT-2 weight import against Hugging Face transformers (a small random GPT-2 saved locally; no download)."""

import json
import os
import re

import pytest
import torch

from conftest import run_script
from model import GPT, ConfigError
import train
from training.config import TrainConfig
from weights.hf_folder import PretrainedError

transformers = pytest.importorskip("transformers")  # in requirements-test.txt; never a runtime dependency


def save_hf_gpt2(folder, vocab_size=97, n_positions=48, seed=0, **overrides):
    """A randomly initialised Hugging Face GPT-2 (2 layers, 32 wide) saved in HF format; returns the model."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                                     initializer_range=0.3, bos_token_id=0, eos_token_id=0, **overrides)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a wrong mapping cannot hide
        for name, p in hf.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_gpt2")
    return folder, save_hf_gpt2(folder)


def test_logits_and_greedy_generation_match_huggingface(hf_dir):
    folder, hf = hf_dir
    model = GPT.from_pretrained(str(folder)).eval()
    assert model.config.bias and model.config.activation == "gelu_tanh" and model.config.block_size == 48
    idx = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        assert torch.allclose(model(idx)[0], expected, atol=1e-4, rtol=0)
        with_targets = model(idx[:, :-1], targets=idx[:, 1:])[1]
        assert with_targets.item() == pytest.approx(hf(idx, labels=idx).loss.item(), abs=1e-4)
    prompt = idx[:1, :6]
    theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    for use_cache in (True, False):
        ours = model.generate(prompt, max_new_tokens=30, top_k=1, use_cache=use_cache)
        assert ours.tolist() == theirs.tolist()
    assert len(set(theirs[0, 6:].tolist())) >= 5  # a varied continuation, not one repeated token


def test_padded_batches_seeded_sampling_and_stop_tokens_match_huggingface(hf_dir):
    from model.generation import pack

    folder, hf = hf_dir
    model = GPT.from_pretrained(str(folder)).eval()
    gen = torch.Generator().manual_seed(3)
    idx, mask = pack([torch.randint(1, 97, (n,), generator=gen) for n in (1, 7, 12, 4)])
    theirs = hf.generate(idx, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                         eos_token_id=None)
    for use_cache in (True, False):  # greedy, left-padded: token for token
        assert model.generate(idx, 20, temperature=0, attention_mask=mask, use_cache=use_cache).tolist() == \
            theirs.tolist()
    prompt = idx[1:2, -7:]
    for temperature, top_k, top_p in [(1.0, None, None), (0.8, 20, 0.9), (1.3, None, 0.7), (1.0, 3, 0.5)]:
        for seed in range(3):  # the same distributions, so the same draws from the same global random stream
            torch.manual_seed(seed)
            theirs = hf.generate(prompt, max_new_tokens=25, do_sample=True, temperature=temperature,
                                 top_k=top_k or 0, top_p=top_p or 1.0, pad_token_id=0, eos_token_id=None)
            for use_cache in (True, False):
                torch.manual_seed(seed)
                ours = model.generate(prompt, 25, temperature, top_k, top_p, use_cache=use_cache)
                assert ours.tolist() == theirs.tolist(), (temperature, top_k, top_p, seed, use_cache)
    idx, mask = idx[1:], mask[1:]
    rows = model.generate(idx, 20, temperature=0, attention_mask=mask)[:, 12:].tolist()
    stop = next(t for t in rows[-1] if all(t in row for row in rows))  # every row emits it, at different steps
    theirs = hf.generate(idx, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=stop,
                         eos_token_id=stop)  # finished rows are padded with the stop token
    assert theirs.size(1) < 32
    for use_cache in (True, False):
        ours = model.generate(idx, 20, temperature=0, attention_mask=mask, stop_token=stop, use_cache=use_cache)
        assert ours.tolist() == theirs.tolist()
    streamed = list(model.generate_stream(idx[:1], 20, temperature=0, attention_mask=mask[:1], stop_token=stop))
    assert streamed[-1].item() == stop and stop not in torch.cat(streamed[:-1]).tolist()


def test_pytorch_bin_and_cropped_block_size(hf_dir, tmp_path):
    folder, hf = hf_dir
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # the older format, with the lm_head copy
    model = GPT.from_pretrained(str(tmp_path), block_size=16).eval()
    assert model.config.block_size == 16 and model.wpe.weight.shape == (16, 32)
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


def test_bad_pretrained_inputs(hf_dir, tmp_path):
    folder, _ = hf_dir
    with pytest.raises(PretrainedError, match="cannot download gpt5 .*pass a local"):
        GPT.from_pretrained("gpt5")
    with pytest.raises(PretrainedError, match="config.json"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(PretrainedError, match="holds no model.safetensors"):
        GPT.from_pretrained(str(tmp_path))
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match="corrupt"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(PretrainedError, match="do not fit"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(PretrainedError, match="relu"):
        GPT.from_pretrained(str(tmp_path))
    with pytest.raises(PretrainedError, match="block_size"):
        GPT.from_pretrained(str(folder), block_size=49)


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    """Two plays of the built-in Shakespeare as GPT-2 BPE tokens."""
    from data.corpus import shakespeare_text

    folder = tmp_path_factory.mktemp("bpe")
    (folder / "input.txt").write_text(shakespeare_text(max_plays=2), encoding="utf-8")
    run_script("data/shakespeare/prepare.py", "--input", str(folder / "input.txt"), "--out_dir", str(folder))
    return folder


def test_finetune_eval_only_and_sample_from_a_gpt2_folder(bpe_data, hf_dir, tmp_path):
    hf_folder = tmp_path / "gpt2-tiny"
    save_hf_gpt2(hf_folder, vocab_size=50257, n_positions=64)
    meta = json.loads((bpe_data / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257

    out = tmp_path / "out"
    common = [f"--data_dir={bpe_data}", f"--out_dir={out}", "--batch_size=4", "--eval_iters=2", "--block_size=16"]
    proc = run_script("train.py", f"--init_from={hf_folder}", "--max_iters=8", "--eval_interval=4",
                      "--lr_decay_iters=8", "--warmup_iters=0", "--learning_rate=1e-2", "--log_interval=4", *common)
    assert "initialised from" in proc.stdout
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iter"] for r in rows] == [0, 4, 8] and rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0

    # --eval_only: the stored model's losses, nothing trained or written
    before = (out / "ckpt.pt").read_bytes()
    proc = run_script("train.py", f"--out_dir={out}", "--init_from=resume", "--eval_only=True")
    val_loss = lambda out: float(re.findall(r"val loss ([0-9.]+)", out)[-1])  # noqa: E731 (ppl and bpb follow it)
    assert val_loss(proc.stdout) == pytest.approx(rows[-1]["val_loss"], abs=1e-4)
    assert (out / "ckpt.pt").read_bytes() == before
    proc = run_script("train.py", f"--init_from={hf_folder}", "--eval_only=True", *common)
    assert val_loss(proc.stdout) == pytest.approx(rows[0]["val_loss"], abs=1e-4)

    proc = run_script("sample.py", f"--init_from={hf_folder}", "--start=To be, or not", "--num_samples=1",
                      "--max_new_tokens=20", "--seed=3")
    assert proc.stdout.startswith("To be, or not") and len(proc.stdout) > len("To be, or not") + 20
    proc = run_script("sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=10")
    assert proc.stdout.startswith("ROMEO:")

    # one-line errors: a model key that GPT-2 fixes; an unknown name
    proc = run_script("train.py", f"--init_from={hf_folder}", "--n_layer=2", f"--data_dir={bpe_data}",
                      f"--out_dir={tmp_path / 'o2'}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "n_layer" in lines[0]
    assert not os.path.exists(tmp_path / "o2")
    assert TrainConfig(init_from="gpt5").init_from == "gpt5"  # a config reads no disk; the run's start does:
    with pytest.raises(ConfigError, match="init_from must be"):
        train.main(["--init_from=gpt5", f"--out_dir={tmp_path / 'o4'}"])
    assert not os.path.exists(tmp_path / "o4")
    # a GPT-2 with another vocabulary (97 ids) on a GPT-2 BPE dataset: the error names both sizes
    proc = run_script("train.py", f"--init_from={hf_dir[0]}", f"--data_dir={bpe_data}", f"--out_dir={tmp_path / 'o3'}",
                      check=False)
    assert proc.returncode == 1 and "has 97 token ids" in proc.stderr and "gpt2 (50257 ids)" in proc.stderr


def test_untied_head_is_loaded(tmp_path):
    hf = save_hf_gpt2(tmp_path, seed=3, tie_word_embeddings=False)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert not model.config.tie_embeddings
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config, weights, match", [
    ([1, 2], None, "no readable config.json"), ({"n_layer": 2.0}, None, "sizes must be integers"),
    ({"layer_norm_epsilon": None}, None, "layer_norm_epsilon must be a positive number"),
    (None, {"transformer.h.0.attn.c_attn.weight": torch.ones(32, 96, 1)}, r"blocks.0.attn.c_attn.weight is \(32, 96, 1\)"),
    (None, {"transformer.h.0.ln_1.weight": 3}, "not named tensors")])
def test_hostile_config_or_weights_is_one_error(hf_dir, tmp_path, config, weights, match):
    folder, hf = hf_dir
    hf_config = json.loads((folder / "config.json").read_text())
    if config is not None:
        hf_config = config if isinstance(config, list) else {**hf_config, **config}
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    torch.save({**hf.state_dict(), **(weights or {})}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match=match):
        GPT.from_pretrained(str(tmp_path))
