import math

import pytest
import torch
import torch.nn.functional as F

from data.mlm import mask_tokens
from model import BERT, BERTConfig, CheckpointError, ConfigError
from weights.common import IGNORE_INDEX


def tiny(**kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=23, dropout=0.0)
    return BERT(BERTConfig(**{**cfg, **kw})).eval()


def test_logits_and_loss_shapes():
    model = tiny()
    ids = torch.randint(0, 23, (3, 10))
    logits, none = model(ids)
    assert logits.shape == (3, 10, 23) and none is None
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 4] = ids[:, 4]
    logits2, loss = model(ids, labels=labels)
    assert torch.equal(logits, logits2)
    assert abs(loss.item() - math.log(23)) < 0.5  # near-uniform at init (embeddings N(0, 0.02))
    assert model.pooled(ids).shape == (3, 32)


def test_later_tokens_change_earlier_outputs():
    model = tiny()
    ids = torch.randint(0, 23, (2, 12))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 5) % 23
    (a, _), (b, _) = model(ids), model(changed)
    # every earlier position sees the change (a causal model would leave them all equal)
    assert ((a[:, :9] - b[:, :9]).abs().amax(dim=-1) > 1e-6).all()


def explicit_path(model):
    """Attach a hook that reads the attention pattern: attention then runs its explicit path."""
    return [block.attn.pattern.register_forward_hook(lambda *a: None) for block in model.blocks]


@pytest.mark.parametrize("post_norm", [True, False])
@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_padding_leaves_real_positions_unchanged(post_norm, path):
    model = tiny(post_norm=post_norm, n_head=3, n_embd=24)
    handles = explicit_path(model) if path == "explicit" else []
    lengths = [9, 4, 12]
    rows = [torch.randint(0, 23, (1, n)) for n in lengths]
    ids = torch.randint(0, 23, (3, 14))  # padding positions hold arbitrary tokens
    mask = torch.zeros(3, 14, dtype=torch.long)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        ids[i, :n], mask[i, :n] = row[0], 1
    padded, _ = model(ids, attention_mask=mask)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        assert torch.allclose(padded[i, :n], model(row)[0][0], atol=1e-5)
    for h in handles:
        h.remove()


def test_loss_counts_only_labelled_positions():
    model = tiny()
    ids = torch.randint(0, 23, (2, 10))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, [1, 7]] = torch.tensor([3, 5])
    labels[1, 4] = 11
    logits, loss = model(ids, labels=labels)
    picked = [(0, 1, 3), (0, 7, 5), (1, 4, 11)]
    expected = torch.stack([F.cross_entropy(logits[b, t], torch.tensor(y)) for b, t, y in picked]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # the loss ignores what the model predicts at unlabelled positions
    logits.retain_grad()
    loss.backward()
    grad_rows = logits.grad.abs().sum(-1) > 0
    assert grad_rows.sum() == 3 and grad_rows[0, 1] and grad_rows[0, 7] and grad_rows[1, 4]


def test_small_encoder_overfits_one_masked_batch():
    torch.manual_seed(0)
    model = tiny(vocab_size=25).train()
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, 23, (4, 16), generator=gen)
    ids, labels = mask_tokens(text, torch.ones_like(text, dtype=torch.bool), mask_id=23, n_random=23,
                              generator=gen, mask_prob=0.25)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(ids, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < 0.1, losses[-10:]  # from log(25) = 3.2


def test_segment_embeddings():
    model = tiny()
    ids = torch.randint(0, 23, (1, 8))
    types = torch.zeros_like(ids)
    assert torch.allclose(model(ids)[0], model(ids, token_type_ids=types)[0])
    types[:, 4:] = 1
    assert not torch.allclose(model(ids)[0], model(ids, token_type_ids=types)[0])
    plain = tiny(type_vocab_size=0)
    assert "wtt.weight" not in plain.state_dict()
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        plain(ids, token_type_ids=types)


def test_input_errors():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        tiny()(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    from model import ConfigError

    with pytest.raises(ConfigError, match="type_vocab_size"):
        BERTConfig(type_vocab_size=-1)


# ------------------------------------------------------------------------------------------------
# Hugging Face import, checked against a small random model built here (no download)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """A random BertForMaskedLM saved as safetensors and a BertForPreTraining saved as .bin."""
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=144, max_position_embeddings=24, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = {}
    for name, cls, safe in (("mlm", BertForMaskedLM, True), ("pretraining", BertForPreTraining, False)):
        hf = cls(config).eval()
        with torch.no_grad():  # move every weight off its init (LayerNorms at 1/0 would hide mistakes)
            for p in hf.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder, safe_serialization=safe)
        models[name] = (hf, folder)
    return models


def hf_inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 20), generator=gen)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, 13:] = 0
    mask[2, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize("path", ["sdpa", "explicit"])
def test_from_pretrained_matches_hugging_face(hf_models, path):
    hf, folder = hf_models["mlm"]
    model = BERT.from_pretrained(str(folder)).eval()
    assert model.config.norm_eps == 1e-12 and model.config.post_norm and model.config.n_head == 3
    handles = explicit_path(model) if path == "explicit" else []
    ids, mask, types = hf_inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got, _ = model(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() < 1e-4
    for h in handles:
        h.remove()


def test_from_pretrained_reads_bin_files_and_the_pooler(hf_models):
    hf, folder = hf_models["pretraining"]
    model = BERT.from_pretrained(str(folder), dropout=0.0).eval()
    ids, mask, types = hf_inputs()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        expected_pooled = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        got, _ = model(ids, attention_mask=mask, token_type_ids=types)
        pooled = model.pooled(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (got[real] - out.prediction_logits[real]).abs().max() < 1e-4
    assert (pooled - expected_pooled).abs().max() < 1e-4


def test_from_pretrained_errors(hf_models, tmp_path):
    import json
    import shutil

    with pytest.raises(CheckpointError, match="no folder"):
        BERT.from_pretrained(str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="config.json"):
        BERT.from_pretrained(str(tmp_path))
    _, folder = hf_models["mlm"]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(CheckpointError, match=r"mlp.c_fc.weight is \(144, 36\), config.json makes it \(100, 36\)"):
        BERT.from_pretrained(str(bad))
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(CheckpointError, match="roberta"):
        BERT.from_pretrained(str(bad))
    (bad / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="encoder.layer.2"):
        BERT.from_pretrained(str(bad))
    for change in ({"is_decoder": True}, {"add_cross_attention": True}):  # a BertLMHeadModel: causal, same names
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=f"{next(iter(change))}=True.* bidirectional encoder"):
            BERT.from_pretrained(str(bad))
    for change, message in (({"hidden_dropout_prob": None}, "dropout must be a number"),
                            ({"type_vocab_size": "2"}, "type_vocab_size must be 0"),
                            ({"hidden_size": 36.0}, "n_embd must be a positive integer")):
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=f"config.json of .* holds values our model cannot take .*{message}"):
            BERT.from_pretrained(str(bad))
    with pytest.raises(ConfigError, match="dropout must be a number"):  # the caller's own override: no folder blamed
        BERT.from_pretrained(str(folder), dropout=2)
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(CheckpointError, match="corrupt"):
        BERT.from_pretrained(str(bad))


def test_bert_patterns_are_bidirectional_and_respect_padding():
    from model import BERT, BERTConfig
    from model.attention import make_mask

    model = BERT(BERTConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=16, block_size=8)).eval()
    ids = torch.randint(0, 20, (2, 6))
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0
    _, cache = model.run_with_cache(ids, attention_mask=attention_mask, names_filter="*.attn.pattern")
    pattern = cache["blocks.1.attn.pattern"]
    assert pattern.shape == (2, 2, 6, 6)
    assert (pattern[0].triu(1) > 0).any()  # later positions are attended to: not causal
    assert (pattern[1, :, :, 4:] == 0).all()  # padding never is
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 2, 6), atol=1e-5)
