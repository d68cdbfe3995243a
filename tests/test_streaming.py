"""Streaming generated text: the incremental decoder prints what a full decode prints, each character once
complete, and sample.py's decoding work grows linearly with the number of tokens."""

import random

import torch

from data.streaming import StreamDecoder
from data.tokenizer import CharTokenizer, GPT2Tokenizer
from model import GPT, GPTConfig
from training.config import SampleConfig
from training.decoding import sample_gpt

HOSTILE = ("Hello 😀👩‍👩‍👧 wörld: e\u0301\u0301 a\u0308\u0323 ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 中文字符 🇫🇷 \r\n\x00 tab\t"
           "<|endoftext|> U+2028\u2028 Ǆ ﬁ ẞ 각 zero\u200bwidth")


def stream(tokenizer, ids) -> list[str]:
    """The chunks a StreamDecoder returns for ids, the flush last."""
    decoder = StreamDecoder(tokenizer)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_stream_equals_full_decode_and_prints_each_character_once_complete():
    tok = GPT2Tokenizer()
    ids = tok.encode(HOSTILE)
    assert any(tok.decode(ids[:n]).endswith("\ufffd") for n in range(len(ids)))  # some character is split
    chunks = stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids) == HOSTILE and chunks[-1] == ""
    printed = ""
    for n, chunk in enumerate(chunks[:-1], 1):
        printed += chunk
        assert "\ufffd" not in chunk  # never half a character
        whole = tok.decode(ids[:n])
        assert whole.startswith(printed)
        if not whole.endswith("\ufffd"):
            assert printed == whole  # a complete character is printed at once


def test_stream_of_arbitrary_ids_equals_full_decode():
    tok = GPT2Tokenizer()
    single_bytes = [i for i in range(256)]  # GPT-2's first 256 ids are single bytes: lone lead/continuation bytes
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.choice(single_bytes) if rng.random() < 0.6 else rng.randrange(50257) for _ in range(rng.randrange(1, 60))]
        assert "".join(stream(tok, ids)) == tok.decode(ids)
    chars = CharTokenizer("ab\u0301😀\n", ("[MASK]", "[EOS]"))
    ids = [rng.randrange(chars.vocab_size) for _ in range(200)]
    assert "".join(stream(chars, ids)) == chars.decode(ids)


class CountingTokenizer:
    """A tokenizer that counts the ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def __getattr__(self, name):  # the rest of the interface (encode, prefix_ids, ...) is the wrapped tokenizer's
        return getattr(self.tokenizer, name)

    def decode(self, ids):
        ids = list(ids)
        self.decoded += len(ids)
        return self.tokenizer.decode(ids)


def test_sample_decodes_each_token_a_bounded_number_of_times(capsys):
    torch.manual_seed(0)
    chars = CharTokenizer("abcdefgh \n")
    model = GPT(GPTConfig(vocab_size=chars.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    for n in (100, 800):
        tok = CountingTokenizer(chars)
        cfg = SampleConfig(start="ab", num_samples=1, max_new_tokens=n, temperature=1.0, top_k=None, seed=1)
        sample_gpt(model, tok, cfg, "cpu", "float32")
        out = capsys.readouterr().out
        expected = model.generate(torch.tensor([[0, 1]]), n, 1.0, generator=torch.Generator().manual_seed(1))
        assert out == chars.decode(expected[0].tolist()) + "\n"
        assert tok.decoded <= 4 * n + 10, (n, tok.decoded)  # a full decode per token: n * n / 2
