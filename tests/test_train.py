"""End-to-end: prepare, train, resume, sample and the user errors, through the real scripts."""

import json
import math
import os
import shutil

import pytest
import torch

from conftest import one_line_error, run_script
from model import load_checkpoint
from training.families import model_from_checkpoint

SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
         "--eval_iters=5", "--log_interval=10", "--warmup_iters=5", "--learning_rate=3e-3"]


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_prepare_tinyshakespeare_split(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000)) + "Z" * 1000
    (tmp_path / "input.txt").write_text(text)
    run_script("data/shakespeare_char/prepare.py", "--input", str(tmp_path / "input.txt"), "--out_dir", str(tmp_path))
    meta = json.loads((tmp_path / "meta.json").read_text())
    from data.tokens import load_tokens

    train, val = load_tokens(str(tmp_path / "train.bin")), load_tokens(str(tmp_path / "val.bin"))
    assert (len(train), len(val)) == (1800, 200)  # first 90% / last 10% of the characters
    assert meta["vocab_size"] == 27 and train.dtype.name == "uint16"
    assert set(val.tolist()) == {meta["chars"].index("Z")}


def test_train_loss_falls_then_sample(char_data, tmp_path):
    out = tmp_path / "out"
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=150", "--eval_interval=50",
               "--lr_decay_iters=150", *SMALL)
    rows = metrics(out)
    assert [r["iter"] for r in rows] == [0, 50, 100, 150]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0
    assert {"train_loss", "lr", "tokens_per_s", "elapsed_s"} <= set(rows[-1])
    # the logged rate: warmup over 5 iterations to 3e-3, cosine decay to min_lr 1e-4 at iteration 150
    cosine = [1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 5) / 145)) * (3e-3 - 1e-4) for it in (50, 100)]
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 / 6, *cosine, 1e-4], rel=1e-9)
    proc = run_script("sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=40")
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) >= 46


def test_checkpoint_round_trip_restores_the_trained_model_and_optimizer(char_data, tmp_path, monkeypatch):
    import copy

    import train
    from training import distributed
    from training.config import TrainConfig

    live, full_state = [], distributed.full_state

    def keep_a_copy(model, optimizer):  # the model and optimizer as trained, at the moment they are saved
        live.append(copy.deepcopy((model, optimizer)))
        return full_state(model, optimizer)

    monkeypatch.setattr(distributed, "full_state", keep_a_copy)
    out = tmp_path / "out"
    train.main([f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=20", "--bias=True",
                "--dropout=0.1", "--device=cpu", *SMALL])
    ckpt = load_checkpoint(str(out))
    assert ckpt["iter_num"] == 20 and ckpt["model_args"]["bias"] is True and len(live) == 1
    trained, trained_opt = live[0]
    loaded = model_from_checkpoint(ckpt)
    loaded_opt = train.make_optimizer(loaded, TrainConfig(), "cpu")
    distributed.load_full_state(loaded, loaded_opt, ckpt["model"], ckpt["optimizer"])
    idx = torch.randint(0, loaded.config.vocab_size, (2, 33))
    for model, optimizer in ((trained, trained_opt), (loaded, loaded_opt)):  # one more step, dropout off
        model.eval()
        model(idx[:, :-1], idx[:, 1:])[1].backward()
        optimizer.step()
    assert loaded_opt.param_groups[0]["lr"] == trained_opt.param_groups[0]["lr"] != TrainConfig().learning_rate
    for (name, a), b in zip(trained.named_parameters(), loaded.parameters()):
        assert torch.equal(a, b), name  # the same weights, moments and step count: the same update
    assert torch.equal(trained(idx[:, :-1])[0], loaded(idx[:, :-1])[0])


def test_resume_matches_uninterrupted_run(char_data, tmp_path):
    common = [f"--data_dir={char_data}", "--eval_interval=10", "--lr_decay_iters=40", "--dropout=0.1", *SMALL]
    run_script("train.py", f"--out_dir={tmp_path / 'full'}", "--max_iters=40", *common)
    run_script("train.py", f"--out_dir={tmp_path / 'split'}", "--max_iters=20", *common)
    proc = run_script("train.py", f"--out_dir={tmp_path / 'split'}", "--max_iters=40", "--init_from=resume")
    assert "resuming" in proc.stdout
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["iter"] for r in split] == [0, 10, 20, 30, 40]
    for a, b in zip(full, split):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    wa, wb = (load_checkpoint(str(tmp_path / d))["model"] for d in ("full", "split"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    done = (tmp_path / "split" / "ckpt.pt").read_bytes()
    proc = run_script("train.py", f"--out_dir={tmp_path / 'split'}", "--max_iters=30", "--init_from=resume")
    assert "nothing to train" in proc.stdout and "--max_iters" in proc.stdout  # was a silent no-op
    assert (tmp_path / "split" / "ckpt.pt").read_bytes() == done and len(metrics(tmp_path / "split")) == 5


def test_user_errors_are_one_line_and_harmless(char_data, tmp_path):
    out = tmp_path / "out"
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=10", "--eval_interval=10", *SMALL)
    ckpt_bytes = (out / "ckpt.pt").read_bytes()

    assert "prepare" in one_line_error(run_script("train.py", f"--data_dir={tmp_path / 'none'}",
                                                  f"--out_dir={tmp_path / 'o2'}", check=False))
    # these two in a fresh interpreter: a warning at import time would break the one line
    assert "valid keys" in one_line_error(run_script("train.py", "--n_layers=2", check=False, fresh=True))
    assert "int" in one_line_error(run_script("train.py", "--batch_size=big", check=False))
    assert "config" in one_line_error(run_script("train.py", "config/does_not_exist.py", check=False))
    # a fresh run must not replace an existing checkpoint
    assert "resume" in one_line_error(run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", *SMALL,
                                                 check=False))
    assert "vocabulary" in one_line_error(run_script("sample.py", f"--out_dir={out}", "--start=\u00e9\u4e2d",
                                                     check=False))
    assert "no checkpoint" in one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'none'}", check=False,
                                                        fresh=True))
    assert "holds a GPT" in one_line_error(run_script("sample.py", f"--out_dir={out}", "--decoding=beam", check=False))
    assert (out / "ckpt.pt").read_bytes() == ckpt_bytes

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ckpt.pt").write_bytes(ckpt_bytes[: len(ckpt_bytes) // 2])
    assert "corrupt" in one_line_error(run_script("sample.py", f"--out_dir={bad}", check=False))
    assert "corrupt" in one_line_error(run_script("train.py", f"--out_dir={bad}", "--init_from=resume", check=False))
    assert (bad / "ckpt.pt").read_bytes() == ckpt_bytes[: len(ckpt_bytes) // 2]

    no_val = tmp_path / "no_val"  # a copy: the session's shared char_data must stay as it is
    shutil.copytree(char_data, no_val)
    (no_val / "val.bin").unlink()
    assert "val.bin" in one_line_error(run_script("train.py", f"--data_dir={no_val}",
                                                  f"--out_dir={tmp_path / 'o3'}", check=False))



def test_resume_refuses_another_model_or_vocabulary_and_out_dir_must_be_writable(char_data, tmp_path):
    from data.shakespeare_char.prepare import prepare
    from model import ConfigError
    from train import load_config, main

    out = tmp_path / "out"
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=10", "--eval_interval=10", *SMALL)
    ckpt_bytes = (out / "ckpt.pt").read_bytes()
    resume = [f"--out_dir={out}", "--init_from=resume", "--max_iters=20"]
    with pytest.raises(ConfigError, match="n_layer=2"):  # was silently ignored
        main([*resume, "--n_layer=3"])
    with pytest.raises(ConfigError, match="model_type"):
        main([*resume, "--model_type=bert"])
    assert load_config([*resume, "--dropout=0.3"])[1].dropout == 0.3  # dropout may change, as in nanoGPT
    text = (char_data / "input.txt").read_text(encoding="utf-8")
    (tmp_path / "other.txt").write_text(text.replace("a", "\u00a7"), encoding="utf-8")  # as many characters
    prepare(str(tmp_path / "other"), str(tmp_path / "other.txt"))
    with pytest.raises(ConfigError, match="other tokens"):
        main([*resume, f"--data_dir={tmp_path / 'other'}"])
    assert (out / "ckpt.pt").read_bytes() == ckpt_bytes
    old = torch.load(out / "ckpt.pt", weights_only=True)  # as an older headscope wrote it
    del old["train_config"]["max_nonfinite_steps"]
    old["train_config"]["retired_key"] = 1
    torch.save(old, tmp_path / "old.pt")
    (tmp_path / "old").mkdir()
    os.replace(tmp_path / "old.pt", tmp_path / "old" / "ckpt.pt")
    cfg, _, _ = load_config([f"--out_dir={tmp_path / 'old'}", "--init_from=resume", "--max_nonfinite_steps=3"])
    assert cfg.max_nonfinite_steps == 3 and cfg.max_iters == 10
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="writable --out_dir"):
        main([f"--data_dir={char_data}", f"--out_dir={tmp_path / 'file'}", "--max_iters=0", *SMALL])


def test_resume_repairs_metrics_cut_by_a_crash(tmp_path):
    from training.logger import keep_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"iter": 0}\n\xff\xfe garbage\n{"iter": "x"}\n{"iter": 10}\n{"iter": 20}')  # no final newline
    keep_metrics(str(path), 20)
    with open(path, "a") as f:
        f.write('{"iter": 30}\n')  # what the resumed run appends
    assert [json.loads(line)["iter"] for line in path.read_text().splitlines()] == [0, 10, 20, 30]

def test_truncated_token_file_is_detected(tmp_path):
    from data.tokens import TokenFileError, load_tokens, write_split_dataset, write_tokens

    path = str(tmp_path / "t.bin")
    write_tokens(path, list(range(100)), vocab_size=100)
    assert load_tokens(path).tolist() == list(range(100))
    with open(path, "r+b") as f:
        f.truncate(64 + 2 * 50 + 1)
    with pytest.raises(TokenFileError, match="truncated"):
        load_tokens(path)
    (tmp_path / "foreign.bin").write_bytes(b"\x00" * 300)
    with pytest.raises(TokenFileError, match="not a headscope token file"):
        load_tokens(str(tmp_path / "foreign.bin"))
    write_tokens(str(tmp_path / "big.bin"), [70000, 1], vocab_size=70001)
    assert load_tokens(str(tmp_path / "big.bin")).dtype.name == "uint32"
    with pytest.raises(TokenFileError, match="must lie in"):
        write_tokens(str(tmp_path / "bad.bin"), [5], vocab_size=5)
    with pytest.raises(TokenFileError, match="writable --out_dir"):  # out_dir is a file
        write_split_dataset(str(tmp_path / "t.bin"), list(range(100)), 100, {})



def test_token_files_take_integer_ids_only(tmp_path):
    import numpy as np

    from data.tokens import TokenFileError, load_tokens, write_tokens

    path = str(tmp_path / "t.bin")
    for ids in (np.array([1.5, 2.0]), torch.tensor([0.0, 3.7]), np.array([True, False])):  # 1.5 was written as 1
        with pytest.raises(TokenFileError, match="integer"):
            write_tokens(path, ids, vocab_size=10)
    write_tokens(path, torch.tensor([3, 9]), vocab_size=10)
    write_tokens(str(tmp_path / "empty.bin"), [], vocab_size=10)  # an empty split (np.asarray([]) is float64)
    assert load_tokens(path).tolist() == [3, 9] and load_tokens(str(tmp_path / "empty.bin")).tolist() == []


@pytest.mark.parametrize("content", [b"[]", b"null", b"\xff{}", b'{"tokenizer": "char"}', b'{"tokenizer": "char", "chars": 5}'])
def test_damaged_meta_json_is_a_clear_error(tmp_path, content):
    from data.loader import read_meta
    from data.tokenizer import TokenizerError, from_meta
    from data.tokens import TokenFileError

    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises((TokenFileError, TokenizerError), match="prepare"):
        from_meta(read_meta(str(tmp_path)))

def test_wandb_offline_logging(char_data, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_DIR", None)  # the run's files go next to its checkpoint, not into the current folder
    proc = subprocess.run([sys.executable, "train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path / 'out'}",
                           "--max_iters=10", "--eval_interval=5", "--wandb_log=True", *SMALL],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert load_checkpoint(str(tmp_path / "out"))["wandb_id"] in runs[0].name


@pytest.mark.parametrize("fake, expected", [
    ("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')",
     "error: --wandb_log=True needs wandb (pip install wandb), or pass --wandb_log=False."),
    ("def init(**kwargs):\n    raise RuntimeError('No API key configured')",
     "error: wandb could not start a run (RuntimeError: No API key configured); log in (wandb login), set "
     "WANDB_MODE=offline, or pass --wandb_log=False.")])
def test_wandb_missing_or_failing_is_one_line(char_data, tmp_path, fake, expected):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(fake + "\n")
    proc = run_script("train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path / 'out'}", "--max_iters=2",
                      "--wandb_log=True", *SMALL, check=False, env={"PYTHONPATH": str(tmp_path / "fake"),
                                                                     "WANDB_MODE": "online"})
    assert one_line_error(proc) == expected


def test_wandb_without_an_account_is_one_error_line(tmp_path, monkeypatch):
    # wandb_log=True (given, or restored on resume) without `wandb login` nor WANDB_MODE=offline: a ConfigError
    import wandb

    from model import GPTConfig
    from training.config import TrainConfig
    from training.logger import RunLogger
    from weights.common import ConfigError

    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    logger = RunLogger(TrainConfig(out_dir=str(tmp_path / "out"), wandb_log=True), master=True)
    with pytest.raises(ConfigError, match=r"UsageError: No API key configured.*WANDB_MODE=offline.*--wandb_log=False"):
        logger.start(GPTConfig(), 0, None)


def test_writes_clear_temporaries_left_by_killed_processes(tmp_path):
    import subprocess
    import sys

    from data.tokens import write_tokens
    from model import save_checkpoint

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()  # a finished process; one that runs
    for name in ("ckpt.pt", "train.bin"):
        (tmp_path / f"{name}.tmp{dead_pid}").write_bytes(b"half a file")
        (tmp_path / f"{name}.tmp{live_pid}").write_bytes(b"being written")
    (tmp_path / f"val.bin.tmp{dead_pid}.tmp{dead_pid}").write_bytes(b"half a staged file")  # data/tokens.py replace_dataset
    save_checkpoint({"x": torch.ones(2)}, str(tmp_path / "ckpt.pt"))
    write_tokens(str(tmp_path / "train.bin"), [1, 2, 3], vocab_size=10)
    write_tokens(str(tmp_path / "val.bin"), [1, 2, 3], vocab_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt.pt", "train.bin", "val.bin", f"ckpt.pt.tmp{live_pid}", f"train.bin.tmp{live_pid}"])


def dataset_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_prepare_that_fails_midway_keeps_the_dataset_it_was_replacing(tmp_path, monkeypatch):
    from data import tokens
    from data.shakespeare_char.prepare import prepare

    (tmp_path / "a.txt").write_text("abc\n" * 100)
    (tmp_path / "b.txt").write_text("xyz\n" * 100)
    prepare(str(tmp_path / "d"), str(tmp_path / "a.txt"))
    before = dataset_files(tmp_path / "d")
    write_tokens = tokens.write_tokens

    def disk_full_at_val(path, *args):
        if "val.bin" in os.path.basename(path):
            raise OSError(28, "No space left on device")
        write_tokens(path, *args)

    monkeypatch.setattr(tokens, "write_tokens", disk_full_at_val)
    with pytest.raises(tokens.TokenFileError, match="No space left on device"):
        prepare(str(tmp_path / "d"), str(tmp_path / "b.txt"))
    assert dataset_files(tmp_path / "d") == before  # the old dataset, whole, and no staged files left
    monkeypatch.undo()
    prepare(str(tmp_path / "d"), str(tmp_path / "b.txt"))
    assert tokens.load_tokens(str(tmp_path / "d" / "val.bin")).size == 40


def test_a_pairs_prepare_that_fails_midway_keeps_its_dataset_and_names_a_bad_out_dir(tmp_path, monkeypatch):
    from data import pairs

    pairs.write_pairs_dataset(str(tmp_path / "d"), [("ab", "ba")] * 5, [("cd", "dc")], {})
    before = dataset_files(tmp_path / "d")
    write_atomic = pairs.write_atomic

    def disk_full_at_val(path, text):
        if "val.jsonl" in os.path.basename(path):
            raise OSError(28, "No space left on device")
        write_atomic(path, text)

    monkeypatch.setattr(pairs, "write_atomic", disk_full_at_val)
    with pytest.raises(ValueError, match="No space left on device"):
        pairs.write_pairs_dataset(str(tmp_path / "d"), [("xy", "yx")] * 5, [("zw", "wz")], {})
    assert dataset_files(tmp_path / "d") == before
    (tmp_path / "file").write_text("")
    proc = run_script("data/reverse/prepare.py", "--max_plays=1", "--n_val=20", f"--out_dir={tmp_path / 'file'}",
                      check=False)
    assert "writable --out_dir" in one_line_error(proc)


def test_checkpoints_lacking_parts_are_one_line_errors(char_data, tmp_path):
    out = tmp_path / "out"
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=5", "--eval_interval=5", *SMALL)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    nano = tmp_path / "nano"  # what nanoGPT's train.py saves: no tokenizer, model_type, train_config or rng
    nano.mkdir()
    torch.save({k: ckpt[k] for k in ("model", "model_args", "optimizer", "iter_num", "best_val_loss")},
               nano / "ckpt.pt")
    grown = tmp_path / "grown"  # a config that names more layers than the weights hold
    grown.mkdir()
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "n_layer": 3}}, grown / "ckpt.pt")
    for folder in (nano, grown):
        data = (folder / "ckpt.pt").read_bytes()
        assert "checkpoint" in one_line_error(run_script("sample.py", f"--out_dir={folder}", check=False))
        assert "checkpoint" in one_line_error(run_script("train.py", f"--out_dir={folder}", "--init_from=resume",
                                                         "--max_iters=10", check=False))
        assert (folder / "ckpt.pt").read_bytes() == data
        assert not (folder / "metrics.jsonl").exists()


def test_a_checkpoint_that_cannot_be_saved_is_a_one_line_error(char_data, tmp_path):
    out = tmp_path / "out"
    (out / "ckpt.pt").mkdir(parents=True)  # in the way of the checkpoint, as a full disk or a read-only folder would be
    proc = run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=5", "--eval_interval=5",
                      "--overwrite=True", *SMALL, check=False)
    assert "cannot save" in one_line_error(proc)
    assert (out / "ckpt.pt").is_dir() and not [p for p in out.iterdir() if ".tmp" in p.name]


def test_float16_resume_keeps_the_loss_scale(char_data, tmp_path, monkeypatch):
    import functools

    import train

    # the scale doubles every 3 clean steps (torch: 2000), so by iteration 10 it has grown past what float16 holds
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=3))
    common = [f"--data_dir={char_data}", "--eval_interval=10", "--dtype=float16", "--device=cpu", "--log_interval=100",
              *SMALL]
    train.main([f"--out_dir={tmp_path / 'full'}", "--max_iters=20", *common])
    train.main([f"--out_dir={tmp_path / 'split'}", "--max_iters=10", *common])
    train.main([f"--out_dir={tmp_path / 'split'}", "--max_iters=20", "--init_from=resume", "--device=cpu"])
    full, split = (load_checkpoint(str(tmp_path / d)) for d in ("full", "split"))
    assert [r["val_loss"] for r in metrics(tmp_path / "full")] == [r["val_loss"] for r in metrics(tmp_path / "split")]
    assert all(torch.equal(full["model"][k], split["model"][k]) for k in full["model"])
    assert full["scaler"] == split["scaler"] and full["scaler"]["scale"] != 65536.0
