"""nanoGPT's artifacts: meta.pkl read without executing anything, its train.bin/val.bin converted with the ids
unchanged, its ckpt.pt loaded into our GPT, sampling what nanoGPT's model samples on the same weights."""

import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sample
import train
from conftest import one_line_error, run_script
from data.loader import read_meta
from data.tokens import TokenFileError, load_tokens
from training.families import model_from_checkpoint
from weights.checkpoint import load_checkpoint
from weights.nanogpt import NanoGPTError, read_meta_pkl

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40
CHARS = sorted(set(TEXT))
ARGS = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, bias=True, vocab_size=len(CHARS), dropout=0.0)


def nanogpt_dataset(folder):
    """What nanoGPT's data/shakespeare_char/prepare.py writes: bare uint16 train.bin/val.bin and meta.pkl."""
    folder.mkdir(parents=True, exist_ok=True)
    stoi = {ch: i for i, ch in enumerate(CHARS)}
    ids = np.array([stoi[c] for c in TEXT], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": stoi}, f)
    return ids, n


class Payload:
    """A pickle that would run a command when loaded by pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_meta_pkl_is_read_as_plain_data_only(tmp_path):
    nanogpt_dataset(tmp_path / "d")
    meta = read_meta_pkl(str(tmp_path / "d" / "meta.pkl"))
    assert meta["vocab_size"] == len(CHARS) and meta["itos"][0] == CHARS[0]
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    for payload, message in (({"vocab_size": Payload(marker)}, "posix.system|os.system"), ({1, 2}, "holds a set"),
                             (torch.zeros(2), "code, not data")):
        evil.write_bytes(pickle.dumps(payload))
        with pytest.raises(NanoGPTError, match=message):
            read_meta_pkl(str(evil))
    evil.write_bytes(pickle.dumps({"a": 1})[:-3])
    with pytest.raises(NanoGPTError, match="not a readable pickle"):
        read_meta_pkl(str(evil))
    assert not marker.exists()  # nothing was executed


def test_nanogpt_dataset_converts_with_the_ids_unchanged_and_trains(tmp_path):
    ids, n = nanogpt_dataset(tmp_path / "nano")
    with pytest.raises(TokenFileError, match="nanoGPT dataset.*tools/from_nanogpt.py"):
        read_meta(str(tmp_path / "nano"))
    run_script("tools/from_nanogpt.py", f"--data_dir={tmp_path / 'nano'}", f"--to_data={tmp_path / 'ours'}")
    assert np.array_equal(load_tokens(str(tmp_path / "ours" / "train.bin")), ids[:n])
    assert np.array_equal(load_tokens(str(tmp_path / "ours" / "val.bin")), ids[n:])
    assert read_meta(str(tmp_path / "ours"))["chars"] == "".join(CHARS)
    train.main([f"--data_dir={tmp_path / 'ours'}", f"--out_dir={tmp_path / 'out'}", "--max_iters=2", "--n_layer=1",
                "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2", "--eval_iters=1", "--device=cpu"])
    assert os.path.exists(tmp_path / "out" / "ckpt.pt")
    (tmp_path / "nano" / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "itos": {0: "a", 1: "b", 2: "c"}}))
    line = one_line_error(run_script("tools/from_nanogpt.py", f"--data_dir={tmp_path / 'nano'}",
                                     f"--to_data={tmp_path / 'other'}", check=False))
    assert "outside the 3-token vocabulary" in line


def nanogpt_weights(args, seed=0):
    """A random state dict under nanoGPT's names and shapes (nn.Linear weights are (out, in)), compiled."""
    gen = torch.Generator().manual_seed(seed)
    C, V = args["n_embd"], args["vocab_size"]
    rand = lambda *shape: 0.3 * torch.randn(*shape, generator=gen)  # noqa: E731
    sd = {"transformer.wte.weight": rand(V, C), "transformer.wpe.weight": rand(args["block_size"], C)}
    for l in range(args["n_layer"]):
        p = f"transformer.h.{l}."
        sd |= {p + "ln_1.weight": 1 + rand(C), p + "ln_1.bias": rand(C), p + "ln_2.weight": 1 + rand(C),
               p + "ln_2.bias": rand(C), p + "attn.c_attn.weight": rand(3 * C, C), p + "attn.c_attn.bias": rand(3 * C),
               p + "attn.c_proj.weight": rand(C, C), p + "attn.c_proj.bias": rand(C),
               p + "mlp.c_fc.weight": rand(4 * C, C), p + "mlp.c_fc.bias": rand(4 * C),
               p + "mlp.c_proj.weight": rand(C, 4 * C), p + "mlp.c_proj.bias": rand(C),
               p + "attn.bias": torch.tril(torch.ones(args["block_size"], args["block_size"]))[None, None]}
    sd |= {"transformer.ln_f.weight": 1 + rand(C), "transformer.ln_f.bias": rand(C)}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied
    return {"_orig_mod." + k: v for k, v in sd.items()}  # nanoGPT saves its compiled model's keys


def reference_logits(sd, args, idx):
    """nanoGPT's GPT forward written out from its state dict: pre-norm blocks, exact GELU, LayerNorm eps 1e-5."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    B, T = idx.shape
    C, nh = args["n_embd"], args["n_head"]
    norm = lambda x, name: F.layer_norm(x, (C,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)  # noqa: E731
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    for l in range(args["n_layer"]):
        p = f"transformer.h.{l}."
        q, k, v = F.linear(norm(x, p + "ln_1"), sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]).split(C, 2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"])
        h = F.gelu(F.linear(norm(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return F.linear(norm(x, "transformer.ln_f"), sd["lm_head.weight"])


@torch.no_grad()
def reference_sample(sd, args, idx, n, temperature, top_k, seed):
    """nanoGPT's sampler: crop to block_size, last logits / temperature, keep the top k, softmax, multinomial."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        logits = reference_logits(sd, args, idx[:, -args["block_size"]:])[:, -1, :] / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits[logits < kth] = float("-inf")
        idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen)], dim=1)
    return idx


def test_nanogpt_checkpoint_samples_what_nanogpt_samples(tmp_path, capsys):
    nanogpt_dataset(tmp_path / "nano")
    sd = nanogpt_weights(ARGS)
    torch.save({"model": sd, "model_args": ARGS, "iter_num": 5000, "best_val_loss": torch.tensor(1.5),
                "config": {"batch_size": 64}}, tmp_path / "ckpt.pt")
    run_script("tools/from_nanogpt.py", f"--data_dir={tmp_path / 'nano'}", f"--ckpt={tmp_path / 'ckpt.pt'}",
               f"--to_out={tmp_path / 'out'}")
    prompt = [CHARS.index(c) for c in "All:\n"]
    expected = reference_sample(sd, ARGS, torch.tensor([prompt]), 40, 0.8, 5, seed=1337)  # past block_size 16
    capsys.readouterr()
    sample.main([f"--out_dir={tmp_path / 'out'}", "--start=All:\n", "--num_samples=1", "--max_new_tokens=40",
                 "--temperature=0.8", "--top_k=5", "--seed=1337", "--use_cache=False", "--device=cpu"])
    assert capsys.readouterr().out == "".join(CHARS[i] for i in expected[0].tolist()) + "\n"

    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "out"))).eval()
    x = torch.tensor([prompt * 3])
    torch.testing.assert_close(model(x)[0], reference_logits(sd, ARGS, x), atol=1e-5, rtol=0)
    with torch.no_grad():  # within one window the KV cache gives the same tokens too
        cached = model.generate(torch.tensor([prompt]), 11, 0.8, 5, generator=torch.Generator().manual_seed(3))
    assert cached.tolist() == reference_sample(sd, ARGS, torch.tensor([prompt]), 11, 0.8, 5, seed=3).tolist()


def test_a_padded_nanogpt_vocabulary_loses_its_padded_rows(tmp_path):
    nanogpt_dataset(tmp_path / "nano")
    padded = {**ARGS, "vocab_size": 64}  # nanoGPT rounds up to a multiple of 64
    sd = nanogpt_weights(padded, seed=2)
    torch.save({"model": sd, "model_args": padded}, tmp_path / "ckpt.pt")
    run_script("tools/from_nanogpt.py", f"--data_dir={tmp_path / 'nano'}", f"--ckpt={tmp_path / 'ckpt.pt'}",
               f"--to_out={tmp_path / 'out'}")
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "out"))).eval()
    assert model.config.vocab_size == len(CHARS)
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(x)[0], reference_logits(sd, padded, x)[..., :len(CHARS)], atol=1e-5, rtol=0)
    torch.save({"model": sd}, tmp_path / "bad.pt")
    line = one_line_error(run_script("tools/from_nanogpt.py", f"--data_dir={tmp_path / 'nano'}",
                                     f"--ckpt={tmp_path / 'bad.pt'}", f"--to_out={tmp_path / 'out2'}", check=False))
    assert "not a nanoGPT checkpoint" in line
