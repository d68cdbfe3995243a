"""Patching and generation on packed documents (--doc_mask): a document behaves as if it were run alone."""

import pytest
import torch

import sample
from conftest import run_script
from data.documents import document_ids
from data.tokenizer import CharTokenizer
from lens.cache import LensError
from lens.path_patching import PathPatch, direct_path_table, path_patch
from lens.patching import get_act_patch_attn_head_out_by_pos, get_act_patch_resid_pre, get_attr_patch_resid_pre
from model import GPT, GPTConfig, Seq2Seq, Seq2SeqConfig, save_checkpoint
from training.config import SampleConfig, to_dict
from training.decoding import last_documents_of
from weights.common import ConfigError


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


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_path_patching_a_packed_row_gives_its_documents_own_result(pos_emb):
    model, first, second, other, doc_ids = runs(pos_emb)
    metric = lambda logits: logits[0, -1, 5]  # noqa: E731
    clean, corrupted = torch.cat([first, second], 1), torch.cat([first, other], 1)
    senders = [(0, 0), (0, 1), (0, "mlp"), "embed"]
    final = [PathPatch([(0, 1), "embed"]), PathPatch([(0, 0)], [(1, 1, "k"), "resid_final"])]

    def results(clean, corrupted, doc_ids=None):
        layout = {} if doc_ids is None else {"doc_ids": doc_ids}
        clean_cache, corrupted_cache = model.run_with_cache(clean, **layout)[1], model.run_with_cache(corrupted, **layout)[1]
        return [direct_path_table(model, corrupted, clean_cache, corrupted_cache, metric, senders, which, **layout)
                for which in "qkv"] + [path_patch(model, corrupted, clean_cache, corrupted_cache, metric, final, **layout)]

    alone = results(second, other)
    assert alone[0].abs().max() > 0.01  # the tables hold effects, not zeros
    for packed, own in zip(results(clean, corrupted, doc_ids), alone):
        torch.testing.assert_close(packed, own, atol=1e-5, rtol=1e-5)
    ignored = direct_path_table(model, corrupted, model.run_with_cache(clean)[1], model.run_with_cache(corrupted)[1],
                                metric, senders, "q")
    assert not torch.allclose(ignored, alone[0], atol=1e-3)  # without doc_ids the documents mix


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


def test_sample_script_continues_the_last_document_of_a_doc_masked_checkpoint(tmp_path):

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.:", ("[EOS]",))  # [EOS] (id 30) starts a document
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="rope")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)  # spread-out logits: greedy choices far from ties
    ckpt = {"model": model.state_dict(), "model_type": "gpt", "model_args": to_dict(model.config),
            "tokenizer": tokenizer.meta()}
    save_checkpoint({**ckpt, "train_config": {"doc_mask": True}}, str(tmp_path / "ckpt.pt"))
    lines = ["the king[EOS]a queen", "no separator"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")

    def greedy(text: str, doc_mask: bool) -> str:
        idx = torch.tensor([tokenizer.encode(text, allow_specials=True)])
        doc_ids = document_ids(idx, 30) if doc_mask else None
        return tokenizer.decode(model.generate(idx, 8, temperature=0.0, doc_ids=doc_ids)[0].tolist())

    common = [f"--out_dir={tmp_path}", "--num_samples=1", "--max_new_tokens=8", "--temperature=0"]
    masked = run_script("sample.py", f"--start={lines[0]}", *common)
    assert masked.stdout.rstrip("\n") == greedy(lines[0], True) != greedy(lines[0], False)  # the mask decides
    assert "its last 8 tokens" in masked.stderr
    batch = run_script("sample.py", f"--prompts={tmp_path / 'prompts.txt'}", *common).stdout.splitlines()
    assert batch == [f"[prompt {i + 1}] {greedy(line, True)}" for i, line in enumerate(lines)]
    off = run_script("sample.py", f"--start={lines[0]}", *common, "--doc_mask=False")  # the whole prompt, unmasked
    assert off.stdout.rstrip("\n") == greedy(lines[0], False)
    # the checkpoint decides when --doc_mask is not given
    save_checkpoint(ckpt, str(tmp_path / "plain.pt"))
    assert sample.load_model(SampleConfig(out_dir=str(tmp_path)), "cpu")[3] is True
    assert sample.load_model(SampleConfig(out_dir=str(tmp_path), checkpoint="plain.pt"), "cpu")[3] is False
    with pytest.raises(ConfigError, match="has neither; drop --doc_mask"):
        last_documents_of(torch.tensor([[1, 2]]), None, CharTokenizer("ab"))
