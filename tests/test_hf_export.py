"""Hugging Face both ways, against transformers on small random models made here (never downloaded):
any MLP width on import, save_pretrained -> Auto classes with the same logits and greedy tokens,
round trips, a fine-tune that continues, hostile folders and options no HF class expresses."""

import json

import pytest
import torch

from conftest import one_line_error, run_script
from model import BERT, GPT, BERTConfig, ConfigError, GPTConfig, Seq2Seq, Seq2SeqConfig
from model.config import flatten
from weights.checkpoint import save_checkpoint
from weights.hf_export import ExportError
from weights.hf_folder import PretrainedError

transformers = pytest.importorskip("transformers")  # a test dependency (requirements-test.txt)
safetensors_torch = pytest.importorskip("safetensors.torch")

CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVW"  # 50 characters
BERT_SPECIALS = ["[PAD]", "[MASK]", "[CLS]", "[SEP]"]
SMALL = dict(vocab_size=50, block_size=24, n_layer=2, n_head=3, n_embd=36)  # odd head count, head_dim 12
MODERN = dict(pos_emb="rope", norm="rmsnorm", activation="swiglu", rope_base=500.0)


def jitter(model, scale=0.1, seed=0):
    """Move every parameter off its initialisation (norm gains at 1 and zero biases would hide a wrong mapping)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def ids(batch=2, length=20, vocab=50, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy_parity(ours, hf, prompt, steps=12):
    theirs = hf.generate(prompt, max_new_tokens=steps, do_sample=False, pad_token_id=0)
    mine = ours.generate(prompt, max_new_tokens=steps, top_k=1)
    assert mine.tolist() == theirs.tolist()
    assert len(set(mine[0, prompt.size(1):].tolist())) >= 3  # a varied continuation, not one repeated token


def test_mlp_hidden_option():
    assert GPT(GPTConfig(**SMALL, mlp_hidden=52)).blocks[0].mlp.c_fc.weight.shape == (52, 36)
    assert GPT(GPTConfig(**SMALL)).blocks[0].mlp.c_fc.weight.shape == (144, 36)  # 4 x n_embd by default
    assert GPT(GPTConfig(**SMALL, activation="swiglu")).blocks[0].mlp.c_proj.weight.shape == (36, 96)  # its own rule
    assert GPT(GPTConfig(**SMALL, activation="swiglu", mlp_hidden=40)).blocks[0].mlp.c_fc.weight.shape == (80, 36)
    assert BERT(BERTConfig(**SMALL, mlp_hidden=70)).blocks[1].mlp.c_proj.weight.shape == (36, 70)
    assert Seq2Seq(Seq2SeqConfig(**SMALL, mlp_hidden=30)).decoder.blocks[0].mlp.c_fc.weight.shape == (30, 36)
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="mlp_hidden"):
            GPTConfig(**SMALL, mlp_hidden=bad)


def test_gpt2_and_bert_folders_of_any_mlp_width_import(tmp_path):
    torch.manual_seed(0)
    hf = jitter(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=24, n_embd=36, n_layer=2, n_head=3, n_inner=100, bos_token_id=0, eos_token_id=0)))
    hf.save_pretrained(tmp_path / "gpt2")
    ours = GPT.from_pretrained(str(tmp_path / "gpt2")).eval()
    assert ours.config.mlp_hidden == 100
    x = ids()
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max() < 1e-4
    greedy_parity(ours, hf, x[:1, :5])
    bert_hf = jitter(transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=50, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=52,
        max_position_embeddings=24, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)), 0.05)
    bert_hf.save_pretrained(tmp_path / "bert")
    bert = BERT.from_pretrained(str(tmp_path / "bert")).eval()
    assert bert.config.mlp_hidden == 52
    mask, types = torch.ones_like(x), (torch.arange(20) >= 8).long().expand(2, 20)
    mask[1, 11:] = 0
    with torch.no_grad():
        diff = bert(x, mask, types)[0] - bert_hf(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    assert diff[mask.bool()].abs().max() < 1e-4


@pytest.mark.parametrize("variant", [
    dict(mlp_hidden=100, bias=True, tie_embeddings=False),  # GPT-2's recipe, non-4x MLP, untied head
    dict(mlp_hidden=52),  # without biases: exported with zero biases
    dict(MODERN),  # rotary, RMSNorm, SwiGLU -> Llama
    dict(MODERN, qk_norm=True, tie_embeddings=False, mlp_hidden=40),  # with QK-norm -> Qwen3
])
def test_gpt_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(tmp_path, variant):
    torch.manual_seed(0)
    ours = jitter(GPT(GPTConfig(**SMALL, **variant)))
    ours.save_pretrained(str(tmp_path), {"tokenizer": "char", "chars": CHARS, "specials": []})
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    expected = {"rope": "Qwen3ForCausalLM" if variant.get("qk_norm") else "LlamaForCausalLM"}.get(
        variant.get("pos_emb"), "GPT2LMHeadModel")
    assert type(hf).__name__ == expected
    x = ids()
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max() < 1e-4
    greedy_parity(ours, hf, x[:1, :5])
    back = GPT.from_pretrained(str(tmp_path)).eval()
    if variant.get("bias", False) or variant.get("pos_emb") == "rope":
        assert back.config == ours.config and same_weights(back, ours)  # ours -> HF -> ours: identical
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer("To be or").input_ids == [CHARS.index(c) for c in "To be or"]


def test_bert_export_loads_in_transformers_with_padding_and_segments(tmp_path):
    torch.manual_seed(0)
    ours = jitter(BERT(BERTConfig(**{**SMALL, "vocab_size": 54}, mlp_hidden=70)), 0.05)
    ours.save_pretrained(str(tmp_path), {"tokenizer": "char", "chars": CHARS, "specials": BERT_SPECIALS})
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path)).eval()
    x = ids(3, 20, 54)
    mask, types = torch.ones_like(x), (torch.arange(20) >= 6).long().expand(3, 20)
    mask[0, 9:] = 0
    mask[2, 15:] = 0
    with torch.no_grad():
        diff = ours(x, mask, types)[0] - hf(input_ids=x, attention_mask=mask, token_type_ids=types).logits
    assert diff[mask.bool()].abs().max() < 1e-4
    assert hf.config.pad_token_id == 50 and hf.config.intermediate_size == 70
    back = BERT.from_pretrained(str(tmp_path))
    assert back.config == ours.config and same_weights(back, ours)  # the pooler travels too
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer("ab[MASK]c").input_ids == [0, 1, 51, 2] and tokenizer.mask_token_id == 51


def test_gpt2_bpe_tokenizer_files(tmp_path):
    pytest.importorskip("tiktoken")
    ours = GPT(GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=1, n_embd=8))
    ours.save_pretrained(str(tmp_path), {"tokenizer": "gpt2", "vocab_size": 50257, "specials": []})
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer("Hello world").input_ids == [15496, 995] and tokenizer.eos_token_id == 50256
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 50256


def test_fine_tune_of_an_exported_then_imported_model_continues_with_the_same_loss(tmp_path):
    torch.manual_seed(0)
    original = GPT(GPTConfig(**SMALL, **MODERN, qk_norm=True))
    original.save_pretrained(str(tmp_path))
    imported = GPT.from_pretrained(str(tmp_path))
    losses = []
    for model in (original, imported):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        batch, run = ids(4, 17, seed=3), []
        for _ in range(4):
            _, loss = model(batch[:, :-1], targets=batch[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == losses[1] and losses[0][-1] < losses[0][0] - 0.05


@pytest.mark.parametrize("change, message", [
    (dict(attn_score="additive"), "attn_score='additive'"),
    (dict(attn_weighting="hard"), "attn_weighting='hard'"),
    (dict(activation="relu2"), "activation='relu2'"),
    (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(MODERN, bias=True), "bias=True"),
    (dict(attn_only=True), "attn_only=True"),
    (dict(MODERN, attn_only=True), "attn_only=True"),
])
def test_options_no_hf_class_expresses_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(ExportError, match=message):
        GPT(GPTConfig(**SMALL, **change)).save_pretrained(str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing written
    with pytest.raises(ExportError, match="pos_emb='rope'"):
        BERT(BERTConfig(**SMALL, pos_emb="rope")).save_pretrained(str(tmp_path / "y"))
    with pytest.raises(ExportError, match="attn_only=True"):
        BERT(BERTConfig(**SMALL, attn_only=True)).save_pretrained(str(tmp_path / "y"))
    with pytest.raises(ExportError, match="seq2seq"):
        Seq2Seq(Seq2SeqConfig(**SMALL)).save_pretrained(str(tmp_path / "z"))


def test_hostile_folders_are_one_clear_error_each(tmp_path):
    GPT(GPTConfig(**SMALL, **MODERN, qk_norm=True)).save_pretrained(str(tmp_path / "qwen"))
    GPT(GPTConfig(**SMALL, bias=True)).save_pretrained(str(tmp_path / "gpt2"))
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(PretrainedError, match="'t5' model; the families that load are gpt2, llama, qwen3, gpt_neox"):
        GPT.from_pretrained(str(tmp_path / "gpt2"))
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "n_inner": 100}))
    with pytest.raises(PretrainedError, match=r"blocks.0.mlp.c_fc.bias is \(144,\), expected \(100,\)"):
        GPT.from_pretrained(str(tmp_path / "gpt2"))
    weights = tmp_path / "qwen" / "model.safetensors"
    state = safetensors_torch.load_file(str(weights))
    del state["model.layers.1.self_attn.k_norm.weight"]
    safetensors_torch.save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(PretrainedError, match="no 'model.layers.1.self_attn.k_norm.weight'"):
        GPT.from_pretrained(str(tmp_path / "qwen"))
    qwen = json.loads((tmp_path / "qwen" / "config.json").read_text())
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({**qwen, "num_key_value_heads": 1}))
    with pytest.raises(PretrainedError, match="num_key_value_heads=1"):
        GPT.from_pretrained(str(tmp_path / "qwen"))
    for change, message in (({"rms_norm_eps": None}, "rms_norm_eps must be a positive number, got None"),
                            ({"rope_parameters": {"rope_theta": "big"}}, "rope_theta must be a positive number, got 'big'")):
        (tmp_path / "qwen" / "config.json").write_text(json.dumps({**qwen, **change}))
        with pytest.raises(PretrainedError, match=message):
            GPT.pretrained_config(str(tmp_path / "qwen"))
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({**qwen, "head_dim": None}))  # transformers: the default
    assert GPT.pretrained_config(str(tmp_path / "qwen")).head_dim == 12


def test_export_command_line(tmp_path):
    model = jitter(BERT(BERTConfig(**{**SMALL, "vocab_size": 54})), 0.05)
    tokenizer = {"tokenizer": "char", "vocab_size": 54, "chars": CHARS, "specials": BERT_SPECIALS}
    save_checkpoint({"model": model.state_dict(), "model_type": "bert", "model_args": flatten(model.config),
                     "tokenizer": tokenizer}, str(tmp_path / "run" / "ckpt.pt"))
    proc = run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
    assert "AutoModelForMaskedLM" in proc.stdout
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    x = ids(2, 12, 54)
    with torch.no_grad():
        assert (model(x)[0] - hf(input_ids=x).logits).abs().max() < 1e-4
    line = one_line_error(run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'none'}", "--to=x", check=False))
    assert "no checkpoint" in line


HOSTILE = ["a\u0301b", "\U0001F600 x", "c\r\n\x00", "  \t\n\n ", "x[MASK]y", "[MASK][PAD]", "\u2028\u00a0\ufeff", "",
           "[ MASK]", "a<|endoftext|>b", "'s 've 'll naïve 日本語"]


def test_exported_tokenizers_equal_ours_on_hostile_text(tmp_path):
    """The tokenizer files alone, loaded by AutoTokenizer: the same ids and text as ours."""
    from data.tokenizer import CharTokenizer, GPT2Tokenizer
    from weights.hf_tokenizer import tokenizer_files

    pytest.importorskip("tiktoken")
    chars = CharTokenizer.from_text("".join(HOSTILE)).with_specials(("[PAD]", "[MASK]", "[CLS]", "[SEP]"))
    for name, tok in (("char", chars), ("gpt2", GPT2Tokenizer().with_specials(("[PAD]", "[MASK]")))):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in tokenizer_files(tok.meta(), 64).items():
            (folder / file).write_text(text, encoding="utf-8")
        hf = transformers.AutoTokenizer.from_pretrained(str(folder))
        for text in [*HOSTILE, "".join(HOSTILE) * 50]:
            ids = tok.encode(text, allow_specials=True)
            assert hf.encode(text, add_special_tokens=False) == ids, (name, text)
            assert hf.decode(ids) == tok.decode(ids) == text, (name, text)


def test_export_over_an_earlier_export_replaces_the_whole_folder(tmp_path, monkeypatch):
    """A char model, then a GPT-2 BPE model into the same folder: transformers loads the second, and no file
    of the first stays; a folder of other files is refused unless overwrite; a failed export leaves it whole."""
    pytest.importorskip("tiktoken")
    import weights.hf_export as hf_export

    folder = tmp_path / "hf"
    char_model = jitter(GPT(GPTConfig(**SMALL)))
    char_model.save_pretrained(str(folder), {"tokenizer": "char", "chars": CHARS, "specials": []})
    assert "tokenizer.json" in {p.name for p in folder.iterdir()}
    bpe_model = jitter(GPT(GPTConfig(**{**SMALL, "vocab_size": 50257})), seed=1)
    save_checkpoint({"model": bpe_model.state_dict(), "model_type": "gpt", "model_args": flatten(bpe_model.config),
                     "tokenizer": {"tokenizer": "gpt2", "vocab_size": 50257, "specials": []}},
                    str(tmp_path / "run" / "ckpt.pt"))
    run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'run'}", f"--to={folder}")
    names = {p.name for p in folder.iterdir()}
    assert "tokenizer.json" not in names and {"vocab.json", "merges.txt", "config.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hf.")]  # no staging or old folder left
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert len(tokenizer) == 50257 and tokenizer("Hello world").input_ids == [15496, 995]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    x = ids(2, 12, 50257)
    with torch.no_grad():
        assert (bpe_model(x)[0] - hf(x).logits).abs().max() < 1e-4

    def failing(staging, weights, texts):  # a crash after the first file
        (tmp_path / "hf.partial").write_text("")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf_export, "write_folder", failing)
    with pytest.raises(ExportError, match="No space left"):
        char_model.save_pretrained(str(folder), {"tokenizer": "char", "chars": CHARS, "specials": []})
    assert {p.name for p in folder.iterdir()} == names  # the earlier export, whole
    monkeypatch.undo()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds no earlier headscope export.*overwrite=True"):
        char_model.save_pretrained(str(mine))
    assert (mine / "notes.txt").read_text() == "keep me"
    line = one_line_error(run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'run'}", f"--to={mine}", check=False))
    assert "--overwrite=True" in line and (mine / "notes.txt").exists()
    run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'run'}", f"--to={mine}", "--overwrite=True")
    assert not (mine / "notes.txt").exists() and (mine / "config.json").exists()


def test_export_to_an_unwritable_place_is_one_line(tmp_path):
    model = GPT(GPTConfig(**SMALL))
    save_checkpoint({"model": model.state_dict(), "model_type": "gpt", "model_args": flatten(model.config),
                     "tokenizer": {"tokenizer": "char", "vocab_size": 50, "chars": CHARS, "specials": []}},
                    str(tmp_path / "run" / "ckpt.pt"))
    for to in ("/sys/x", "/proc/headscope/x"):
        line = one_line_error(run_script("tools/export_hf.py", f"--out_dir={tmp_path / 'run'}", f"--to={to}",
                                         check=False))
        assert line.startswith(f"error: cannot write {to} (") and "folder you can write" in line, line
