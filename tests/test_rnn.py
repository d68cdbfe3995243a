"""RNN encoder-decoder: shapes, masks, decoding against a step-by-step reference, beam, overfit, scripts, bad input."""

import json

import pytest
import torch

from lens.recorder import AttentionRecorder
from model import ConfigError, RNNConfig, RNNEncoderDecoder
from model.config import from_flat
from weights.common import IGNORE_INDEX

V, PAD, BOS, EOS = 15, 12, 13, 14  # 12 ordinary tokens, then the three specials
ROWS = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [3, 3, 1, 0, 11], [5]]
MODES = [dict(attention=True), dict(attention=False), dict(attention=True, cell="lstm", n_layer=2),
         dict(attention=False, cell="lstm", bidirectional=False), dict(attention=True, attn_score="general", n_head=2)]


def scrambled(**kw):
    """A tiny random model with large weights, so that its greedy outputs vary with the input."""
    torch.manual_seed(0)
    model = RNNEncoderDecoder(RNNConfig(**{**dict(n_embd=32, block_size=16, vocab_size=V), **kw})).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if p.dim() >= 2 else 0.3))
        model.lm_head.weight[BOS] -= 8.0  # never emit BOS; EOS keeps a fair chance
    return model


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows with PAD; return (src, src_mask)."""
    S = max(map(len, rows))
    src = torch.tensor([r + [PAD] * (S - len(r)) for r in rows])
    return src, src != PAD


def reference_greedy(model, src, src_mask, steps: int) -> list[list[int]]:
    """Greedy decoding written out: rerun the whole teacher-forced model on the tokens so far, take the argmax."""
    out = []
    for b in range(src.size(0)):
        n = int(src_mask[b].sum())
        tokens = [BOS]
        for _ in range(steps):
            logits, _ = model(src[b:b + 1, :n], torch.tensor([tokens]))
            tokens.append(int(logits[0, -1].argmax()))
            if tokens[-1] == EOS:
                break
        ids = tokens[1:]
        out.append(ids[:ids.index(EOS)] if EOS in ids else ids)
    return out


def test_shapes_loss_and_vocabularies():
    model = scrambled()
    src, src_mask = padded(ROWS)
    tgt = torch.randint(0, 12, (4, 6))
    logits, loss = model(src, tgt, targets=tgt, src_mask=src_mask)
    assert logits.shape == (4, 6, V) and torch.isfinite(loss)
    assert model.encoder.wte is model.decoder.wte and model.lm_head.weight is model.decoder.wte.weight
    _, cache = model.run_with_cache(src, tgt, src_mask=src_mask)
    assert cache["encoder.states"].shape == (4, 7, 32) and cache["decoder.states"].shape == (4, 6, 32)
    assert cache["decoder.cross_attn.pattern"].shape == (4, 1, 6, 7)
    separate = scrambled(source_vocab_size=40, source_block_size=9, attention=False)
    assert separate.encoder.wte.weight.shape == (40, 32) and separate.decoder.wte.weight.shape == (V, 32)
    assert separate(torch.randint(0, 40, (2, 9)), tgt[:2])[0].shape == (2, 6, V)
    assert "decoder.context" in separate.hook_names() and not any("attn" in n for n in separate.hook_names())
    with pytest.raises(ValueError, match="source_block_size"):
        separate(torch.zeros(1, 10, dtype=torch.long), tgt[:1])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_padded_sources_get_no_weight_and_change_nothing(mode):
    model = scrambled(**mode).double()  # float64: batched and single-row matmuls round alike
    src, src_mask = padded(ROWS)
    tgt = torch.randint(0, 12, (4, 5))
    names = [n for n in model.hook_names() if n.endswith("pattern")]
    (logits, _), cache = model.run_with_cache(src, tgt, src_mask=src_mask, names_filter=names or None)
    for b, row in enumerate(ROWS):  # each row alone, unpadded: the same logits
        alone, _ = model(torch.tensor([row]), tgt[b:b + 1])
        torch.testing.assert_close(logits[b], alone[0], atol=1e-9, rtol=1e-9)
    if mode["attention"]:
        pattern = cache["decoder.cross_attn.pattern"]  # (B, nh, T, S)
        assert (pattern.masked_select(~src_mask[:, None, None, :].expand_as(pattern)) == 0).all()
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1], dtype=pattern.dtype))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_greedy_decoding_equals_the_step_by_step_reference(mode):
    model = scrambled(**mode)
    src, src_mask = padded(ROWS)
    cached = model.generate(src, BOS, EOS, src_mask, max_new_tokens=12)
    assert cached == reference_greedy(model, src, src_mask, 12)
    assert cached == model.generate(src, BOS, EOS, src_mask, max_new_tokens=12, use_cache=False)
    assert len({tuple(o) for o in cached}) > 1 and max(map(len, cached)) > 2  # outputs vary: the test can tell


@pytest.mark.parametrize("mode", MODES[:3], ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_beam_size_one_is_greedy_and_wider_beams_score_no_worse(mode):
    model = scrambled(**mode)
    src, src_mask = padded(ROWS)
    greedy = model.generate(src, BOS, EOS, src_mask, max_new_tokens=10)
    assert model.beam_search(src, BOS, EOS, src_mask, beam_size=1, max_new_tokens=10) == greedy

    def logprob(b, ids):  # log p(ids + EOS | source b), teacher-forced
        n = int(src_mask[b].sum())
        logits = model(src[b:b + 1, :n], torch.tensor([[BOS] + ids]))[0].log_softmax(-1)[0]
        return sum(logits[t, i].item() for t, i in enumerate(ids + [EOS]))

    beam = model.beam_search(src, BOS, EOS, src_mask, beam_size=4, max_new_tokens=10, length_penalty=0.0)
    for b in range(len(ROWS)):
        if EOS in model.generate(src[b:b + 1], BOS, EOS, max_new_tokens=10) or len(greedy[b]) < 10:
            assert logprob(b, beam[b]) >= logprob(b, greedy[b]) - 1e-4


def test_recorder_during_decoding_matches_the_teacher_forced_pattern():
    model = scrambled()
    src, src_mask = padded(ROWS[:1])
    with AttentionRecorder(model) as recorder:
        out = model.generate(src, BOS, EOS, src_mask, max_new_tokens=6)
    recorded = recorder.maps(start_len=1)["decoder.cross_attn.pattern"]  # (1, nh, N, S)
    _, cache = model.run_with_cache(src, torch.tensor([[BOS] + out[0]]), names_filter="*pattern")
    pattern = cache["decoder.cross_attn.pattern"]
    torch.testing.assert_close(recorded, pattern[:, :, :recorded.size(2)], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attention", [True, False])
def test_a_tiny_reversal_task_is_overfit(attention):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = RNNEncoderDecoder(RNNConfig(n_embd=48, block_size=8, vocab_size=V, attention=attention))
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 12, (int(n),), generator=gen).tolist() for n in torch.randint(2, 7, (16,), generator=gen)]
    src, src_mask = padded(rows)
    T = max(map(len, rows)) + 1
    tgt = torch.tensor([[BOS] + r[::-1] + [PAD] * (T - 1 - len(r)) for r in rows])
    targets = torch.tensor([r[::-1] + [EOS] + [IGNORE_INDEX] * (T - 1 - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(src, tgt, targets, src_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.05, loss.item()  # chance is log(15) = 2.7
    out = model.generate(src, BOS, EOS, src_mask, max_new_tokens=8)
    assert sum(o == r[::-1] for o, r in zip(out, rows)) >= 15


@pytest.mark.parametrize("kw, match", [
    (dict(cell="rnn_tanh"), "cell must be one of gru, lstm"),
    (dict(n_embd=33), "bidirectional"),
    (dict(attention=False, attn_score="dot"), "attention=False"),
    (dict(attn_score="cosine"), "attn_score must be one of"),
    (dict(attn_weighting="hard", hard_attention_estimator="reinforce", hard_attention_baseline="median"),
     "hard_attention_baseline must be one of"),
])
def test_bad_configs_are_one_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        from_flat(RNNConfig, kw)


@pytest.mark.parametrize("argv, match", [
    (["--model_type=seq2seq", "--cell=gru"], "cell is an option of model_type=rnn, not of model_type=seq2seq"),
    (["--model_type=gpt", "--bidirectional=False"], "bidirectional is an option of model_type=rnn"),
    (["--model_type=rnn", "--qk_norm=True"], "qk_norm is an option of model_type=gpt or bert or seq2seq"),
    (["--model_type=rnn", "--n_encoder_layer=2"], "n_encoder_layer is an option of model_type=seq2seq"),
    (["--model_type=rnn", "--cell=elman"], "cell must be one of gru, lstm"),
])
def test_an_option_of_another_family_is_an_error(argv, match):
    from train import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(argv)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    from conftest import run_script

    folder = tmp_path_factory.mktemp("rnnpairs")
    lines = [f"{w} {i}" for i, w in enumerate(["tide", "storm", "crown", "sword", "night"] * 60)]
    (folder / "pairs.tsv").write_text("\n".join(f"{l}\t{l[::-1]}" for l in lines), encoding="utf-8")
    run_script("data/pairs.py", "--input", str(folder / "pairs.tsv"), "--n_val", "20", "--out_dir", str(folder / "ds"))
    return folder / "ds"


def test_train_resume_and_sample(pairs_dir, tmp_path, capsys):
    import sample
    import train
    from conftest import one_line_error, run_script
    from model import load_checkpoint, save_checkpoint
    from training.families import FAMILIES, model_from_checkpoint

    common = ["--model_type=rnn", f"--data_dir={pairs_dir}", "--n_embd=32", "--block_size=12", "--batch_size=16",
              "--eval_interval=5", "--eval_iters=2", "--warmup_iters=2", "--learning_rate=1e-2",
              "--lr_decay_iters=10", "--device=cpu"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.main([*common, f"--out_dir={straight}", "--max_iters=10"])
    train.main([*common, f"--out_dir={resumed}", "--max_iters=5"])
    train.main([f"--out_dir={resumed}", "--init_from=resume", "--max_iters=10", "--model_type=rnn"])
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 5, 10] and rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert {"val_exact_match", "val_token_accuracy"} <= set(rows[-1])
    a, b = load_checkpoint(str(straight)), load_checkpoint(str(resumed))
    assert a["model_type"] == "rnn" and a["iter_num"] == b["iter_num"] == 10
    for key in a["model"]:  # the resumed run ends where the straight one did
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=1e-6, rtol=1e-5)
    model = model_from_checkpoint(a).eval()  # round trip: the checkpoint rebuilds the trained model
    batches = FAMILIES["rnn"].batches(str(pairs_dir), model.config, 4, "cpu", sample.from_meta(a["tokenizer"]))
    assert batches.evaluate(model)["val_exact_match"] == rows[-1]["val_exact_match"]

    capsys.readouterr()
    attn = tmp_path / "attn"
    sample.main([f"--out_dir={straight}", "--start=tide 7\nsword 1", "--decoding=beam", "--beam_size=1",
                 f"--attention_dir={attn}"])
    beam = capsys.readouterr().out.split("\n\n")[0].splitlines()[:2]
    sample.main([f"--out_dir={straight}", "--start=tide 7\nsword 1"])
    assert capsys.readouterr().out.splitlines() == beam  # beam width 1 is greedy through the script too
    assert "cross-attention" in (attn / "attention.html").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="--ablate is for a GPT"):
        sample.main([f"--out_dir={straight}", "--start=x", "--ablate=0.1"])
    no_attn = RNNEncoderDecoder(from_flat(RNNConfig, {**a["model_args"], "attention": False}))
    save_checkpoint({**a, "model": no_attn.state_dict(), "model_args": {**a["model_args"], "attention": False}},
                    str(tmp_path / "no_attn" / "ckpt.pt"))
    with pytest.raises(ConfigError, match="no attention"):
        sample.main([f"--out_dir={tmp_path / 'no_attn'}", "--start=x", f"--attention_dir={attn}"])
    line = one_line_error(run_script("train.py", "--model_type=seq2seq", "--cell=gru", check=False))
    assert "cell is an option of model_type=rnn" in line  # the script's one line, no traceback
