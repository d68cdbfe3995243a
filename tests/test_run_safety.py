"""Nothing lost, nothing silently wrong (#30): out_dir's lock, saving on SIGINT/SIGTERM, what the run says
while it trains, perplexity and bits per character/byte, whole-split evaluation, best.pt, real token counts."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import sample
import train
from conftest import REPO, copy_dataset
from data.loader import LMBatches, batch_generator
from data.tokenizer import GPT2Tokenizer, from_meta
from model import load_checkpoint
from training.families import model_from_checkpoint
from training.config import SampleConfig
from training.interrupt import Interrupted
from training.outdir import OutDirBusy
from weights.common import ConfigError

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=2",
        "--warmup_iters=2", "--learning_rate=3e-3", "--lr_decay_iters=100", "--dropout=0.1", "--device=cpu",
        "--dtype=float32"]


@pytest.fixture(scope="module")
def data(char_data, tmp_path_factory):
    """A private copy of the char dataset."""
    return copy_dataset(char_data, tmp_path_factory.mktemp("safedata"))


def main(data, out, *args):
    """train.main on the tiny model (log line every 5 iterations); returns the metrics rows."""
    train.main([f"--data_dir={data}", f"--out_dir={out}", *TINY, "--log_interval=5", *args])
    return rows(out)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_run(a: list, b: list) -> None:
    """Two runs' records: the same evaluations with the same losses."""
    assert [r["iter"] for r in a] == [r["iter"] for r in b]
    for x, y in zip(a, b):
        assert (x["train_loss"], x["val_loss"]) == pytest.approx((y["train_loss"], y["val_loss"]), abs=1e-6)


def popen_train(data, out, *args):
    """train.py in a subprocess on one thread (as the in-process runs), a line every iteration."""
    return subprocess.Popen([sys.executable, "train.py", f"--data_dir={data}", f"--out_dir={out}", *TINY,
                             "--log_interval=1", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})


def wait_for_line(proc, prefix: str) -> str:
    """Read proc's stdout until a line starts with prefix; return it."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}: {proc.communicate()}")


def test_two_runs_race_for_one_out_dir_and_a_killed_run_leaves_no_lock(data, tmp_path):
    out = tmp_path / "out"
    procs = [popen_train(data, out, "--max_iters=100000", "--eval_interval=3") for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while all(p.poll() is None for p in procs):  # one of them stops at the lock
            assert time.monotonic() < deadline, "both runs are training in one out_dir"
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = procs[1 - procs.index(loser)]
        _, err = loser.communicate()
        assert loser.returncode == 1 and err.strip().splitlines() == [
            f"error: out_dir {out} is in use by another run (pid {winner.pid}); wait for it to end or stop it, "
            "or pick another --out_dir."], err
        wait_for_line(winner, "saved")
        for args in (["--init_from=resume"], ["--init_from=resume", "--eval_only=True"], ["--overwrite=True"]):
            with pytest.raises(OutDirBusy, match=f"pid {winner.pid}"):
                train.main([f"--data_dir={data}", f"--out_dir={out}", *TINY, *args])
        winner.kill()  # SIGKILL: nothing of it runs any more, the OS drops its lock
        winner.wait()
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    saved = load_checkpoint(str(out))["iter_num"]
    assert (out / ".lock").read_text().strip() == str(winner.pid)  # the dead holder's file is still there
    main(data, out, "--init_from=resume", f"--max_iters={saved + 1}")  # and blocks nothing
    assert load_checkpoint(str(out))["iter_num"] == saved + 1


def test_sigint_saves_a_checkpoint_that_resumes_exactly(data, tmp_path):
    """A real SIGINT to a running train.py: it finishes its step, saves, says so and exits 130; resumed, the
    run is the straight run (losses and weights), wherever the signal landed."""
    out = tmp_path / "split"
    proc = popen_train(data, out, "--max_iters=100000", "--eval_interval=10")
    wait_for_line(proc, "iter 3/")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ckpt = load_checkpoint(str(out))
    n = ckpt["iter_num"]
    assert n >= 3 and ckpt["evaluated"] is False
    assert err.strip().splitlines() == [
        "SIGINT: stopping after this step to save a checkpoint (press Ctrl-C again to quit at once, saving nothing)",
        f"SIGINT: saved {out / 'ckpt.pt'} at iter {n} of 100000; continue with python train.py --out_dir={out} "
        "--init_from=resume"]
    end = (n // 10 + 2) * 10  # two evaluations past the interrupt
    resumed = main(data, out, "--init_from=resume", f"--max_iters={end}")
    straight = main(data, tmp_path / "straight", f"--max_iters={end}", "--eval_interval=10")
    same_run(resumed, straight)
    a, b = (load_checkpoint(str(d))["model"] for d in (out, tmp_path / "straight"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def signal_at_evaluation(monkeypatch, at_iter: int, signals: int = 1):
    """Send this process SIGINT (`signals` times) while evaluating at iteration at_iter."""
    estimate = train.estimate_loss

    def evaluate(model, *args):
        if train_iter[0] == at_iter:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return estimate(model, *args)

    train_iter = [None]
    evaluate_and_save = train.evaluate_and_save

    def tracked(run, *args):
        train_iter[0] = run.iter_num
        return evaluate_and_save(run, *args)

    monkeypatch.setattr(train, "estimate_loss", evaluate)
    monkeypatch.setattr(train, "evaluate_and_save", tracked)


def test_sigint_during_evaluation_keeps_the_best_model_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    """always_save_checkpoint=False: ckpt.pt held the best model, so it is kept as best.pt before ckpt.pt gets
    the state after the step that follows the evaluation."""
    signal_at_evaluation(monkeypatch, at_iter=10)
    out = tmp_path / "out"
    with pytest.raises(Interrupted) as stopped:
        main(data, out, "--max_iters=30", "--eval_interval=5", "--always_save_checkpoint=False")
    assert stopped.value.code == 130
    best = load_checkpoint(str(out / "best.pt"))
    assert str(stopped.value) == (f"SIGINT: saved {out / 'ckpt.pt'} at iter 11 of 30; the best model so far (val loss "
                                  f"{best['best_val_loss']:.4f}) is {out / 'best.pt'}; continue with python train.py "
                                  f"--out_dir={out} --init_from=resume")
    assert best["iter_num"] == 10 and load_checkpoint(str(out))["iter_num"] == 11
    monkeypatch.undo()
    resumed = main(data, out, "--init_from=resume")
    straight = main(data, tmp_path / "straight", "--max_iters=30", "--eval_interval=5", "--always_save_checkpoint=False")
    same_run(resumed, straight)
    best_iter = min(straight, key=lambda r: r["val_loss"])["iter"]
    assert load_checkpoint(str(out / "best.pt"))["iter_num"] == best_iter  # keep_best from the interrupt on
    assert "saved" in capsys.readouterr().out


def test_a_second_signal_during_the_save_quits_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    main(data, out, "--max_iters=5", "--eval_interval=5")
    kept = (out / "ckpt.pt").read_bytes()
    save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):  # half a file written, then Ctrl-C twice
        f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(Interrupted) as stopped:
        main(data, out, "--init_from=resume", "--max_iters=10")
    assert str(stopped.value) == (f"interrupted, nothing more saved; {out / 'ckpt.pt'} holds iter 5: continue with "
                                  "--init_from=resume")
    assert (out / "ckpt.pt").read_bytes() == kept
    assert sorted(os.listdir(out)) == [".lock", "ckpt.pt", "metrics.jsonl"]  # no temporary file left


def test_the_interrupt_message_is_true_before_any_checkpoint(data, tmp_path, monkeypatch):
    def ctrl_c(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "build_model", ctrl_c)
    with pytest.raises(Interrupted, match="^interrupted, nothing more saved; no checkpoint was saved$") as stopped:
        main(data, tmp_path / "out", "--max_iters=5")
    assert stopped.value.code == 130


def test_progress_lines_saves_and_the_summary(data, tmp_path, capsys):
    out = tmp_path / "out"
    records = main(data, out, "--max_iters=10", "--eval_interval=5", "--keep_best=True")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("iter ")] == ["iter 5/10 (50%)", "iter 10/10 (100%)"]
    assert all(", ETA " in line for line in lines if line.startswith("iter "))
    saves = [line for line in lines if line.startswith("saved")]
    assert saves[0].startswith(f"saved {out / 'ckpt.pt'} at iter 5 (val loss {records[1]['val_loss']:.4f}, the best so far")
    assert len(saves) == 2
    done = lines[-1]
    assert done.startswith("done: iter 10/10, 10 iterations in ") and "tokens/s" in done
    best = min(r["val_loss"] for r in records[1:])
    assert f"val loss {records[-1]['val_loss']:.4f}, best {best:.4f}; checkpoint {out / 'ckpt.pt'} (iter 10)" in done


def test_keep_best_keeps_the_best_beside_the_last(data, tmp_path, monkeypatch, capsys):
    script = iter([4.0, 3.0, 3.5, 2.5, 2.7])  # val loss at iterations 0, 2, 4, 6, 8
    monkeypatch.setattr(train, "estimate_loss", lambda *a: dict.fromkeys(("train_loss", "val_loss"), next(script)))
    out = tmp_path / "out"
    main(data, out, "--max_iters=8", "--eval_interval=2", "--keep_best=True")
    last, best = load_checkpoint(str(out)), load_checkpoint(str(out / "best.pt"))
    assert (last["iter_num"], best["iter_num"], best["best_val_loss"]) == (8, 6, 2.5)
    assert not torch.equal(last["model"]["lm_head.weight"], best["model"]["lm_head.weight"])
    monkeypatch.undo()
    main(data, out, "--init_from=resume", "--max_iters=9")  # resumes from the last
    assert load_checkpoint(str(out))["iter_num"] == 9
    capsys.readouterr()
    for name, ckpt in (("ckpt.pt", load_checkpoint(str(out))), ("best.pt", best)):
        model = sample.load_model(SampleConfig(out_dir=str(out), checkpoint=name), "cpu")[0]
        assert torch.equal(model.lm_head.weight, ckpt["model"]["lm_head.weight"])
        sample.main([f"--out_dir={out}", f"--checkpoint={name}", "--max_new_tokens=5", "--num_samples=1",
                     "--device=cpu", "--start=ab"])
        assert capsys.readouterr().out.startswith("ab")


def test_perplexity_and_bits_per_character_are_logged(data, tmp_path):
    records = main(data, tmp_path / "out", "--max_iters=5", "--eval_interval=5")
    for r in records:
        for split in ("train", "val"):
            assert r[f"{split}_ppl"] == pytest.approx(math.exp(r[f"{split}_loss"]), rel=1e-12)
            assert r[f"{split}_bpc"] == pytest.approx(r[f"{split}_loss"] / math.log(2), rel=1e-12)  # a char a token


def test_bits_per_byte_count_the_utf8_bytes_of_gpt2_targets():
    tokenizer = GPT2Tokenizer()
    text = "Ceci n'est pas une pipe: \u00e9t\u00e9, \u4e2d\u6587, \U0001f600 and <|endoftext|> once."
    ids = tokenizer.encode(text)
    batches = LMBatches.__new__(LMBatches)
    batches.tokenizer, batches.lengths = tokenizer, None
    targets = torch.tensor([ids])
    separator = text.encode().count(b"<|endoftext|>") * (len(b"<|endoftext|>") - 1)  # one byte, a separator
    assert batches.units({"targets": targets}) == len(text.encode()) - separator


def whole_split_loss(model, tokens, T: int) -> tuple[float, int]:
    """The mean next-token loss over every non-overlapping window of `tokens`, computed here window by window."""
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, T):
        window = torch.tensor(tokens[start:start + T + 1], dtype=torch.long)[None]
        logits = model(window[:, :-1])
        logits = logits[0] if isinstance(logits, tuple) else logits  # (logits, loss) once forward returns both
        total += F.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return total / count, count


def test_eval_iters_all_scores_every_token_of_val_and_of_a_text_file(data, char_data, tmp_path, capsys):
    from data.tokens import load_tokens

    out = tmp_path / "out"
    main(data, out, "--max_iters=5", "--eval_interval=5")
    ckpt = load_checkpoint(str(out))
    model = model_from_checkpoint(ckpt).eval()
    tokenizer = from_meta(ckpt["tokenizer"])
    held_out = "".join(reversed((char_data / "input.txt").read_text(encoding="utf-8")[:3001]))  # another text, the same characters
    (tmp_path / "held_out.txt").write_text(held_out, encoding="utf-8")
    capsys.readouterr()
    train.main([f"--out_dir={out}", "--init_from=resume", "--eval_only=True", "--eval_iters=all",
                f"--eval_file={tmp_path / 'held_out.txt'}", "--batch_size=7"])
    printed = capsys.readouterr().out.splitlines()[-1]
    with torch.no_grad():
        val_loss, val_count = whole_split_loss(model, load_tokens(str(data / "val.bin")).tolist(), 16)
        file_loss, file_count = whole_split_loss(model, tokenizer.encode(held_out), 16)
    assert (val_count, file_count) == (len(load_tokens(str(data / "val.bin"))) - 1, 3000)
    assert printed == (f"step 5: val loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f}, {val_loss / math.log(2):.3f} "
                       f"bpc, every window: {val_count:,} tokens), file loss {file_loss:.4f} (ppl "
                       f"{math.exp(file_loss):.2f}, {file_loss / math.log(2):.3f} bpc, every window: 3,000 tokens)")
    (tmp_path / "cyrillic.txt").write_text("To be\nor \u043d\u0435 to be", encoding="utf-8")
    with pytest.raises(train.UserError, match=r"cyrillic.txt line 2, column 4: character '\u043d' \(U\+043D\) is not in "
                                              r"the model's vocabulary of 65 characters"):
        train.main([f"--out_dir={out}", "--init_from=resume", "--eval_only=True",
                    f"--eval_file={tmp_path / 'cyrillic.txt'}"])


def test_resume_on_another_vocabulary_names_that_dataset(data, tmp_path):
    from data.shakespeare_char.prepare import prepare

    out = tmp_path / "out"
    main(data, out, "--max_iters=2", "--eval_interval=2")
    (tmp_path / "other.txt").write_text("abcabc" * 300, encoding="utf-8")
    prepare(str(tmp_path / "other"), str(tmp_path / "other.txt"))
    with pytest.raises(ConfigError, match=f"differs from dataset {tmp_path / 'other'} \\(3\\)"):
        train.main([f"--out_dir={out}", "--init_from=resume", f"--data_dir={tmp_path / 'other'}", "--max_iters=4"])


def test_seq2seq_counts_its_real_tokens(tmp_path):
    """metrics.jsonl's `tokens` (and so tokens/s) are the sources' and targets' real tokens, not batch x block."""
    from data.pairs import PairBatches, write_pairs_dataset
    from model import Seq2SeqConfig

    lines = [f"{w} {i}" for i, w in enumerate(["tide", "storm", "crown", "sword", "night"] * 20)]
    write_pairs_dataset(str(tmp_path / "ds"), [(line, line[::-1]) for line in lines], [("ab", "ba")] * 4, {})
    sizes = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=12", "--batch_size=8", "--eval_iters=1"]
    train.main(["--model_type=seq2seq", f"--data_dir={tmp_path / 'ds'}", f"--out_dir={tmp_path / 'out'}", *sizes,
                "--max_iters=6", "--eval_interval=3", "--device=cpu"])
    ckpt = load_checkpoint(str(tmp_path / "out"))
    tokenizer = from_meta(ckpt["tokenizer"])
    batches = PairBatches(str(tmp_path / "ds"), Seq2SeqConfig(**ckpt["model_args"]), 8, "cpu", tokenizer)
    real = []
    for it in range(6):
        batch = batches.get("train", batch_generator(ckpt["train_config"]["seed"], "train", it, 0))
        real.append(int(batch["src_mask"].sum()) + int((batch["targets"] != -100).sum()))
    assert [r["tokens"] for r in rows(tmp_path / "out")] == [0, sum(real[:3]), sum(real)]
    assert sum(real) != 6 * 8 * 12  # the nominal count (batch x block_size) was 576
