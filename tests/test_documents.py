"""Documents in packed rows: document ids and aligned rows (data/documents.py), and the model's document mask:
a window holding two documents gives, for the second, the logits of that document alone."""

import json

import numpy as np
import pytest
import torch

from conftest import run_script
from data.documents import Packing, cut_fraction, document_ids, unreachable_fraction
from data.loader import LMBatches
from data.mlm import MLMBatches
from data.tokenizer import CharTokenizer
from data.tokens import write_tokens
from model import BERT, GPT, BERTConfig, GPTConfig
from model.attention import PastKeyValues
from model.documents import dense_mask, document_mask, document_positions
from weights.common import IGNORE_INDEX, ConfigError

TOKENIZER = CharTokenizer("abcdefgh", ("[EOS]",))
SEP = TOKENIZER.special_ids["[EOS]"]


def documents(n: int, seed: int, longest: int = 12) -> list[int]:
    """n documents of random letters, each after a separator."""
    rng = np.random.default_rng(seed)
    return [t for _ in range(n) for t in [SEP, *rng.integers(0, 8, rng.integers(1, longest + 1)).tolist()]]


@pytest.fixture(scope="module")
def doc_data(tmp_path_factory):
    """A char dataset of short documents separated by [EOS], as data/shards.py writes them."""
    folder = tmp_path_factory.mktemp("docs")
    write_tokens(str(folder / "train.bin"), documents(300, 0), TOKENIZER.vocab_size)
    write_tokens(str(folder / "val.bin"), documents(40, 1), TOKENIZER.vocab_size)
    (folder / "meta.json").write_text(json.dumps(TOKENIZER.meta()))
    return folder


def test_document_ids_positions_and_boundary_targets(doc_data):
    ids = torch.tensor([[3, SEP, 1, 2, SEP, 4]])
    assert document_ids(ids, SEP).tolist() == [[0, 1, 1, 1, 2, 2]]
    assert document_positions(document_ids(ids, SEP)).tolist() == [[0, 0, 1, 2, 0, 1]]
    batches = LMBatches(str(doc_data), GPTConfig(block_size=16, vocab_size=TOKENIZER.vocab_size), 32,
                        packing=Packing(doc_mask=True))
    batch = batches.get("train", torch.Generator().manual_seed(0))
    assert torch.equal(batch["doc_ids"], document_ids(batch["idx"], SEP))
    # a target that starts the next document is not trained; every other target is the next token
    nxt = LMBatches(str(doc_data), GPTConfig(block_size=16, vocab_size=TOKENIZER.vocab_size), 32).get(
        "train", torch.Generator().manual_seed(0))["targets"]  # the same windows, no packing
    starts_next = (nxt == SEP)
    assert starts_next.any() and (batch["targets"][starts_next] == IGNORE_INDEX).all()
    assert torch.equal(batch["targets"][~starts_next], nxt[~starts_next])
    asked = LMBatches(str(doc_data), GPTConfig(block_size=16, vocab_size=TOKENIZER.vocab_size), 32,
                      packing=Packing(doc_mask=True, boundary_loss=True)).get("train", torch.Generator().manual_seed(0))
    assert torch.equal(asked["targets"], nxt)  # doc_boundary_loss keeps them


def test_aligned_rows_start_at_documents_and_hold_no_padding(doc_data):
    config = GPTConfig(block_size=16, vocab_size=TOKENIZER.vocab_size)
    aligned = LMBatches(str(doc_data), config, 64, packing=Packing(doc_mask=True, align="doc"))
    batch = aligned.get("train", torch.Generator().manual_seed(0))
    assert (batch["idx"][:, 0] == SEP).all() and batch["idx"].shape == (64, 16)
    tokens = np.asarray(aligned.data["train"].parts[0]).astype(np.int64).tobytes()
    assert all(row.tobytes() in tokens for row in batch["idx"].numpy())  # consecutive tokens of the file
    plain = LMBatches(str(doc_data), config, 64, packing=Packing(doc_mask=True))
    assert not (plain.get("train", torch.Generator().manual_seed(0))["idx"][:, 0] == SEP).all()
    line = aligned.describe()
    assert "document-aligned" in line and "0.0% padding" in line and "0.0% of the training split" in line
    rows = plain.data["train"].sample(256, torch.Generator().manual_seed(0))
    assert cut_fraction(rows, SEP) > cut_fraction(aligned.data["train"].sample(256, torch.Generator().manual_seed(0)), SEP)
    # rows of 4 tokens cannot hold documents of up to 12 letters: the tails are never reached
    assert 0.2 < unreachable_fraction(aligned.data["train"].parts, SEP, 4) < 0.8


def test_mlm_rows_carry_document_ids(doc_data):
    tokenizer = TOKENIZER.with_specials(MLMBatches.specials)
    config = BERTConfig(block_size=18, vocab_size=tokenizer.vocab_size)
    batches = MLMBatches(str(doc_data), config, 16, tokenizer=tokenizer, packing=Packing(doc_mask=True, align="doc"))
    batch = batches.get("train", torch.Generator().manual_seed(0))
    ids = torch.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"])
    assert (ids[:, 1] == SEP).all()  # [CLS], then a document's separator
    assert torch.equal(batch["doc_ids"][:, 1:], document_ids(ids, SEP)[:, 1:])
    assert torch.equal(batch["doc_ids"][:, 0], batch["doc_ids"][:, 1])  # [CLS] joins the first document
    line = batches.describe()  # a tenth of the rows are cut short and padded (BERT's short sequences)
    assert "document-aligned" in line and float(line.split("): ")[1].split("%")[0]) > 1
    with pytest.raises(ConfigError, match="GPT"):
        MLMBatches(str(doc_data), config, 16, tokenizer=tokenizer, packing=Packing(True, boundary_loss=True))


def test_data_without_separators_and_bad_options_are_clear_errors(tmp_path):
    plain = CharTokenizer("abcdefgh")
    for split in ("train", "val"):
        write_tokens(str(tmp_path / f"{split}.bin"), np.arange(100) % 8, plain.vocab_size)
    (tmp_path / "meta.json").write_text(json.dumps(plain.meta()))
    with pytest.raises(ConfigError, match="no document separator"):
        LMBatches(str(tmp_path), GPTConfig(block_size=16), 4, packing=Packing(doc_mask=True))
    with pytest.raises(ConfigError, match="batch_align must be one of window, doc"):
        Packing(align="documents")
    with pytest.raises(ConfigError, match="set doc_mask=True"):
        Packing(boundary_loss=True)


def two_documents(model_cls, config, seed=0):
    """(model, a, b, their window, doc_ids): documents a (5 tokens) and b (7) packed in one window."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # weights far from the init, so that every token's context shows in its logits
        for param in model.parameters():
            param.normal_(0, 0.3)
    a, b = torch.randint(0, 11, (1, 5)), torch.randint(0, 11, (1, 7))
    return model, a, b, torch.cat([a, b], dim=1), torch.tensor([[4] * 5 + [9] * 7])


VARIANTS = [(score, weighting) for score in ("scaled_dot", "dot", "general", "additive")
            for weighting in ("softmax", "hard")]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("score,weighting", VARIANTS)
@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_second_document_sees_only_itself(family, score, weighting, pos_emb):
    model_cls, config_cls = {"gpt": (GPT, GPTConfig), "bert": (BERT, BERTConfig)}[family]
    config = config_cls(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=16, pos_emb=pos_emb,
                        attn_score=score, attn_weighting=weighting)
    model, a, b, window, doc_ids = two_documents(model_cls, config)
    padding = {}
    if family == "bert":  # three padding tokens after the second document
        padding = {"attention_mask": torch.cat([torch.ones(1, 12), torch.zeros(1, 3)], dim=1)}
        doc_ids = torch.cat([doc_ids, torch.full((1, 3), 9)], dim=1)
    with torch.no_grad():
        packed = model(torch.cat([window, torch.zeros(1, doc_ids.size(1) - 12, dtype=torch.long)], dim=1),
                       doc_ids=doc_ids, **padding)[0][:, :12]
        alone, mixed = model(b)[0], model(window)[0]
    torch.testing.assert_close(packed[:, 5:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, :5], model(a)[0], atol=1e-5, rtol=0)
    assert (mixed[:, 5:] - alone).abs().max() > 1e-3  # without the mask the second document sees the first


def test_hooks_see_the_masked_pattern():
    config = GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=16, pos_emb="rope")
    model, a, b, window, doc_ids = two_documents(GPT, config)
    _, cache = model.run_with_cache(window, names_filter="*.attn.pattern", doc_ids=doc_ids)
    _, alone = model.run_with_cache(b, names_filter="*.attn.pattern")
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.pattern"]  # (1, nh, 12, 12)
        assert (pattern[..., 5:, :5] == 0).all() and (pattern[..., :5, 5:] == 0).all()
        torch.testing.assert_close(pattern[..., 5:, 5:], alone[f"blocks.{layer}.attn.pattern"], atol=1e-6, rtol=0)


def test_kv_cache_decodes_packed_documents_as_the_full_pass():
    config = GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=16, pos_emb="learned")
    model, a, b, window, doc_ids = two_documents(GPT, config)
    with torch.no_grad():
        full, _ = model(window, doc_ids=doc_ids)
        caches = [PastKeyValues(16) for _ in model.blocks]
        steps = [model(window[:, :7], caches=caches, doc_ids=doc_ids[:, :7])[0]]
        steps += [model(window[:, t:t + 1], caches=caches, doc_ids=doc_ids[:, :t + 1])[0] for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model(window, doc_ids=doc_ids, attention_mask=torch.ones(1, 12))


def test_flex_block_mask_is_the_bool_mask():
    """The BlockMask of the CUDA path holds the same mask (FlexAttention's forward also runs on the CPU)."""
    doc_ids = torch.tensor([[0] * 128 + [1] * 60 + [2] * 68, [5] * 256])
    padding = torch.ones(2, 256, dtype=torch.bool)
    padding[1, 200:] = False
    for causal in (True, False):
        block = document_mask(doc_ids, 256, causal, padding, flex=True)
        assert torch.equal(dense_mask(block), document_mask(doc_ids, 256, causal, padding))
    assert block.block_mask.sparsity() > 0  # blocks across documents are skipped


def test_train_packs_documents_and_reports_the_waste(doc_data, tmp_path):
    proc = run_script("train.py", f"--data_dir={doc_data}", f"--out_dir={tmp_path}",
                      "--doc_mask=True", "--batch_align=doc", "--n_layer=1", "--n_head=2", "--n_embd=16",
                      "--block_size=16", "--batch_size=4", "--max_iters=4", "--eval_interval=2", "--eval_iters=2",
                      "--log_interval=2", "--warmup_iters=0")
    assert "rows (document-aligned): " in proc.stdout and "of tokens in documents cut" in proc.stdout
    assert "0.0% padding" in proc.stdout
    assert "iter 4" in proc.stdout
    refused = run_script("train.py", "--model_type=seq2seq", f"--out_dir={tmp_path}/s", "--doc_mask=True", check=False)
    assert refused.returncode == 1 and "doc_mask is an option of model_type=gpt or bert, not of model_type=seq2seq" in refused.stderr
