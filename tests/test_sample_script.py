"""sample.py's options, run in-process on tiny trained checkpoints: --start=FILE:, --seed, --temperature,
--top_p, and the encoder-decoder's --decoding=sample; each output compared with the model's own decoding."""


import pytest
import torch

import sample
import train
from conftest import copy_dataset
from data.pairs import reverse_pairs, write_pairs_dataset
from data.tokenizer import from_meta
from model import ConfigError, load_checkpoint
from training.families import model_from_checkpoint

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=1",
        "--log_interval=100", "--warmup_iters=2", "--learning_rate=3e-3", "--device=cpu", "--dtype=float32"]


@pytest.fixture(scope="module")
def gpt_dir(char_data, tmp_path_factory):
    """A GPT trained for 20 iterations on a copy of the char dataset."""
    folder = copy_dataset(char_data, tmp_path_factory.mktemp("sample_gpt"))
    train.main([f"--data_dir={folder}", f"--out_dir={folder / 'out'}", "--max_iters=20", "--eval_interval=20", *TINY])
    return folder / "out"


@pytest.fixture(scope="module")
def gpt(gpt_dir):
    ckpt = load_checkpoint(str(gpt_dir))
    return model_from_checkpoint(ckpt).eval(), from_meta(ckpt["tokenizer"])


def run_sample(capsys, out_dir, *args) -> str:
    """sample.main's printed output."""
    capsys.readouterr()
    sample.main([f"--out_dir={out_dir}", "--device=cpu", *args])
    return capsys.readouterr().out


def expected_gpt(gpt, prompt, n, temperature, top_k, top_p, seed) -> str:
    """What sample.py must print for one sample: the prompt and the model's continuation under these settings."""
    model, tokenizer = gpt
    ids = tokenizer.encode(prompt)
    generator = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([ids]), n, temperature, top_k, top_p, generator=generator)
    return tokenizer.decode(out[0].tolist()) + "\n"


def test_seed_reproduces_a_sample_and_another_seed_changes_it(gpt_dir, gpt, capsys):
    args = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=60", "--temperature=1.0", "--top_k=None"]
    first = run_sample(capsys, gpt_dir, *args, "--seed=5")
    assert first == expected_gpt(gpt, "ROMEO:", 60, 1.0, None, None, 5)
    assert run_sample(capsys, gpt_dir, *args, "--seed=5") == first
    assert run_sample(capsys, gpt_dir, *args, "--seed=6") != first


def test_temperature_and_top_p_reach_the_sampler(gpt_dir, gpt, capsys):
    common = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=60", "--top_k=None", "--seed=3"]
    greedy = run_sample(capsys, gpt_dir, *common, "--temperature=0")
    assert greedy == expected_gpt(gpt, "ROMEO:", 60, 0.0, None, None, 3)
    hot = run_sample(capsys, gpt_dir, *common, "--temperature=2.0")
    assert hot == expected_gpt(gpt, "ROMEO:", 60, 2.0, None, None, 3) and hot != greedy
    nucleus = run_sample(capsys, gpt_dir, *common, "--temperature=2.0", "--top_p=0.3")
    assert nucleus == expected_gpt(gpt, "ROMEO:", 60, 2.0, None, 0.3, 3) and nucleus != hot


def test_start_from_a_file(gpt_dir, tmp_path, capsys):
    prompt = "KING:\nWhat say you?\n"  # newlines and all
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    args = ["--num_samples=2", "--max_new_tokens=30", "--seed=2"]
    from_file = run_sample(capsys, gpt_dir, f"--start=FILE:{tmp_path / 'prompt.txt'}", *args)
    assert from_file == run_sample(capsys, gpt_dir, f"--start={prompt}", *args)
    first, second = from_file.split("\n" + "-" * 40 + "\n")
    assert first.startswith(prompt) and second.startswith(prompt) and len(first) == len(prompt) + 30
    with pytest.raises(ConfigError, match="FILE:"):
        run_sample(capsys, gpt_dir, f"--start=FILE:{tmp_path / 'missing.txt'}")


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory):
    """An encoder-decoder trained for 10 iterations on a small reversal dataset."""
    folder = tmp_path_factory.mktemp("sample_seq2seq")
    lines = [f"{w}{i}" for i, w in enumerate(["tide", "storm", "crown", "sword", "night"] * 8)]
    pairs = reverse_pairs(lines)
    write_pairs_dataset(str(folder), pairs[:30], pairs[30:], {})
    train.main(["--model_type=seq2seq", f"--data_dir={folder}", f"--out_dir={folder / 'out'}", "--max_iters=10",
                "--eval_interval=10", *TINY])
    return folder / "out"


def test_seq2seq_decoding_sample(seq2seq_dir, capsys):
    ckpt = load_checkpoint(str(seq2seq_dir))
    model, tokenizer = model_from_checkpoint(ckpt).eval(), from_meta(ckpt["tokenizer"])
    sources = ["tide7", "sword13"]
    args = ["--start=" + "\n".join(sources), "--decoding=sample", "--num_samples=3", "--temperature=1.5"]
    printed = run_sample(capsys, seq2seq_dir, *args, "--seed=4").splitlines()
    assert len(printed) == 6  # num_samples outputs for each source, source by source
    pad, bos, eos = (tokenizer.special_ids[s] for s in ("[PAD]", "[BOS]", "[EOS]"))
    ids = [tokenizer.encode(s) for s in sources]
    src = torch.tensor([row + [pad] * (7 - len(row)) for row in ids])  # (2, 7): right-padded
    generator = torch.Generator().manual_seed(4)
    outputs = [model.generate(src, bos, eos, src != pad, 500, 1.5, 200, None, generator=generator) for _ in range(3)]
    assert printed == [tokenizer.decode(out[row]) for row in range(2) for out in outputs]
    assert len(set(printed[:3])) > 1  # samples, not three copies of the greedy output
    assert run_sample(capsys, seq2seq_dir, *args, "--seed=5").splitlines() != printed
    greedy = run_sample(capsys, seq2seq_dir, "--start=" + "\n".join(sources)).splitlines()
    assert greedy == [tokenizer.decode(o) for o in model.generate(src, bos, eos, src != pad, 500)]
