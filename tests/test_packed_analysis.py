"""Patching and generation on packed documents (--doc_mask): a document behaves as if it were run alone."""

import pytest
import torch

from lens.cache import LensError
from lens.patching import get_act_patch_attn_head_out_by_pos, get_act_patch_resid_pre, get_attr_patch_resid_pre
from model import GPT, GPTConfig, Seq2Seq, Seq2SeqConfig


def runs(pos_emb: str):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                          pos_emb=pos_emb)).eval()
    first, second, other = torch.randint(0, 24, (1, 4)), torch.randint(0, 24, (1, 5)), torch.randint(0, 24, (1, 5))
    other[0, -1] = second[0, -1]  # the corrupted second document differs before its last token
    doc_ids = torch.tensor([[3] * 4 + [8] * 5])
    return model, first, second, other, doc_ids


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_a_packed_rows_tables_are_its_documents_own(pos_emb):
    model, first, second, other, doc_ids = runs(pos_emb)
    answer = 5
    metric = lambda logits: logits[0, -1, answer]  # noqa: E731
    clean, corrupted = torch.cat([first, second], 1), torch.cat([first, other], 1)
    _, packed_cache = model.run_with_cache(clean, doc_ids=doc_ids)
    _, alone_cache = model.run_with_cache(second)
    for table_of in (get_act_patch_resid_pre, get_attr_patch_resid_pre, get_act_patch_attn_head_out_by_pos):
        packed = table_of(model, corrupted, packed_cache, metric, doc_ids=doc_ids)
        alone = table_of(model, other, alone_cache, metric)
        torch.testing.assert_close(packed[:, 4:], alone, atol=1e-5, rtol=1e-5)
        if table_of is get_attr_patch_resid_pre:  # the first document is the same in both runs: no difference
            assert packed[:, :4].abs().max() == 0
        else:  # patching a position of the first document leaves the second document's metric as corrupted
            corrupted_metric = float(metric(model(corrupted, doc_ids=doc_ids)[0]).detach())
            torch.testing.assert_close(packed[:, :4], torch.full_like(packed[:, :4], corrupted_metric))
    unmasked = get_act_patch_resid_pre(model, corrupted, model.run_with_cache(clean)[1], metric)
    alone = get_act_patch_resid_pre(model, other, alone_cache, metric)
    assert not torch.allclose(unmasked[:, 4:], alone, atol=1e-3)  # without doc_ids the documents mix


def test_doc_ids_that_do_not_fit_are_one_sentence_errors():
    model, first, second, other, doc_ids = runs("learned")
    clean, corrupted = torch.cat([first, second], 1), torch.cat([first, other], 1)
    _, cache = model.run_with_cache(clean, doc_ids=doc_ids)
    metric = lambda logits: logits[0, -1, 0]  # noqa: E731
    with pytest.raises(LensError, match="give one document id per token"):
        get_act_patch_resid_pre(model, corrupted, cache, metric, doc_ids=doc_ids[:, :5])
    seq2seq = Seq2Seq(Seq2SeqConfig(vocab_size=24, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    src, tgt = torch.randint(0, 24, (1, 6)), torch.randint(0, 24, (1, 4))
    _, cache = seq2seq.run_with_cache(src, tgt)
    with pytest.raises(LensError, match="an encoder-decoder takes none"):
        get_act_patch_resid_pre(seq2seq, (src, tgt), cache, metric, doc_ids=torch.zeros(1, 6, dtype=torch.long))


def test_generating_from_packed_prompts_continues_each_rows_last_document():
    from model.documents import last_documents

    model, first, second, other, doc_ids = runs("rope")
    packed = torch.cat([first, second], 1)
    logits, _ = model(packed, doc_ids=doc_ids)  # the model's own document mask decides the first new token
    out = model.generate(packed, 6, temperature=0.0, doc_ids=doc_ids)
    assert torch.equal(out[:, :9], packed) and out[0, 9] == logits[0, -1].argmax()
    assert torch.equal(out[:, 9:], model.generate(second, 6, temperature=0.0)[:, 5:])
    sampled = model.generate(packed, 6, doc_ids=doc_ids, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled[:, 9:], model.generate(second, 6, generator=torch.Generator().manual_seed(1))[:, 5:])
    # two rows, the second left-padded: each continues its own last document
    rows = torch.cat([packed, torch.cat([torch.zeros(1, 2, dtype=torch.long), other[:, :2], first, other[:, 3:4]], 1)])
    mask = torch.tensor([[1] * 9, [0, 0] + [1] * 7])
    ids = torch.tensor([[3] * 4 + [8] * 5, [0, 0, 1, 1, 2, 2, 2, 2, 5]])
    both = model.generate(rows, 4, temperature=0.0, attention_mask=mask, doc_ids=ids)
    assert torch.equal(both[1, 9:], model.generate(other[:, 3:4], 4, temperature=0.0)[0, 1:])
    with pytest.raises(ValueError, match="one run of tokens at its end"):
        last_documents(packed, torch.tensor([[8] * 2 + [3] * 2 + [8] * 5]))
    with pytest.raises(ValueError, match="must match the prompts"):
        model.generate(packed, 2, doc_ids=doc_ids[:, 1:])
