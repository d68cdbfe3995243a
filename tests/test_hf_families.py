"""The loader table (weights/hf_families.py), row by row, against transformers on small random models built
here (no download): odd head counts, MLP widths that are not 4x, padded batches; eval mode on load;
headless encoders and sentence-transformers pooling; the families' refusals."""

import json

import pytest
import torch

from lens import detectors, patching
from lens.recorder import AttentionRecorder
from model import BERT, GPT, CheckpointError
from model.bert import NoHeadError
from lens.cache import LensError
from training.families import load_pretrained
from test_pretrained import save_hf_gpt2

TOL = 1e-5


def jiggle(hf, seed=0):
    """Move every weight off its init (LayerNorms at 1/0, zero biases would hide mistakes); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return hf.eval()


def save(hf, folder):
    hf.save_pretrained(folder)
    return str(folder)


def bert_kwargs(**kw):
    return dict(vocab_size=50, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=100,
                max_position_embeddings=24, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (the transformers model in eval mode, its folder): every row of the table that is not GPT-2's."""
    from transformers import (BertConfig, BertModel, GPTNeoXConfig, GPTNeoXForCausalLM, RobertaConfig,
                              RobertaForMaskedLM, RobertaModel)

    torch.manual_seed(0)
    made = {}
    for name, hf in (
            ("bert_headless", BertModel(BertConfig(**bert_kwargs()), add_pooling_layer=True)),
            ("roberta_mlm", RobertaForMaskedLM(RobertaConfig(**bert_kwargs(type_vocab_size=1, layer_norm_eps=1e-5)))),
            ("roberta_headless", RobertaModel(RobertaConfig(**bert_kwargs(type_vocab_size=1)))),
            ("neox", GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=36, num_hidden_layers=2,
                                                      num_attention_heads=3, intermediate_size=100, rotary_pct=0.5,
                                                      max_position_embeddings=32, hidden_dropout=0.1))),
            ("neox_sequential", GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=30, num_hidden_layers=2,
                                                                 num_attention_heads=5, intermediate_size=70,
                                                                 rotary_pct=1.0, use_parallel_residual=False,
                                                                 max_position_embeddings=32)))):
        hf.config._attn_implementation = "eager"  # its attention weights, to compare patterns with
        made[name] = (jiggle(hf), save(hf, tmp_path_factory.mktemp(name)))
    return made


def batch(pad_id=0, left=False):
    """(ids (3, 12), mask): rows of 12, 7 and 4 real tokens, padded on the right (or left) with pad_id."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (3, 12), generator=gen)
    mask = torch.ones(3, 12, dtype=torch.long)
    for row, n in ((1, 7), (2, 4)):
        if left:
            mask[row, :12 - n] = 0
        else:
            mask[row, n:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def close(ours, theirs, mask=None):
    if mask is not None:
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    assert (ours - theirs).abs().max().item() < TOL


# ------------------------------------------------------------------------------------------------
# eval mode on load, and analysis of a model left in training mode


def test_every_from_pretrained_returns_eval_mode(folders, tmp_path):
    save_hf_gpt2(tmp_path / "gpt2")
    loaded = [GPT.from_pretrained(str(tmp_path / "gpt2")), GPT.from_pretrained(folders["neox"][1]),
              BERT.from_pretrained(folders["bert_headless"][1]), BERT.from_pretrained(folders["roberta_mlm"][1]),
              load_pretrained(folders["roberta_headless"][1])]
    for model in loaded:
        assert not any(m.training for m in model.modules())
    bert = loaded[2]
    assert bert.config.dropout == 0.1  # the folder's dropout is kept, and off
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(bert.encode(ids, mask), bert.encode(ids, mask))


def test_analysis_of_a_model_in_training_mode(folders):
    model = BERT.from_pretrained(folders["bert_headless"][1])
    ids, mask = batch()
    expected = detectors.detect_head(model, ids, "previous_token_head", attention_mask=mask)
    model.train()
    model.blocks[1].eval()  # a mixed state comes back as it was
    assert torch.equal(detectors.detect_head(model, ids, "previous_token_head", attention_mask=mask), expected)
    assert model.training and model.blocks[0].training and not model.blocks[1].training
    with AttentionRecorder(model) as recorder:
        with torch.no_grad():
            model(ids, mask)
        assert not model.training
    assert model.training and not model.blocks[1].training
    model.eval()
    _, clean = model.run_with_cache(ids, mask)
    _, noisy_cache = model.train().run_with_cache(ids, mask)
    with pytest.raises(LensError, match="training mode with dropout 0.1"):
        patching.get_act_patch_resid_pre(model, ids, clean, lambda out: out[0, 0, 0])
    with pytest.raises(LensError, match="training mode with dropout 0.1"):
        patching.get_attr_patch_resid_pre(model, ids, clean, lambda out: out[0, 0, 0])
    with pytest.raises(LensError, match="captured in training mode"):
        detectors.detect_head(model.eval(), ids, "previous_token_head", cache=noisy_cache)
    assert recorder.calls


# ------------------------------------------------------------------------------------------------
# BERT without its MLM head, and sentence-transformers pooling


def test_headless_bert_matches_transformers_bertmodel(folders):
    hf, folder = folders["bert_headless"]
    model = BERT.from_pretrained(folder)
    assert model.head is None and model.config.mlp_hidden == 100 and model.config.n_head == 3
    ids, mask = batch()
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # a sentence pair
    for kwargs in ({"input_ids": ids[:1]}, {"input_ids": ids[:1], "token_type_ids": types[:1]},
                   {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}):
        with torch.no_grad():
            out = hf(**kwargs, output_attentions=True)
            _, cache = model.run_with_cache(kwargs["input_ids"], kwargs.get("attention_mask"),
                                            kwargs.get("token_type_ids"), names_filter="*.attn.pattern")
            hidden, loss = model(kwargs["input_ids"], kwargs.get("attention_mask"), kwargs.get("token_type_ids"))
            assert loss is None
            pooled = model.pooled(kwargs["input_ids"], kwargs.get("attention_mask"), kwargs.get("token_type_ids"))
        close(hidden, out.last_hidden_state, kwargs.get("attention_mask"))
        close(pooled, out.pooler_output)
        rows = (kwargs.get("attention_mask") if "attention_mask" in kwargs else torch.ones_like(kwargs["input_ids"])).bool()
        for layer, theirs in enumerate(out.attentions):  # (B, nh, T, T): real query rows
            ours = cache[f"blocks.{layer}.attn.pattern"]
            assert (ours - theirs).abs()[rows[:, None, :, None].expand_as(ours)].max() < TOL


def test_headless_bert_refuses_the_mlm_head_and_supports_analysis(folders):
    model = BERT.from_pretrained(folders["bert_headless"][1])
    ids, mask = batch()
    with pytest.raises(NoHeadError, match="no MLM head"):
        model(ids, mask, labels=ids)
    _, clean = model.run_with_cache(ids[:1, :6])
    corrupted = ids[1:2, :6]

    def metric(hidden):  # cosine similarity of the mean-pooled sentence with the clean one
        return torch.cosine_similarity(hidden.mean(1), clean["blocks.1.resid_post"].mean(1), dim=-1).mean()

    table = patching.get_act_patch_resid_pre(model, corrupted, clean, metric)
    assert table.shape == (2, 6)
    assert abs(table[0].mean().item() - 1.0) > 1e-3  # a single position does not restore the clean sentence
    full = patching.activation_patch(model, corrupted, clean, metric,
                                     [[(f"blocks.0.resid_pre", (p,)) for p in range(6)]])
    assert abs(full.item() - 1.0) < 1e-5  # every position patched: the clean run
    scores = detectors.attention_sink_scores(model, ids, attention_mask=mask)
    assert scores.shape == (2, 3)


def sentence_transformers_folder(source, folder, mode, normalize):
    """A sentence-transformers folder made by hand: the encoder's files, modules.json and 1_Pooling/config.json."""
    import shutil

    shutil.copytree(source, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 36, "pooling_mode_cls_token": mode == "cls",
         "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False}))
    return str(folder)


@pytest.mark.parametrize("mode,normalize", [("mean", True), ("mean", False), ("cls", True), ("cls", False)])
def test_sentence_embeddings_follow_the_folders_pooling(folders, tmp_path, mode, normalize):
    hf, source = folders["bert_headless"]
    model = BERT.from_pretrained(sentence_transformers_folder(source, tmp_path / "st", mode, normalize))
    assert model.pooling == {"mode": mode, "normalize": normalize, "unsupported": None}
    ids, mask = batch()
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    # sentence-transformers' Pooling: the masked mean, or the first token; then Normalize: x / ||x||
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) if mode == "mean" else hidden[:, 0]
    if normalize:
        expected = torch.nn.functional.normalize(expected, dim=-1)
    with torch.no_grad():
        close(model.sentence_embedding(ids, mask), expected)


def test_pooling_refusals(folders, tmp_path):
    model = BERT.from_pretrained(folders["bert_headless"][1])
    assert model.pooling is None
    ids, mask = batch()
    with pytest.raises(NoHeadError, match="no sentence-transformers pooling config"):
        model.sentence_embedding(ids, mask)
    assert model.sentence_embedding(ids, mask, pooling="max").shape == (3, 36)
    folder = sentence_transformers_folder(folders["bert_headless"][1], tmp_path / "dense", "mean", False)
    modules = json.loads((tmp_path / "dense" / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "dense" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(NoHeadError, match="Dense module"):
        BERT.from_pretrained(folder).sentence_embedding(ids, mask)


# ------------------------------------------------------------------------------------------------
# RoBERTa and GPT-NeoX rows


@pytest.mark.parametrize("name", ["roberta_mlm", "roberta_headless"])
def test_roberta_matches_transformers(folders, name):
    hf, folder = folders[name]
    model = BERT.from_pretrained(folder)
    assert model.config.position_offset == 2 and model.config.block_size == 22 and model.config.type_vocab_size == 1
    assert (model.head is None) == (name == "roberta_headless")
    for left in (False, True):  # RoBERTa counts positions from each row's first real token, as we do
        ids, mask = batch(pad_id=1, left=left)
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=mask)
            ours, _ = model(ids, mask)
        close(ours, out.logits if name == "roberta_mlm" else out.last_hidden_state, mask)


@pytest.mark.parametrize("name", ["neox", "neox_sequential"])
def test_gpt_neox_matches_transformers(folders, name):
    hf, folder = folders[name]
    model = GPT.from_pretrained(folder)
    config = model.config
    assert config.parallel_residual == (name == "neox") and config.pos_emb == "rope" and not config.tie_embeddings
    assert config.rotary_dim == (6 if name == "neox" else 0) and config.mlp_hidden in (100, 70)
    ids, mask = batch()
    with torch.no_grad():
        close(model(ids)[0], hf(input_ids=ids).logits)
        close(model(ids, attention_mask=mask)[0], hf(input_ids=ids, attention_mask=mask).logits, mask)
        ids, mask = batch(left=True)  # left padding: Hugging Face needs the rows' positions spelled out
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        close(model(ids, attention_mask=mask)[0], hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits,
              mask)


@pytest.mark.parametrize("change,named", [
    ({"attention_bias": False}, "attention_bias=False"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "'linear'"),
    ({"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.25}}, "rotates 3 of each head's 12"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"model_type": "t5"}, "'t5' model; the families that load are"),
])
def test_what_our_blocks_cannot_express_is_one_line(folders, tmp_path, change, named):
    import shutil

    shutil.copytree(folders["neox"][1], tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=named) as error:
        GPT.from_pretrained(str(tmp_path / "m"))
    assert "\n" not in str(error.value)


def test_a_family_loads_through_its_own_class_only(folders):
    with pytest.raises(CheckpointError, match="'gpt_neox' model, which loads as our GPT; use GPT.from_pretrained"):
        BERT.from_pretrained(folders["neox"][1])
    with pytest.raises(CheckpointError, match="'roberta' model, which loads as our BERT"):
        GPT.from_pretrained(folders["roberta_mlm"][1])
    assert isinstance(load_pretrained(folders["neox"][1]), GPT)


def test_export_refuses_what_the_loaded_rows_added(folders, tmp_path):
    from weights.hf_export import ExportError

    for name, option in (("neox", "parallel_residual=True"), ("neox_sequential", "rotary_dim"),
                         ("roberta_mlm", "position_offset=2"), ("bert_headless", "mlm_head=False")):
        model = load_pretrained(folders[name][1])
        if name == "neox_sequential":
            model.config.rotary_dim = 4
        with pytest.raises(ExportError, match=option):
            model.save_pretrained(str(tmp_path / name))
