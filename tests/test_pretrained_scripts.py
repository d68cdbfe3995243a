"""sample.py and tools/circuits.py on Hugging Face folders of other families, each with its own tokenizer:
a Llama with a BPE tokenizer.json trained here, a BERT (MLM head or not) with a WordPiece vocab.txt."""

import json
import re
import shutil

import pytest
import torch

import sample
from conftest import one_line_error, run_script
from model import GPT

WORDS = "the cat sat on the mat while a dog ran to the park and the bird sang in the tree".split()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A random Llama saved with a byte-free BPE tokenizer.json trained on a few sentences (vocab of ~90)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))], trainer)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=24, num_hidden_layers=2,
                                      num_attention_heads=3, num_key_value_heads=3, intermediate_size=40,
                                      max_position_embeddings=64, tie_word_embeddings=False))
    folder = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, tokenizer


def test_sample_uses_the_folders_own_tokenizer(llama_folder, capsys):
    folder, tokenizer = llama_folder
    prompt = "the dog sat in the park"
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert max(ids) >= 3 and len(ids) < len(prompt)  # merges: not one id per character
    model = GPT.from_pretrained(str(folder))
    assert model.tokenizer.encode(prompt) == ids and model.tokenizer.vocab_size == tokenizer.get_vocab_size()
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), 6, temperature=0.0)[0].tolist()
    sample.main([f"--init_from={folder}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=6",
                 "--temperature=0", "--device=cpu"])
    assert capsys.readouterr().out.strip() == tokenizer.decode(expected, skip_special_tokens=False).strip()


def test_circuits_uses_the_folders_own_tokenizer(llama_folder, tmp_path):
    folder, tokenizer = llama_folder
    prompt = "the cat sat on the mat and the cat"
    proc = run_script("tools/circuits.py", f"--init_from={folder}", f"--prompt={prompt}", f"--report={tmp_path}")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert f"prompt: {len(ids)} tokens" in proc.stdout
    page = (tmp_path / "circuits.html").read_text()
    shown = re.findall(r"<tr><td>\d+</td><td>(.*?)</td></tr>", page)
    assert shown == [tokenizer.decode([i]) for i in ids]


def test_a_folder_without_a_tokenizer_says_so_and_takes_one(llama_folder, tmp_path, capsys):
    folder, tokenizer = llama_folder
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "tokenizer.json").unlink()
    line = one_line_error(run_script("sample.py", f"--init_from={bare}", "--start=the cat", check=False))
    assert "holds no tokenizer files" in line and "--tokenizer=" in line
    line = one_line_error(run_script("tools/circuits.py", f"--init_from={bare}", "--prompt=the cat", check=False))
    assert "holds no tokenizer files" in line
    sample.main([f"--init_from={bare}", f"--tokenizer={folder}", "--start=the cat", "--num_samples=1",
                 "--max_new_tokens=2", "--device=cpu"])
    assert capsys.readouterr().out.startswith("the cat")


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory):
    """A random BertForMaskedLM and a BertModel (headless) with a hand-written WordPiece vocab.txt."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), "##s", "."]
    config = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=40, max_position_embeddings=32)
    folders = {}
    for name, cls in (("mlm", BertForMaskedLM), ("headless", BertModel)):
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name)
        cls(config).save_pretrained(folder)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        folders[name] = folder
    return folders


def test_sample_fills_masks_of_a_bert_folder_and_writes_its_attention(bert_folders, tmp_path):
    proc = run_script("sample.py", f"--init_from={bert_folders['mlm']}", "--start=the cat [MASK] on the mat.",
                      f"--attention_dir={tmp_path}", "--device=cpu")
    assert "[MASK] 1 of 1:" in proc.stdout
    lines = proc.stdout.splitlines()
    filled = lines[lines.index(next(line for line in lines if line.startswith("[MASK] 1 of 1"))) + 1]
    assert "[MASK]" not in filled and "[CLS]" not in filled and filled.startswith("the cat")
    page = (tmp_path / "attention.html").read_text()
    assert '"[CLS]"' in page and '"[SEP]"' in page and '"cat"' in page  # WordPiece tokens, framed as in BERT
    line = one_line_error(run_script("sample.py", f"--init_from={bert_folders['headless']}",
                                     "--start=the cat [MASK] on the mat.", check=False))
    assert "no MLM head" in line


def test_circuits_explains_an_encoder(bert_folders, tmp_path):
    proc = run_script("tools/circuits.py", f"--init_from={bert_folders['headless']}", "--prompt=the cat sat on the mat.",
                      "--corrupt=the dog sat on the mat.", f"--report={tmp_path}")
    for heading in ("post-norm", "head detectors", "sep_sink", "attention statistics", "cosine similarity",
                    "correlation"):
        assert heading in proc.stdout
    assert "direct logit attribution" not in proc.stdout
    for name in ("patch_resid_pre", "patch_heads", "attr_patch_heads"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert (tmp_path / "attention.html").exists()
    line = one_line_error(run_script("tools/circuits.py", f"--init_from={bert_folders['mlm']}", "--prompt=the cat",
                                     "--target=cat", check=False))
    assert "--target names a predicted token" in line
