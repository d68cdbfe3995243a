"""The activation cache's decompositions: components sum to the stream, component logits sum to the logit."""

import pytest
import torch

from data.tokenizer import CharTokenizer
from model import BERT, GPT, BERTConfig, GPTConfig, Seq2Seq, Seq2SeqConfig
from lens.cache import ActivationCache, HookNameError, LensError


def randomised(model):
    """Every parameter (norm gains and biases included) drawn at random, so no identity holds by accident."""
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def tiny_gpt(**overrides):
    config = dict(n_layer=2, n_head=3, n_embd=24, vocab_size=50, block_size=16, bias=True)
    return randomised(GPT(GPTConfig(**{**config, **overrides})))


def tiny_seq2seq():
    return randomised(Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=30, block_size=12, bias=True)))


@pytest.mark.parametrize("overrides", [{}, {"norm": "rmsnorm"}, {"attn_only": True}, {"pos_emb": "rope"}])
def test_gpt_components_sum_to_the_stream_and_the_logit(overrides):
    model = tiny_gpt(**overrides)
    idx = torch.randint(0, 50, (2, 10))
    (logits, _), cache = model.run_with_cache(idx)
    assert isinstance(cache, ActivationCache) and cache["blocks.0.attn.pattern"].shape == (2, 3, 10, 10)
    final = cache["blocks.1.resid_post"]
    parts, labels = cache.get_full_resid_decomposition(return_labels=True, expand_neurons=not overrides)
    assert labels[:3] == ["L0H0", "L0H1", "L0H2"] and labels[-1] == "bias"
    torch.testing.assert_close(parts.sum(0), final, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.decompose_resid().sum(0), final, atol=1e-5, rtol=0)
    for layer in range(2):  # the stream before each block, too
        torch.testing.assert_close(cache.decompose_resid(layer).sum(0), cache[f"blocks.{layer}.resid_pre"],
                                   atol=1e-5, rtol=0)
    heads = cache.stack_head_results().view(2, 3, 2, 10, 24).sum(1)  # (layer, B, T, C), summed over heads
    out = torch.stack([cache[f"blocks.{l}.attn.out"] for l in range(2)])
    bias = torch.stack([model.blocks[l].attn.c_proj.bias for l in range(2)])[:, None, None].detach()
    torch.testing.assert_close(heads + bias, out, atol=1e-5, rtol=0)
    # identity: sum of logit_attrs of every component = logit[token] - W_U[token] . ln_f.bias
    token = torch.tensor([3, 7])
    attrs = cache.logit_attrs(parts[:, :, -1], token, pos_slice=-1)  # (n, B)
    W = model.lm_head.weight.detach()
    ln_bias = getattr(model.ln_f, "bias", None)
    ln_bias = torch.zeros(24) if ln_bias is None else ln_bias.detach()
    expected = logits[torch.arange(2), -1, token] - W[token] @ ln_bias
    torch.testing.assert_close(attrs.sum(0), expected.detach(), atol=1e-4, rtol=0)
    # the frozen norm: components sum to ln_f(resid) minus its bias
    normed = cache.apply_ln_to_stack(parts).sum(0)
    torch.testing.assert_close(normed + ln_bias, model.ln_f(final).detach(), atol=1e-5, rtol=0)


def test_accumulated_resid_and_logit_difference():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (1, 8))
    (logits, _), cache = model.run_with_cache(idx)
    resid, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    torch.testing.assert_close(resid[2], cache["blocks.1.resid_pre"], atol=0, rtol=0)
    lens = cache.accumulated_resid(apply_ln=True) @ model.lm_head.weight.detach().T  # the logit lens
    torch.testing.assert_close(lens[-1], logits.detach(), atol=1e-5, rtol=0)
    parts = cache.decompose_resid(pos_slice=-1)
    diff = cache.logit_attrs(parts, torch.tensor([4]), incorrect_tokens=torch.tensor([9]), pos_slice=-1)
    W = model.lm_head.weight.detach()
    expected = logits[0, -1, 4] - logits[0, -1, 9] - (W[4] - W[9]) @ model.ln_f.bias.detach()
    torch.testing.assert_close(diff.sum(0), expected.detach().view(1), atol=1e-4, rtol=0)


def test_seq2seq_decoder_and_encoder_decompose():
    model = tiny_seq2seq()
    src, tgt = torch.randint(0, 30, (2, 7)), torch.randint(0, 30, (2, 5))
    (logits, _), cache = model.run_with_cache(src, tgt)
    parts, labels = cache.get_full_resid_decomposition(return_labels=True, expand_neurons=False)
    assert "L1XH1" in labels and "1_mlp_out" in labels  # cross-attention heads are components too
    torch.testing.assert_close(parts.sum(0), cache["decoder.blocks.1.resid_post"], atol=1e-5, rtol=0)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:4] == ["embed", "pos_embed", "0_attn_out", "0_cross_out"]
    token = torch.tensor([2, 5])
    attrs = cache.logit_attrs(parts[:, :, -1], token, pos_slice=-1)
    ln = model.decoder.ln_f
    expected = logits[torch.arange(2), -1, token] - model.lm_head.weight[token].detach() @ ln.bias.detach()
    torch.testing.assert_close(attrs.sum(0), expected.detach(), atol=1e-4, rtol=0)
    encoder = cache.stack("encoder")
    torch.testing.assert_close(encoder.get_full_resid_decomposition().sum(0),
                               cache["encoder.blocks.1.resid_post"], atol=1e-5, rtol=0)
    with pytest.raises(LensError, match="linear unembedding"):
        encoder.logit_attrs(encoder.decompose_resid(), 0)


def test_bad_requests_are_clear_errors():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (1, 6))
    _, cache = model.run_with_cache(idx, names_filter="*.resid_post")
    with pytest.raises(HookNameError, match="left out by names_filter"):
        cache.decompose_resid()
    with pytest.raises(HookNameError, match="hook_names"):
        cache["blocks.0.attention.pattern"]
    _, cache = model.run_with_cache(idx)
    with pytest.raises(LensError, match="layer 5 is out of range"):
        cache.accumulated_resid(layer=5)
    with pytest.raises(LensError, match="mode must be"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(LensError, match="token ids"):
        cache.logit_attrs(cache.decompose_resid(pos_slice=-1), 50, pos_slice=-1)
    bert = BERT(BERTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()  # post-norm
    _, cache = bert.run_with_cache(torch.randint(0, 20, (1, 6)))
    assert cache.accumulated_resid().shape == (2, 1, 6, 16)  # the stream itself is there
    with pytest.raises(LensError, match="post_norm"):
        cache.decompose_resid()
    capped = tiny_gpt(logit_softcap=5.0)
    _, cache = capped.run_with_cache(idx)
    with pytest.raises(LensError, match="softcap"):
        cache.logit_attrs(cache.decompose_resid(pos_slice=-1), 1, pos_slice=-1)
    dropout = tiny_gpt(dropout=0.1).train()
    _, cache = dropout.run_with_cache(idx)
    with pytest.raises(LensError, match="model.eval"):
        cache.decompose_resid()


def test_layer_zero_has_no_heads_and_its_stream_is_the_embeddings():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (2, 5))
    _, cache = model.run_with_cache(idx)
    heads, labels = cache.stack_head_results(0, return_labels=True)
    assert heads.shape == (0, 2, 5, 24) and labels == []  # TransformerLens: an empty stack
    assert cache.stack_head_results(0, pos_slice=-1, apply_ln=True).shape == (0, 2, 24)
    parts, labels = cache.get_full_resid_decomposition(0, return_labels=True)
    assert labels == ["embed", "pos_embed", "bias"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.0.resid_pre"], atol=1e-5, rtol=0)


def test_bare_models_have_the_transformer_lens_methods():
    """model/__init__.py adds lens/tl_methods.py to every family: no HookedTransformer wrapper needed."""
    model = tiny_gpt()  # 2 layers, 3 heads of 8, width 24
    assert model.W_Q.shape == (2, 3, 24, 8) and model.W_O.shape == (2, 3, 8, 24)
    torch.testing.assert_close(model.W_Q[1, 2], model.blocks[1].attn.c_attn.weight[16:24].T)  # head 2's query rows
    torch.testing.assert_close(model.OV.AB, model.W_V @ model.W_O)
    assert model.W_E is model.wte.weight and model.all_composition_scores("K").shape == (2, 3, 2, 3)
    model.tokenizer = CharTokenizer("abc")
    tokens = model.to_tokens(["cab", "a"])  # a character tokenizer has no BOS: none prepended, padded with 0
    assert tokens.tolist() == [[2, 0, 1], [0, 0, 0]] and tokens.device == model.wte.weight.device
    assert model.to_str_tokens("cab") == ["c", "a", "b"] and model.to_string(tokens[0]) == "cab"
    assert model.to_single_token("b") == 1
    bert = randomised(BERT(BERTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8)))
    assert bert.W_K.shape == (1, 2, 8, 4)
