"""sample.py and tools/circuits.py on Hugging Face folders of other families, each with its own tokenizer:
a Llama with a BPE tokenizer.json trained here, a BERT (MLM head or not) with a WordPiece vocab.txt."""

import importlib.util
import os
import re
import shutil

import pytest
import torch

import sample
from conftest import REPO
from model import GPT
from weights.common import UserError

spec = importlib.util.spec_from_file_location("circuits_tool", os.path.join(REPO, "tools", "circuits.py"))
circuits = importlib.util.module_from_spec(spec)  # the script, run in-process (a subprocess costs seconds)
spec.loader.exec_module(circuits)

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


def test_circuits_uses_the_folders_own_tokenizer(llama_folder, tmp_path, capsys):
    folder, tokenizer = llama_folder
    prompt = "the cat sat on the mat and the cat"
    circuits.main([f"--init_from={folder}", f"--prompt={prompt}", f"--report={tmp_path}"])
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert f"prompt: {len(ids)} tokens" in capsys.readouterr().out
    page = (tmp_path / "circuits.html").read_text()
    start = page.index("<h2>prompt</h2>")
    prompt = page[start:page.index("</table>", start)]  # the prompt's table
    shown = re.findall(r"<tr><td>\d+</td><td>(.*?)</td></tr>", prompt)
    assert shown == [tokenizer.decode([i]) for i in ids]


def test_a_folder_without_a_tokenizer_says_so_and_takes_one(llama_folder, tmp_path, capsys):
    folder, tokenizer = llama_folder
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="holds no tokenizer files .* pass --tokenizer=DIR"):
        sample.main([f"--init_from={bare}", "--start=the cat", "--device=cpu"])
    with pytest.raises(UserError, match="holds no tokenizer files"):
        circuits.main([f"--init_from={bare}", "--prompt=the cat", f"--report={tmp_path}"])
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


def test_sample_fills_masks_of_a_bert_folder_and_writes_its_attention(bert_folders, tmp_path, capsys):
    sample.main([f"--init_from={bert_folders['mlm']}", "--start=the cat [MASK] on the mat.",
                 f"--attention_dir={tmp_path}", "--device=cpu"])
    out = capsys.readouterr().out
    assert "[MASK] 1 of 1:" in out
    lines = out.splitlines()
    filled = lines[lines.index(next(line for line in lines if line.startswith("[MASK] 1 of 1"))) + 1]
    assert "[MASK]" not in filled and "[CLS]" not in filled and filled.startswith("the cat")
    page = (tmp_path / "attention.html").read_text()
    assert '"[CLS]"' in page and '"[SEP]"' in page and '"cat"' in page  # WordPiece tokens, framed as in BERT
    with pytest.raises(UserError, match="no MLM head"):
        sample.main([f"--init_from={bert_folders['headless']}", "--start=the cat [MASK] on the mat.", "--device=cpu"])


def test_circuits_explains_an_encoder(bert_folders, tmp_path, capsys):
    circuits.main([f"--init_from={bert_folders['headless']}", "--prompt=the cat sat on the mat.",
                   "--corrupt=the dog sat on the mat.", f"--report={tmp_path}"])
    out = capsys.readouterr().out
    for heading in ("post-norm", "head detectors", "sep_sink", "attention statistics", "cosine similarity",
                    "correlation"):
        assert heading in out
    assert "direct logit attribution" not in out
    for name in ("patch_resid_pre", "patch_heads", "attr_patch_heads"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert (tmp_path / "attention.html").exists()
    with pytest.raises(UserError, match="--target names a predicted token"):
        circuits.main([f"--init_from={bert_folders['mlm']}", "--prompt=the cat", "--target=cat",
                       f"--report={tmp_path}"])


@pytest.fixture(scope="module")
def bos_llama_folder(llama_folder, tmp_path_factory):
    """The Llama folder with a tokenizer.json whose template starts every text with <s>, as Llama's does."""
    from tokenizers import processors
    folder, tokenizer = llama_folder
    bos_folder = tmp_path_factory.mktemp("llama_bos")
    shutil.copytree(folder, bos_folder, dirs_exist_ok=True)
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig.from_pretrained(folder)
    config.initializer_range = 0.5  # sharp attention: a prompt without <s> continues differently
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(bos_folder)
    tokenizer = tokenizer.from_str(tokenizer.to_str())  # a copy: the module's fixture stays template-free
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(bos_folder / "tokenizer.json"))
    return bos_folder


def test_sample_starts_the_prompt_as_the_folders_template_does(bos_llama_folder, tmp_path, capsys):
    """Llama's tokenizer puts <s> before a text, so Hugging Face's generate sees it: sample.py must too (its
    greedy text equals transformers' own), and prints the prompt without it; --prompt_prefix=False drops it."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(bos_llama_folder / "tokenizer.json"))
    prompt = "the dog sat in the park"
    ids = hf_tokenizer(prompt)["input_ids"]
    assert ids[0] == 1 and ids[1:] == hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    hf = LlamaForCausalLM.from_pretrained(bos_llama_folder)
    hf.generation_config.eos_token_id = None  # sample.py, like nanoGPT's, runs past </s>
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, attention_mask=torch.ones(1, len(ids)),
                          pad_token_id=0)[0, len(ids):].tolist()
    args = [f"--init_from={bos_llama_folder}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=6",
            "--temperature=0", "--device=cpu"]
    sample.main(args)
    assert capsys.readouterr().out.strip() == hf_tokenizer.decode(ids[1:] + out).strip()
    model = GPT.from_pretrained(str(bos_llama_folder))
    with torch.no_grad():
        bare = model.generate(torch.tensor([ids[1:]]), 6, temperature=0.0)[0].tolist()
    assert bare[len(ids) - 1:] != out  # without <s> this model continues differently: the test can tell
    sample.main(args + ["--prompt_prefix=False"])
    assert capsys.readouterr().out.strip() == hf_tokenizer.decode(bare).strip()
    (tmp_path / "prompts.txt").write_text(f"{prompt}\nthe cat\n")  # a batch starts each prompt with <s> too
    sample.main(args[:1] + args[2:] + [f"--prompts={tmp_path / 'prompts.txt'}"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.strip() == "[prompt 1] " + hf_tokenizer.decode(ids[1:] + out).strip()
