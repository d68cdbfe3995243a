"""Head detectors: patterns by hand, a trained model's induction head (with the ablation check), errors."""

import pytest
import torch
import torch.nn.functional as F

from lens import detectors
from model import BERT, GPT, BERTConfig, GPTConfig, Seq2Seq, Seq2SeqConfig
from lens.cache import LensError
from lens.interventions import ablate_heads
from model.generation import pack

V, HALF = 24, 8  # vocabulary, length of the random half that is repeated


def train_on_repeated_tokens(steps: int = 160) -> GPT:
    """A 2-layer attention-only GPT trained on [r, r] sequences of random tokens r (fixed seed)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=V, block_size=2 * HALF, attn_only=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        half = torch.randint(0, V, (32, HALF), generator=generator)
        tokens = torch.cat([half, half], dim=1)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def repeated_half_loss(model, tokens, hooks=()) -> float:
    """Mean cross-entropy of the predictions of the second copy's tokens (its first one excepted)."""
    with torch.no_grad(), model.hooks(hooks):
        logits, _ = model(tokens[:, :-1])
    return F.cross_entropy(logits[:, HALF:].reshape(-1, V), tokens[:, HALF + 1:].reshape(-1)).item()


def test_trained_induction_head_is_found_and_matters_most():
    model = train_on_repeated_tokens()
    scores = detectors.induction_scores(model, HALF, batch=16, seed=5)
    assert scores.shape == (2, 2) and (scores >= 0).all() and (scores <= 1).all()
    best = divmod(int(scores.argmax()), 2)
    assert scores.max() > 0.3 and scores.flatten().sort().values[0] < 0.15  # a clear winner, not uniform
    tokens = detectors.repeated_random_tokens(V, HALF, batch=64, seed=6)
    base = repeated_half_loss(model, tokens)
    assert base < 0.5  # the model copies the first half (log V = 3.18 without copying)
    damage = {(layer, head): repeated_half_loss(model, tokens, ablate_heads([(layer, head)])) - base
              for layer in range(2) for head in range(2)}
    assert max(damage, key=damage.get) == best, (scores, damage)
    assert damage[best] > 1.0


def test_named_patterns_and_scores_by_hand():
    tokens = torch.tensor([5, 1, 2, 5, 1, 3])
    prev = detectors.get_previous_token_head_detection_pattern(tokens)
    assert prev[3, 2] == 1 and prev.sum() == 5
    dup = detectors.get_duplicate_token_head_detection_pattern(tokens)
    assert dup.nonzero().tolist() == [[3, 0], [4, 1]]
    ind = detectors.get_induction_head_detection_pattern(tokens)
    assert ind.nonzero().tolist() == [[3, 1], [4, 2]]  # after the earlier 5 came 1, after the earlier 1 came 2
    both = detectors.get_duplicate_token_head_detection_pattern(tokens, causal=False)
    assert both.nonzero().tolist() == [[0, 3], [1, 4], [3, 0], [4, 1]]
    # a pattern that is half on the previous token: "mul" share 0.5 on rows 1.. (row 0 all on itself)
    pattern = torch.zeros(6, 6)
    pattern[0, 0] = 1
    for i in range(1, 6):
        pattern[i, i - 1] = pattern[i, i] = 0.5
    assert detectors.compute_head_attention_similarity_score(pattern, prev) == pytest.approx(2.5 / 6)
    assert detectors.compute_head_attention_similarity_score(pattern, prev, exclude_current_token=True) == 1.0


def test_detectors_on_gpt_bert_and_the_encoder_decoder():
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    tokens = torch.randint(0, 20, (3, 12))
    sink = detectors.attention_sink_scores(gpt, tokens)
    _, cache = gpt.run_with_cache(tokens)
    expected = cache["blocks.1.attn.pattern"][:, :, 1:, 0].mean(dim=(0, 2))
    torch.testing.assert_close(sink[1], expected)
    only = detectors.detect_head(gpt, tokens, "previous_token_head", heads=[(1, 0)])
    assert (only[0] == -1).all() and only[1, 1] == -1 and 0 <= only[1, 0] <= 1
    bert = BERT(BERTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    scores = detectors.detect_head(bert, tokens, "duplicate_token_head", error_measure="abs")
    assert scores.shape == (1, 2) and (scores <= 1).all()
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    src, tgt = torch.randint(0, 20, (2, 6)), torch.randint(0, 20, (2, 6))
    align = detectors.reversal_alignment(6, 6)
    assert align.flip(1).equal(torch.eye(6))  # the anti-diagonal
    scores = detectors.alignment_scores(s2s, src, tgt, align)
    _, cache = s2s.run_with_cache(src, tgt)
    by_hand = (cache["decoder.blocks.0.cross_attn.pattern"][:, 1] * align).sum(dim=(1, 2)) / 6  # rows sum to 1
    assert scores[0, 1] == pytest.approx(by_hand.mean().item(), abs=1e-6)
    encoder = detectors.detect_head(s2s, (src, tgt), "previous_token_head", stack="encoder")
    assert encoder.shape == (2, 2)


def test_bad_detector_requests_are_clear_errors():
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    tokens = torch.randint(0, 20, (1, 10))
    with pytest.raises(LensError, match=r"head \(1, 2\) does not exist"):
        detectors.detect_head(gpt, tokens, "induction_head", heads=[(1, 2)])
    with pytest.raises(LensError, match="unknown head type"):
        detectors.detect_head(gpt, tokens, "copy_head")
    with pytest.raises(LensError, match="detection pattern is"):
        detectors.detect_head(gpt, tokens, torch.eye(9))
    with pytest.raises(LensError, match="encoder-decoder"):
        detectors.alignment_scores(gpt, tokens, tokens, torch.eye(10))
    with pytest.raises(LensError, match="block_size"):
        detectors.induction_scores(gpt, seq_len=9)
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    with pytest.raises(LensError, match="alignment_scores"):
        detectors.detect_head(s2s, (tokens[:, :5], tokens[:, :5]), "induction_head", attention="cross_attn")


def test_one_sequence_without_a_batch_dim_and_too_short_sequences():
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    tokens = torch.randint(0, 20, (10,), generator=torch.Generator().manual_seed(0))
    for name in detectors.HEAD_NAMES:  # (T,) ids score as the batch of one (1, T)
        torch.testing.assert_close(detectors.detect_head(gpt, tokens, name), detectors.detect_head(gpt, tokens[None], name))
    for name in detectors.HEAD_NAMES:  # one token has no previous or earlier token: NaN with exclude_bos before
        with pytest.raises(LensError, match="at least 2 tokens"):
            detectors.detect_head(gpt, tokens[None, :1], name, exclude_bos=True)
    assert detectors.detect_head(gpt, tokens[None, :2], "previous_token_head").isfinite().all()


def padded(rows: list[torch.Tensor], left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded with id 0 (a real token id too, so padding looks like duplicates) and their mask."""
    ids, mask = pack(rows if left else [r.flip(0) for r in rows])
    return (ids, mask) if left else (ids.flip(1), mask.flip(1))


def test_padded_batches_score_each_row_as_it_scores_alone():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    bert = BERT(BERTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    rows = [torch.randint(0, 20, (n,), generator=g) for n in (12, 5, 8)]
    rows[1][2] = rows[2][4] = 0  # the pad id as a real token: after left padding it precedes the row's first token
    for model, left in ((gpt, True), (bert, False)):  # GPT generates from left padding, BERT pads on the right
        ids, mask = padded(rows, left)
        for name in detectors.HEAD_NAMES:
            for options in ({}, {"error_measure": "abs"}, {"exclude_bos": True, "exclude_current_token": True}):
                alone = [detectors.detect_head(model, r[None], name, **options) for r in rows]
                for i in range(len(rows)):
                    row = detectors.detect_head(model, ids[i:i + 1], name, attention_mask=mask[i:i + 1], **options)
                    torch.testing.assert_close(row, alone[i], atol=1e-6, rtol=0)
                batch = detectors.detect_head(model, ids, name, attention_mask=mask, **options)
                torch.testing.assert_close(batch, torch.stack(alone).mean(0), atol=1e-6, rtol=0)
        _, cache = model.run_with_cache(ids, attention_mask=mask)  # a cache of the masked run: the same scores
        torch.testing.assert_close(detectors.detect_head(model, ids, "duplicate_token_head", cache=cache,
                                                         attention_mask=mask),
                                   detectors.detect_head(model, ids, "duplicate_token_head", attention_mask=mask))
    unmasked = detectors.detect_head(gpt, ids, "duplicate_token_head")  # pad ids counted as duplicates
    assert not torch.allclose(unmasked, detectors.detect_head(gpt, ids, "duplicate_token_head", attention_mask=mask),
                              atol=1e-3)
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    srcs = [torch.randint(0, 20, (n,), generator=g) for n in (6, 3, 5)]
    tgts = [torch.randint(0, 20, (n,), generator=g) for n in (4, 6, 2)]
    (src, src_mask), (tgt, tgt_mask) = padded(srcs, left=False), padded(tgts, left=False)
    align = detectors.reversal_alignment(6, 6)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        one = dict(attention_mask=(src_mask[i:i + 1], tgt_mask[i:i + 1]))
        for stack in ("encoder", "decoder"):
            torch.testing.assert_close(
                detectors.detect_head(s2s, (src[i:i + 1], tgt[i:i + 1]), "previous_token_head", stack=stack, **one),
                detectors.detect_head(s2s, (s[None], t[None]), "previous_token_head", stack=stack), atol=1e-6, rtol=0)
        torch.testing.assert_close(detectors.alignment_scores(s2s, src[i:i + 1], tgt[i:i + 1], align, **one),
                                   detectors.alignment_scores(s2s, s[None], t[None], align[:len(t), :len(s)]),
                                   atol=1e-6, rtol=0)


def test_bad_padding_masks_for_detectors_are_clear_errors():
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    ids, mask = padded([torch.arange(1, 9), torch.arange(1, 2)])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 7\) but the batch is \(2, 8\)"):
        detectors.detect_head(gpt, ids, "previous_token_head", attention_mask=mask[:, 1:])
    with pytest.raises(LensError, match="at least 2 tokens.*the shortest row has 1"):
        detectors.detect_head(gpt, ids, "previous_token_head", attention_mask=mask)
    with pytest.raises(ValueError, match="all padding"):
        detectors.detect_head(gpt, ids, "previous_token_head", attention_mask=torch.zeros_like(mask))
    with pytest.raises(LensError, match="takes no attention_mask"):
        detectors.induction_scores(gpt, seq_len=4, attention_mask=mask)
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    with pytest.raises(LensError, match=r"attention_mask=\(src_mask, tgt_mask\)"):
        detectors.detect_head(s2s, (ids, ids), "previous_token_head", attention_mask=mask)


FAMILY_MODELS = {  # family -> a builder of a small model with that position kind
    "gpt": lambda pos: GPT(GPTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=20, block_size=16, pos_emb=pos)),
    "bert": lambda pos: BERT(BERTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=20, block_size=16, pos_emb=pos)),
    "roberta": lambda pos: BERT(BERTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=20, block_size=16, pos_emb=pos,
                                           position_offset=2 if pos == "learned" else 0, type_vocab_size=1)),
    "seq2seq": lambda pos: Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=20, block_size=16,
                                                 pos_emb=pos)),
}


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("left", [False, True])
def test_a_padded_row_scores_and_looks_as_it_does_alone(family, pos, left):
    """README's promise (left or right padding), for every family x padding side x position kind: a padded row's
    attention patterns (what the views show), hidden states and detector scores equal the row's run alone."""
    from lens.recorder import real_positions, strip_padding

    torch.manual_seed(0)
    model = FAMILY_MODELS[family](pos).eval()
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 20, (n,), generator=g) for n in (9, 5)]
    ids, mask = padded(rows, left)
    inputs, alone_inputs = ((ids, ids), (rows[1][None], rows[1][None])) if family == "seq2seq" else ((ids,), (rows[1][None],))
    masks = dict(src_mask=mask, tgt_mask=mask) if family == "seq2seq" else dict(attention_mask=mask)
    stack = "encoder" if family == "seq2seq" else None
    _, cache = model.run_with_cache(*inputs, **masks, names_filter="*attn.pattern")
    _, alone = model.run_with_cache(*alone_inputs, names_filter="*attn.pattern")
    real = real_positions(mask, tuple(ids.shape))[1]
    for name, pattern in alone.items():
        torch.testing.assert_close(strip_padding(cache[name][1], real, real), pattern[0], atol=1e-6, rtol=0)
    one = (mask[1:], mask[1:]) if family == "seq2seq" else mask[1:]
    for detector in ("previous_token_head", "duplicate_token_head"):
        torch.testing.assert_close(
            detectors.detect_head(model, tuple(x[1:] for x in inputs) if family == "seq2seq" else ids[1:], detector,
                                  stack=stack, attention_mask=one),
            detectors.detect_head(model, alone_inputs if family == "seq2seq" else alone_inputs[0], detector, stack=stack),
            atol=1e-6, rtol=0)
    if family != "seq2seq":
        torch.testing.assert_close(detectors.attention_sink_scores(model, ids[1:], attention_mask=mask[1:]),
                                   detectors.attention_sink_scores(model, rows[1][None]), atol=1e-6, rtol=0)


def test_sink_detectors_take_masks_and_segments():
    """attention_sink_scores and BERT's [SEP] sink by hand, on a right-padded batch of sentence pairs: each row
    counts as it does alone, and token_type_ids reach the model."""
    torch.manual_seed(0)
    model = BERT(BERTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=20, block_size=16)).eval()
    CLS, SEP = 1, 2
    rows = [torch.tensor([CLS, 5, 6, 7, SEP, 8, 9, SEP]), torch.tensor([CLS, 11, SEP, 12, 13, SEP])]
    types = [torch.tensor([0] * 5 + [1] * 3), torch.tensor([0] * 3 + [1] * 3)]
    ids, mask = padded(rows, left=False)
    type_ids, _ = padded(types, left=False)
    sep = detectors.separator_sink_scores(model, ids, SEP, attention_mask=mask, token_type_ids=type_ids)
    sink = detectors.attention_sink_scores(model, ids, attention_mask=mask, token_type_ids=type_ids)
    by_hand_sep, by_hand_first = [], []
    for row, t in zip(rows, types):
        _, cache = model.run_with_cache(row[None], token_type_ids=t[None], names_filter="*attn.pattern")
        patterns = torch.stack([cache[f"blocks.{l}.attn.pattern"][0] for l in range(2)])  # (L, nh, T, T)
        by_hand_sep.append(patterns[:, :, 1:][..., row == SEP].sum(-1).mean(-1))
        by_hand_first.append(patterns[:, :, 1:, 0].mean(-1))
    torch.testing.assert_close(sep, torch.stack(by_hand_sep).mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(sink, torch.stack(by_hand_first).mean(0), atol=1e-6, rtol=0)
    assert not torch.allclose(sep, detectors.separator_sink_scores(model, ids, SEP, attention_mask=mask), atol=1e-4)
    with pytest.raises(LensError, match="no \\[SEP\\]"):
        detectors.separator_sink_scores(model, ids, 19, attention_mask=mask)
    with pytest.raises(LensError, match="pass sep_id"):
        detectors.separator_sink_scores(model, ids, attention_mask=mask)
    with pytest.raises(LensError, match="no segment embeddings"):
        detectors.detect_head(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=20, block_size=16)), ids,
                              "previous_token_head", token_type_ids=type_ids)
