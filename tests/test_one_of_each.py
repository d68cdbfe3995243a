"""One of each (#29): one embedding stem (model/family.py EmbeddingStem) for every stack, with GPT-2's parameter
names, and one decoding loop (model/generation.py) for every generate."""

import ast
import pathlib

import torch

from model import (BERT, BERTConfig, GPT, GPTConfig, RNNConfig, RNNEncoderDecoder, Seq2Seq, Seq2SeqConfig)
from model.family import EmbeddingStem

SIZES = dict(vocab_size=13, block_size=8, n_layer=1, n_embd=16)


def test_every_stack_embeds_through_the_stem_with_its_old_names():
    gpt, bert = GPT(GPTConfig(n_head=2, **SIZES)), BERT(BERTConfig(n_head=2, **SIZES))
    seq2seq, rnn = Seq2Seq(Seq2SeqConfig(n_head=2, **SIZES)), RNNEncoderDecoder(RNNConfig(**SIZES))
    for stack in (gpt, bert, seq2seq.encoder, seq2seq.decoder, rnn.encoder, rnn.decoder):
        assert isinstance(stack, EmbeddingStem), type(stack)
        ids = torch.randint(0, 13, (2, 5))
        expected = stack.wte(ids) + (stack.wpe(torch.arange(5)) if stack.wpe is not None else 0)
        assert torch.equal(stack.stem(ids), expected)
    assert {"wte.weight", "wpe.weight"} <= set(gpt.state_dict()) and "wpe.weight" in bert.state_dict()
    assert {"encoder.wte.weight", "encoder.wpe.weight", "decoder.wpe.weight"} <= set(seq2seq.state_dict())
    assert {"encoder.wte.weight", "decoder.wte.weight"} <= set(rnn.state_dict()) and rnn.encoder.wpe is None
    assert {"embed", "pos_embed", "encoder.embed", "decoder.pos_embed"} <= set(gpt.hook_names()) | set(seq2seq.hook_names())


MODEL = pathlib.Path(__file__).parent.parent / "model"


def sampling_loops(source: str) -> list[str]:
    """The functions of source with a for/while loop whose body samples a token (calls `.sample(...)`)."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for loop in ast.walk(function):
                if isinstance(loop, (ast.For, ast.While)) and any(
                        isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "sample"
                        for stmt in loop.body for call in ast.walk(stmt)):
                    found.append(function.name)
    return found


def test_one_decoding_loop_in_the_model_package():
    loops = {path.name: sampling_loops(path.read_text()) for path in MODEL.glob("*.py")}
    assert {name: found for name, found in loops.items() if found} == {"generation.py": ["new_tokens"]}
    second = "def generate(self, n, sampling):\n    for _ in range(n):\n        token = sampling.sample(self.step())\n"
    assert sampling_loops(second) == ["generate"]  # the check sees a second copy


def test_no_second_embedding_stem_in_the_model_package():
    # token and position tables are made by the stem alone; BERT's segment table (wtt) is its own addition
    for path in MODEL.glob("*.py"):
        if path.name != "family.py":
            lines = [line for line in path.read_text().splitlines() if "nn.Embedding(" in line]
            assert all("self.wtt" in line for line in lines), (path.name, lines)
