"""Encoder-decoder: masks, decoding (cached, batched, beam), data, and the alignment learnt on reversal."""

import json

import pytest
import torch

from model import Seq2Seq, Seq2SeqConfig
from model.seq2seq import cross_attention
from weights.common import IGNORE_INDEX

V, PAD, BOS, EOS = 15, 12, 13, 14  # 12 ordinary tokens, then the three specials


def scrambled(**kw):
    """A tiny random model with large weights, so that its greedy outputs vary with the input."""
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=V, dropout=0.0, bias=True)
    model = Seq2Seq(Seq2SeqConfig(**{**cfg, **kw})).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model.lm_head.weight[BOS] -= 5.0  # never emit BOS; EOS keeps a fair chance
    return model


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows with PAD; return (src, src_mask)."""
    S = max(map(len, rows))
    src = torch.tensor([r + [PAD] * (S - len(r)) for r in rows])
    return src, src != PAD


ROWS = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [3, 3, 1, 0, 11], [5]]


def test_shapes_loss_and_vocabularies():
    model = scrambled()
    src, src_mask = padded(ROWS)
    tgt = torch.randint(0, 12, (4, 6))
    logits, loss = model(src, tgt, targets=tgt, src_mask=src_mask)
    assert logits.shape == (4, 6, V) and torch.isfinite(loss)
    assert model.encoder.wte is model.decoder.wte  # one vocabulary: one embedding
    separate = scrambled(source_vocab_size=40, source_block_size=9)
    assert separate.encoder.wte.weight.shape == (40, 32) and separate.decoder.wte.weight.shape == (V, 32)
    assert separate(torch.randint(0, 40, (2, 9)), tgt[:2])[0].shape == (2, 6, V)
    with pytest.raises(ValueError, match="source_block_size"):
        separate(torch.zeros(1, 10, dtype=torch.long), tgt[:1])
    positions = separate.encoder.wpe.weight.numel() + separate.decoder.wpe.weight.numel()  # 9 x 32 and block x 32
    assert separate.num_params() == sum(p.numel() for p in separate.parameters()) - positions  # the family's count


def test_rotary_positions_cover_a_source_longer_than_the_target():
    model = scrambled(pos_emb="rope", block_size=6, source_block_size=12)
    src = torch.randint(0, 12, (2, 12))
    assert model(src, torch.randint(0, 12, (2, 6)))[0].shape == (2, 6, V)
    assert model.generate(src, BOS, EOS) == model.generate(src, BOS, EOS, use_cache=False)


def test_source_padding_changes_nothing_and_target_is_causal():
    model = scrambled()
    src, src_mask = padded(ROWS)
    tgt = torch.randint(0, 12, (4, 5))
    batch_logits, _ = model(src, tgt, src_mask=src_mask)
    for b, row in enumerate(ROWS):
        alone, _ = model(torch.tensor([row]), tgt[b:b + 1])
        assert torch.allclose(batch_logits[b], alone[0], atol=1e-4)
    other_pad = src.masked_fill(~src_mask, 3)  # what sits under the mask must not matter
    assert torch.allclose(model(other_pad, tgt, src_mask=src_mask)[0], batch_logits, atol=1e-5)
    changed = tgt.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 12
    assert torch.allclose(model(src, changed, src_mask=src_mask)[0][:, :3], batch_logits[:, :3], atol=1e-5)
    tgt_mask = torch.ones_like(tgt, dtype=torch.bool)
    tgt_mask[:, 4:] = False  # explicit target padding at the end: real positions unchanged
    assert torch.allclose(model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)[0][:, :4], batch_logits[:, :4],
                          atol=1e-5)


def test_cached_decoding_equals_uncached_and_reads_the_encoder_once():
    model = scrambled(n_head=3, n_embd=24)  # an odd head count
    src, src_mask = padded(ROWS)
    calls = []
    for block in model.decoder.blocks:
        block.cross_attn.kv_attn.register_forward_hook(lambda *a: calls.append(1))
    cached = model.generate(src, BOS, EOS, src_mask)
    assert len(calls) == len(model.decoder.blocks)  # cross keys/values: once per sequence, not per step
    uncached = model.generate(src, BOS, EOS, src_mask, use_cache=False)
    assert cached == uncached
    assert len({tuple(o) for o in cached}) > 1 and max(map(len, cached)) > 2  # outputs that say something
    for beam in (1, 3):
        assert model.beam_search(src, BOS, EOS, src_mask, beam_size=beam) == \
            model.beam_search(src, BOS, EOS, src_mask, beam_size=beam, use_cache=False)


def test_padding_in_a_batch_changes_no_output():
    model = scrambled()
    src, src_mask = padded(ROWS)
    alone = [model.generate(torch.tensor([row]), BOS, EOS)[0] for row in ROWS]
    assert model.generate(src, BOS, EOS, src_mask) == alone
    beams = [model.beam_search(torch.tensor([row]), BOS, EOS, beam_size=3)[0] for row in ROWS]
    assert model.beam_search(src, BOS, EOS, src_mask, beam_size=3) == beams


def test_beam_size_one_is_greedy_and_wider_beams_score_no_worse():
    model = scrambled()
    src, src_mask = padded(ROWS)
    greedy = model.generate(src, BOS, EOS, src_mask, max_new_tokens=10)
    assert model.beam_search(src, BOS, EOS, src_mask, beam_size=1, max_new_tokens=10) == greedy

    def logprob(row, out):  # summed log-probability of out + EOS (EOS left off when cut by the limit)
        tgt = torch.tensor([[BOS, *out]])
        logp = torch.log_softmax(model(torch.tensor([row]), tgt)[0][0], -1)
        ids = out + [EOS] if len(out) < 10 else out
        return sum(logp[i, t].item() for i, t in enumerate(ids))

    beams = model.beam_search(src, BOS, EOS, src_mask, beam_size=4, max_new_tokens=10, length_penalty=0.0)
    better = [logprob(r, b) - logprob(r, g) for r, b, g in zip(ROWS, beams, greedy)]
    assert all(d >= -1e-4 for d in better) and any(d > 1e-3 for d in better)


def test_a_beam_wider_than_the_vocabulary_never_goes_on_after_eos():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=3, n_embd=18, block_size=6, vocab_size=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    src = torch.randint(0, 4, (2, 1))
    greedy = model.generate(src, 2, 3, max_new_tokens=4)
    for beam_size in (3, 4, 50):  # 4 or more: the first step has fewer than beam_size candidates that go on
        outputs = model.beam_search(src, 2, 3, beam_size=beam_size, max_new_tokens=4)
        assert all(3 not in out for out in outputs), (beam_size, outputs)  # nothing after (or of) EOS
        assert outputs == greedy  # this model's best outputs: EOS right after one token


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0, 2.0])
def test_a_beam_as_wide_as_every_output_finds_the_best_one(length_penalty):
    import itertools

    torch.manual_seed(3)
    model = Seq2Seq(Seq2SeqConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.7)
        model.lm_head.weight[3] -= 0.9  # EOS less sure: outputs of 0 to 3 tokens, which the penalty reorders
    bos, eos, limit = 2, 3, 3
    sources = [[1], [0, 2, 1], [3, 1, 0, 0, 2]]

    def best(row):  # every output of up to `limit` tokens, ranked as documented (the length counts EOS)
        scored = []
        for n in range(limit + 1):
            for out in map(list, itertools.product(range(3), repeat=n)):
                ids = out + [eos] if n < limit else out
                logp = torch.log_softmax(model(torch.tensor([row]), torch.tensor([[bos, *ids[:-1]]]))[0][0], -1)
                scored.append((sum(logp[i, t].item() for i, t in enumerate(ids)) / len(ids) ** length_penalty, out))
        return max(scored)[1]

    src, src_mask = torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.bool)
    for i, row in enumerate(sources):
        src[i, :len(row)], src_mask[i, :len(row)] = torch.tensor(row), True
    expected = [best(row) for row in sources]
    assert expected == [[0, 0, 0], [], [] if length_penalty == 0 else [2, 2, 2]]
    for use_cache in (True, False):  # 4 ** 3 beams: nothing is ever pruned; each source gets its own
        assert model.beam_search(src, bos, eos, src_mask, beam_size=64, max_new_tokens=limit,
                                 length_penalty=length_penalty, use_cache=use_cache) == expected


def test_sampling_is_seeded_and_respects_top_k():
    model = scrambled()
    src, src_mask = padded(ROWS)

    def draw(seed, **kw):
        return model.generate(src, BOS, EOS, src_mask, temperature=1.5, generator=torch.Generator().manual_seed(seed), **kw)

    assert draw(1) == draw(1) and draw(1) != draw(2)
    assert draw(3, top_k=1) == model.generate(src, BOS, EOS, src_mask)
    assert all(len(o) <= 4 for o in draw(4, max_new_tokens=4))


def reversal_batch(gen, n, length_range=(3, 8)):
    """Random token strings (ids 0..11) and their reverses, right-padded: src, src_mask, tgt, targets."""
    rows = [torch.randint(0, 12, (int(torch.randint(*length_range, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]
    src, src_mask = padded(rows)
    T = src.size(1) + 1
    tgt = torch.full((n, T), PAD)
    targets = torch.full((n, T), IGNORE_INDEX)
    for b, r in enumerate(rows):
        tgt[b, :len(r) + 1] = torch.tensor([BOS, *r[::-1]])
        targets[b, :len(r) + 1] = torch.tensor([*r[::-1], EOS])
    return rows, dict(src=src, src_mask=src_mask, tgt=tgt, targets=targets)


def test_reversal_is_learnt_and_cross_attention_shows_the_alignment():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=32, block_size=10, vocab_size=V, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):  # 250 steps was on the edge: 1 vs 2 threads decided whether it passed
        _, batch = reversal_batch(gen, 32)
        _, loss = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    rows, batch = reversal_batch(torch.Generator().manual_seed(1), 200)
    outputs = model.generate(batch["src"], BOS, EOS, batch["src_mask"])
    exact = sum(o == r[::-1] for o, r in zip(outputs, rows)) / len(rows)
    assert exact >= 0.9, exact

    maps = cross_attention(model, batch["src"], batch["tgt"], batch["src_mask"])  # per layer (B, nh, T, S)
    assert {"encoder.blocks.0.attn.pattern", "decoder.blocks.1.cross_attn.pattern"} <= set(model.hook_names())
    hits = {}
    for layer, weights in enumerate(maps):
        for head in [None, *range(weights.size(1))]:
            w = weights.mean(1) if head is None else weights[:, head]  # (B, T, S)
            good = total = 0
            for b, r in enumerate(rows):
                n = len(r)
                picked = w[b, :n, :n].argmax(-1)  # output position i (predicting r[n-1-i]) -> source position
                good += (picked == torch.arange(n - 1, -1, -1)).sum().item()
                total += n
            hits[(layer, head)] = good / total
            if head is None:
                assert torch.allclose(w[b].sum(-1), torch.ones(w.size(1)), atol=1e-5)
                assert (w[b, :, len(rows[b]):] == 0).all()  # padded source positions get no weight
    best = max(hits, key=hits.get)
    assert hits[best] >= 0.9, hits


def test_pairs_files_tasks_and_batches(tmp_path):
    from data.pairs import PairBatches, PairsError, denoise_pairs, read_pairs, reverse_pairs, split_pairs, \
        write_pairs_dataset
    from data.loader import read_meta
    from data.tokenizer import from_meta
    from data.tokens import TokenFileError
    from model.config import ConfigError

    (tmp_path / "p.tsv").write_text("abc\tcba\n\nhello there\tthere hello\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text(json.dumps({"source": "x y", "target": "y x"}) + "\n", encoding="utf-8")
    assert read_pairs(str(tmp_path / "p.tsv")) == [("abc", "cba"), ("hello there", "there hello")]
    assert read_pairs(str(tmp_path / "p.jsonl")) == [("x y", "y x")]
    odd = [("a\u2028b", "page\x0cbreak"), ("next\x85line", "c")]  # characters str.splitlines() breaks at
    (tmp_path / "odd.tsv").write_bytes("".join(f"{s}\t{t}\r\n" for s, t in odd).encode("utf-8"))  # CRLF too
    assert read_pairs(str(tmp_path / "odd.tsv")) == odd
    write_pairs_dataset(str(tmp_path / "odd"), odd, odd, {})  # and the JSONL the dataset is written as
    assert read_pairs(str(tmp_path / "odd" / "train.jsonl")) == odd
    write_pairs_dataset(str(tmp_path / "empty"), odd, [("", "x")], {})
    with pytest.raises(TokenFileError, match="non-empty source"):  # not "raise block_size": that would not help
        PairBatches(str(tmp_path / "empty"), Seq2SeqConfig(vocab_size=40), 2,
                    tokenizer=from_meta(read_meta(str(tmp_path / "empty"))).with_specials(PairBatches.specials))
    from data.pairs import main as prepare_pairs

    for n_val in ("0", "-3"):  # no validation pairs, or a negative count slicing the list from the end
        with pytest.raises(PairsError, match="n_val"):
            prepare_pairs(["--input", str(tmp_path / "p.tsv"), "--out_dir", str(tmp_path / "nv"), "--n_val", n_val])
    (tmp_path / "brace.tsv").write_text("{x}\t}x{\n", encoding="utf-8")  # a .tsv is TSV whatever it starts with
    assert read_pairs(str(tmp_path / "brace.tsv")) == [("{x}", "}x{")]
    (tmp_path / "p.txt").write_text("\n" + json.dumps({"source": "a", "target": "b"}) + "\n", encoding="utf-8")
    assert read_pairs(str(tmp_path / "p.txt")) == [("a", "b")]  # JSONL recognised after a blank line
    (tmp_path / "bad.tsv").write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(PairsError, match="line 1"):
        read_pairs(str(tmp_path / "bad.tsv"))
    assert reverse_pairs(["to be or"], "words") == [("to be or", "or be to")]
    noisy, clean = denoise_pairs(["the quick brown fox jumps over the lazy dog"] * 5, noise=0.3)[0]
    assert clean.startswith("the") and "~" in noisy and len(noisy) < len(clean)

    lines = [f"line {i} " + "ab" * (i % 7) for i in range(3000)]
    train, val = split_pairs(reverse_pairs(lines), n_val=30)
    assert len(val) == 30 and not {s for s, _ in val} & {s for s, _ in train}
    meta = write_pairs_dataset(str(tmp_path / "ds"), train, val, {})
    tok = from_meta(meta).with_specials(PairBatches.specials)
    batches = PairBatches(str(tmp_path / "ds"), Seq2SeqConfig(block_size=24, vocab_size=tok.vocab_size), 8,
                          tokenizer=tok)
    with pytest.raises(ConfigError, match="source_vocab_size"):  # source ids would index past its embedding
        PairBatches(str(tmp_path / "ds"), Seq2SeqConfig(vocab_size=tok.vocab_size, source_vocab_size=5), 8,
                    tokenizer=tok)
    batch = batches.get("train", torch.Generator().manual_seed(0))
    lengths = batch["src_mask"].sum(1)
    assert lengths.max() - lengths.min() <= 1  # grouped by length: little padding
    for b in range(8):
        n = lengths[b].item()
        source = tok.decode(batch["src"][b, :n].tolist())
        assert tok.decode(batch["targets"][b, :n].tolist()) == source[::-1]
        assert batch["targets"][b, n].item() == tok.special_ids["[EOS]"] and (batch["targets"][b, n + 1:] == IGNORE_INDEX).all()
        assert batch["tgt"][b, 0].item() == tok.special_ids["[BOS]"]
        assert torch.equal(batch["tgt"][b, 1:n + 1], batch["targets"][b, :n])


def test_train_and_sample_scripts(tmp_path):
    from conftest import run_script

    lines = "\n".join(f"{w} {i}" for i, w in enumerate(["tide", "storm", "crown", "sword", "night"] * 60))
    (tmp_path / "pairs.tsv").write_text("\n".join(f"{l}\t{l[::-1]}" for l in lines.splitlines()), encoding="utf-8")
    run_script("data/pairs.py", "--input", str(tmp_path / "pairs.tsv"), "--n_val", "20", "--out_dir", str(tmp_path / "ds"))
    out = tmp_path / "out"
    run_script("train.py", "--model_type=seq2seq", f"--data_dir={tmp_path / 'ds'}", f"--out_dir={out}",
               "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=12", "--batch_size=16", "--max_iters=20",
               "--eval_interval=10", "--eval_iters=2", "--warmup_iters=2", "--learning_rate=3e-3")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 10, 20]
    assert {"val_loss", "val_exact_match", "val_token_accuracy"} <= set(rows[-1])
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5  # measured: 3.29 -> 2.16
    # the logged exact match and the sampled lines are the saved model's: decode each pair alone here
    from data.pairs import read_pairs
    from data.tokenizer import from_meta
    from model import load_checkpoint
    from training.families import model_from_checkpoint

    ckpt = load_checkpoint(str(out))
    model, tok = model_from_checkpoint(ckpt).eval(), from_meta(ckpt["tokenizer"])
    bos, eos = tok.special_ids["[BOS]"], tok.special_ids["[EOS]"]
    val = read_pairs(str(tmp_path / "ds" / "val.jsonl"))
    exact = [model.generate(torch.tensor([tok.encode(s)]), bos, eos, max_new_tokens=len(t) + 1)[0] == tok.encode(t)
             for s, t in val]
    assert ckpt["iter_num"] == 20 and rows[-1]["val_exact_match"] == pytest.approx(sum(exact) / len(val))
    sources = ["tide 7", "sword 1"]
    proc = run_script("sample.py", f"--out_dir={out}", "--start=tide 7\nsword 1", "--decoding=beam", "--num_samples=1")
    assert proc.stdout.splitlines() == [tok.decode(model.beam_search(torch.tensor([tok.encode(s)]), bos, eos,
                                                                     beam_size=4)[0]) for s in sources]
    attn = tmp_path / "attn"
    proc = run_script("sample.py", f"--out_dir={out}", "--start=tide 7\nsword 1", f"--attention_dir={attn}")
    greedy = [tok.decode(model.generate(torch.tensor([tok.encode(s)]), bos, eos)[0]) for s in sources]
    assert proc.stdout.splitlines()[:2] == greedy  # then the per-head table
    import numpy as np

    maps = np.load(attn / "attention.npz")
    cross = [k for k in maps.files if "cross_attn" in k]
    assert cross and maps[cross[0]].shape[-1] == len("tide 7")  # (heads, target, source)
    assert "cross-attention" in (attn / "attention.html").read_text(encoding="utf-8")
    proc = run_script("sample.py", f"--out_dir={out}", "--start=" + "t" * 13, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "at most 12" in proc.stderr
    proc = run_script("sample.py", f"--out_dir={out}", "--start=tide 7", "--ablate=0.1", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "GPT" in proc.stderr  # not ignored
    proc = run_script("sample.py", f"--out_dir={out}", "--start=tide 7", "--candidates=3", check=False)
    assert proc.returncode == 1 and "--candidates is for a BERT" in proc.stderr


def test_pair_batches_metrics_on_a_hand_made_case(tmp_path):
    from data.pairs import PairBatches, write_pairs_dataset
    from data.tokenizer import from_meta

    pairs = [("ab", "ba"), ("abc", "cba"), ("c", "c")]
    tok = from_meta(write_pairs_dataset(str(tmp_path), pairs, pairs, {})).with_specials(PairBatches.specials)
    batches = PairBatches(str(tmp_path), Seq2SeqConfig(vocab_size=tok.vocab_size, block_size=8), 2, tokenizer=tok)
    a, b, c, eos = (*tok.encode("abc"), tok.special_ids["[EOS]"])
    batch = batches.collate([([a, b], [b, a]), ([c], [c])])
    assert batch["targets"].tolist() == [[b, a, eos], [c, eos, IGNORE_INDEX]]
    predicted = torch.tensor([[b, a, a], [c, c, eos]])  # right: b, a (not EOS); c (not EOS); padding not counted
    logits = torch.nn.functional.one_hot(predicted, tok.vocab_size).float()
    assert batches.eval_metrics(logits, batch) == {"token_accuracy": 3 / 5}

    class Answers:
        """A model stand-in whose greedy decoding of each source is given."""

        def __init__(self, answers):
            self.answers, self.limits = answers, []

        def generate(self, src, bos, eos_id, src_mask, max_new_tokens):
            self.limits.append(max_new_tokens)
            return [tok.encode(self.answers[tok.decode(row[keep].tolist())]) for row, keep in zip(src, src_mask)]

    model = Answers({"ab": "ba", "abc": "cab", "c": "c"})
    assert batches.evaluate(model) == {"val_exact_match": 2 / 3}  # decoded sorted by length, scored pair by pair
    assert model.limits == [4]  # the longest target and its EOS
    assert batches.evaluate(Answers({"ab": "ba", "abc": "cba", "c": "c"})) == {"val_exact_match": 1.0}


def test_reverse_and_denoise_prepare_scripts(tmp_path):
    import re

    from data.denoise.prepare import prepare as prepare_denoise
    from data.pairs import corpus_lines, read_pairs
    from data.reverse.prepare import prepare as prepare_reverse

    lines = corpus_lines(24, max_plays=1)
    for unit, flip in (("chars", lambda s: s[::-1]), ("words", lambda s: " ".join(reversed(s.split())))):
        meta = prepare_reverse(str(tmp_path / unit), unit=unit, max_len=24, n_val=50, max_plays=1)
        train, val = (read_pairs(str(tmp_path / unit / f"{split}.jsonl")) for split in ("train", "val"))
        assert meta["task"] == f"reverse {unit}" and (meta["train_pairs"], meta["val_pairs"]) == (len(train), 50)
        assert sorted(s for s, _ in train + val) == sorted(lines)  # every distinct line once, none in both splits
        assert all(t == flip(s) for s, t in train + val)
        assert set("".join(s + t for s, t in train + val)) == set(meta["chars"])

    meta = prepare_denoise(str(tmp_path / "denoise"), max_len=24, noise=0.3, n_val=50, max_plays=1)
    pairs = [p for split in ("train", "val") for p in read_pairs(str(tmp_path / "denoise" / f"{split}.jsonl"))]
    assert len(pairs) == len(lines) and sorted(t for _, t in pairs) == sorted(lines)
    masked = kept = 0
    for source, target in pairs:  # each ~ stands for one span (at least a character) of the target
        assert re.fullmatch("(.+?)".join(map(re.escape, source.split("~"))), target, re.DOTALL), (source, target)
        kept += len(source) - source.count("~")
        masked += len(target)
    assert 0.2 < 1 - kept / masked < 0.4  # about --noise of the characters fall in spans
    assert "~" in meta["chars"] and meta["task"] == "denoise"
    again = prepare_denoise(str(tmp_path / "again"), max_len=24, noise=0.3, n_val=50, max_plays=1)
    assert again == meta and (tmp_path / "again" / "val.jsonl").read_bytes() == \
        (tmp_path / "denoise" / "val.jsonl").read_bytes()  # the seed fixes the corruption
