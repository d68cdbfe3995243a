"""The OV copying score and top-1 copying fraction of lens/weight_space.py against explicit full-matrix
computations, with the token embedding or another embedding per token (an effective embedding)."""

import pytest
import torch

from lens.cache import LensError
from lens.weight_space import WeightSpace
from model import GPT, GPTConfig


def test_copying_scores_and_top1_equal_the_explicit_circuit():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=8, block_size=8, attn_only=True)).eval()
    with torch.no_grad():
        ws = WeightSpace(model)
        full = ws.W_E @ ws.W_V @ ws.W_O @ ws.W_U  # (l, h, V, V)
        eig = torch.linalg.eigvals(full.double())
        expected = eig.sum(-1).real / eig.abs().sum(-1)
        torch.testing.assert_close(ws.copying_scores().double(), expected, atol=1e-4, rtol=0)
        own = (full.argmax(-1) == torch.arange(11)).float().mean(-1)
        torch.testing.assert_close(ws.copying_top1(chunk=3), own)
        tokens = torch.tensor([2, 5, 7, 9])
        embedding = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        sub = embedding @ ws.W_V @ ws.W_O @ ws.W_U[:, tokens]  # (l, h, 4, 4)
        eig = torch.linalg.eigvals(sub.double())
        torch.testing.assert_close(ws.copying_scores(embedding, tokens).double(), eig.sum(-1).real / eig.abs().sum(-1),
                                   atol=1e-4, rtol=0)
        own = (sub.argmax(-1) == torch.arange(4)).float().mean(-1)
        torch.testing.assert_close(ws.copying_top1(embedding, tokens), own)
        with pytest.raises(LensError, match="embedding must be \\(n_tokens, d_model\\) = \\(4, 8\\)"):
            ws.copying_scores(embedding[:3], tokens)
