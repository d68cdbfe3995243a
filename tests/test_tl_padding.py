"""Left-padded batches of strings (to_tokens' padding_side and attention mask) and hook_pos_embed in
TransformerLens' layout, against TransformerLens 4.3 on one random GPT-2 with GPT-2's tokenizer; the
padded batch through patching, path patching and generate, against each prompt run alone."""

import os
import shutil

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities import get_attention_mask as tl_attention_mask
from transformers import GPT2Config, GPT2LMHeadModel

from data.setup_tiktoken import cache_path
from data.tokenizer import CharTokenizer
from lens import patching, patching_stats, path_patching
from lens.cache import LensError
from lens.tl import HookedTransformer, get_attention_mask
from model import BERT, GPT, BERTConfig, GPTConfig

TOL = dict(atol=1e-4, rtol=0)
TEXTS = ["Hi", "When Mary and John went", "the store"]


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """(our GPT, TransformerLens' bridge) of one random 2-layer GPT-2 whose folder holds GPT-2's tokenizer."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = tmp_path_factory.mktemp("gpt2tok")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_positions=32, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln" in name:
                p.normal_(1.0 if "ln" in name and name.endswith("weight") else 0.0, 0.2)
    hf.save_pretrained(folder)
    shutil.copy(cache_path("encoder.json"), folder / "vocab.json")  # GPT-2's BPE files, as tiktoken caches them
    shutil.copy(cache_path("vocab.bpe"), folder / "merges.txt")
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, device="cpu")
    return GPT.from_pretrained(str(folder)).eval(), bridge


def test_to_tokens_padding_and_masks_match_transformer_lens(gpt2_pair):
    ours, bridge = gpt2_pair
    for side in ("left", "right"):
        for bos in (True, False):
            expected = bridge.to_tokens(TEXTS, prepend_bos=bos, padding_side=side)
            tokens, mask = ours.to_tokens(TEXTS, prepend_bos=bos, padding_side=side, return_attention_mask=True)
            assert torch.equal(tokens, expected), (side, bos)
            expected_mask = tl_attention_mask(bridge.tokenizer, expected, bos, padding_side=side)
            assert torch.equal(mask, expected_mask), (side, bos)
            assert torch.equal(get_attention_mask(ours, tokens, bos, padding_side=side), expected_mask)
    assert ours.to_tokens(TEXTS, padding_side=None).tolist() == ours.to_tokens(TEXTS).tolist()  # right by default
    with pytest.raises(LensError, match="padding_side must be 'right' or 'left'"):
        ours.to_tokens(TEXTS, padding_side="middle")
    with pytest.raises(LensError, match="empty list"):
        ours.to_tokens([])
    chars = GPT(GPTConfig(vocab_size=3, n_layer=1, n_head=1, n_embd=4, block_size=8))
    chars.tokenizer = CharTokenizer("abc")
    tokens, mask = chars.to_tokens(["ab", "c"], padding_side="left", return_attention_mask=True)
    assert tokens.tolist() == [[0, 1], [0, 2]] and mask.tolist() == [[1, 1], [0, 1]]  # 0 pads: the mask tells
    with pytest.raises(LensError, match="no pad token"):
        get_attention_mask(chars, tokens, padding_side="left")


def test_left_padded_forward_cache_and_hooks_match_transformer_lens(gpt2_pair):
    ours, bridge = gpt2_pair
    model = HookedTransformer(ours)
    mask = ours.to_tokens(TEXTS, padding_side="left", return_attention_mask=True)[1].bool()
    logits, cache = model.run_with_cache(TEXTS, padding_side="left")
    tl_logits, tl_cache = bridge.run_with_cache(TEXTS, padding_side="left")
    torch.testing.assert_close(logits[mask], tl_logits[mask], **TOL)
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "hook_pos_embed"):
        torch.testing.assert_close(cache[name][mask], tl_cache[name][mask], **TOL)
    for row, text in enumerate(TEXTS):  # each row as if run alone
        alone = model(text)[0]
        torch.testing.assert_close(logits[row][mask[row]], alone, **TOL)

    def halve_head_0(z, hook):  # TransformerLens' (batch, pos, head, d_head)
        z[:, :, 0] *= 0.5
        return z

    hooks = [("blocks.0.attn.hook_z", halve_head_0)]
    patched = model.run_with_hooks(TEXTS, padding_side="left", fwd_hooks=hooks)
    tl_patched = bridge.run_with_hooks(TEXTS, padding_side="left", fwd_hooks=hooks)
    torch.testing.assert_close(patched[mask], tl_patched[mask], **TOL)
    assert not torch.allclose(patched[mask], logits[mask])
    loss = model(TEXTS, padding_side="left", return_type="loss", loss_per_token=True)  # pads' targets: 0
    real = mask[:, :-1] & mask[:, 1:]
    assert bool((loss[~real] == 0).all()) and bool((loss[real] > 0).all())


def test_hook_pos_embed_in_transformer_lens_layout(gpt2_pair):
    ours, bridge = gpt2_pair
    model = HookedTransformer(ours)
    tokens = torch.randint(0, 50257, (3, 7), generator=torch.Generator().manual_seed(0))
    (_, loss), cache = model.run_with_cache(tokens, return_type="both", incl_bwd=False)
    _, tl_cache = bridge.run_with_cache(tokens)
    assert cache["pos_embed"].shape == (7, 16) and cache["hook_pos_embed"].shape == (3, 7, 16)
    torch.testing.assert_close(cache["hook_pos_embed"], tl_cache["hook_pos_embed"], **TOL)
    assert cache["hook_pos_embed"].data_ptr() == cache["pos_embed"].data_ptr()  # a view, not a copy
    seen = {}

    def scale_positions(pos, hook):  # a TransformerLens hook: (batch, pos, d_model)
        seen[hook.name] = tuple(pos.shape)
        return pos * torch.arange(1.0, 4.0)[:, None, None]  # a different scale per example

    hooks = [("hook_pos_embed", scale_positions)]
    scaled = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert seen == {"hook_pos_embed": (3, 7, 16)}
    torch.testing.assert_close(scaled, bridge.run_with_hooks(tokens, fwd_hooks=hooks), **TOL)
    with ours.hooks([("pos_embed", lambda pos, name: seen.update(ours=tuple(pos.shape)))]):
        ours(tokens)
    assert seen["ours"] == (7, 16)  # our own name keeps ours
    grads, tl_grads = {}, {}
    model.run_with_hooks(tokens, return_type="loss", bwd_hooks=[("hook_pos_embed", lambda g, hook: grads.update(g=g))]
                         ).backward()
    bridge.run_with_hooks(tokens, return_type="loss",
                          bwd_hooks=[("hook_pos_embed", lambda g, hook: tl_grads.update(g=g.clone()))]).backward()
    assert grads["g"].shape == (3, 7, 16)
    torch.testing.assert_close(grads["g"], tl_grads["g"], **TOL)
    _, grad_cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    torch.testing.assert_close(grad_cache["hook_pos_embed_grad"], tl_grads["g"], **TOL)
    for run in (model.run_with_cache, ours.run_with_cache):  # the batch size is noted when embed is left out
        _, only = run(tokens, names_filter="hook_pos_embed")
        assert list(only) == ["pos_embed"] and only["hook_pos_embed"].shape == (3, 7, 16)
    _, only = model.run_with_cache(tokens, names_filter="pos_embed", return_type="loss", incl_bwd=True)
    with pytest.raises(LensError, match="cache it too"):
        only["hook_pos_embed_grad"]  # each example's gradient is the token embeddings' one


def char_model(**options):
    """A tiny random character GPT (rotary positions unless options say otherwise) with a tokenizer."""
    torch.manual_seed(0)
    config = dict(vocab_size=12, n_layer=2, n_head=2, n_embd=16, block_size=16, pos_emb="rope")
    model = GPT(GPTConfig(**{**config, **options})).eval()
    with torch.no_grad():  # GPT-2's init (std 0.02) gives near-uniform attention: make patterns sharp
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    model.tokenizer = CharTokenizer("abcdefghijkl")
    return model


def test_left_padded_patching_and_generate_equal_each_prompt_alone():
    model = char_model()
    clean_texts, corrupted_texts = ["abcdab", "cdc", "kajlb"], ["afcdab", "cec", "kgjlb"]
    clean, mask = model.to_tokens(clean_texts, padding_side="left", return_attention_mask=True)
    corrupted = model.to_tokens(corrupted_texts, padding_side="left")
    pads = (1 - mask).sum(1).tolist()
    metric = lambda logits: (logits[:, -1, 1] - logits[:, -1, 2]).sum()  # noqa: E731
    _, clean_cache = model.run_with_cache(clean, attention_mask=mask)
    _, corrupted_cache = model.run_with_cache(corrupted, attention_mask=mask)
    table = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric, attention_mask=mask)
    heads = path_patching.get_act_patch_direct_path_all_sources(model, corrupted, clean_cache, corrupted_cache,
                                                                metric, "k", attention_mask=mask)
    expected, expected_heads = torch.zeros_like(table), torch.zeros_like(heads)
    for row, pad in enumerate(pads):  # the sum of each prompt's own tables, its positions shifted by its padding
        alone, alone_corrupted = model.to_tokens(clean_texts[row]), model.to_tokens(corrupted_texts[row])
        _, alone_cache = model.run_with_cache(alone)
        _, alone_corrupted_cache = model.run_with_cache(alone_corrupted)
        expected[:, :pad] += metric(model(alone_corrupted)[0])
        expected[:, pad:] += patching.get_act_patch_resid_pre(model, alone_corrupted, alone_cache, metric)
        expected_heads += path_patching.get_act_patch_direct_path_all_sources(
            model, alone_corrupted, alone_cache, alone_corrupted_cache, metric, "k")
    torch.testing.assert_close(table, expected, **TOL)
    torch.testing.assert_close(heads, expected_heads, **TOL)
    generated = model.generate(clean, 4, top_k=1, attention_mask=mask)
    for row, text in enumerate(clean_texts):
        alone = model.generate(model.to_tokens(text), 4, top_k=1)
        assert generated[row, -4:].tolist() == alone[0, -4:].tolist()
    with pytest.raises(LensError, match="one mask value per token"):
        patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric, attention_mask=mask[:, 1:])
    bert = BERT(BERTConfig(vocab_size=12, n_layer=1, n_head=2, n_embd=8, block_size=8, post_norm=False)).eval()
    _, bert_cache = bert.run_with_cache(clean)
    with pytest.raises(LensError, match="decoder-only models"):
        patching.get_act_patch_resid_pre(bert, corrupted, bert_cache, metric, attention_mask=mask)


def test_generate_matches_transformer_lens(gpt2_pair):
    ours, bridge = gpt2_pair
    model = HookedTransformer(ours)
    for prompt in (TEXTS, "When Mary", model.to_tokens("When Mary")):  # a left-padded batch, a string, ids
        for return_type in ("input", "tokens"):
            got = model.generate(prompt, max_new_tokens=4, do_sample=False, return_type=return_type)
            expected = bridge.generate(prompt, max_new_tokens=4, do_sample=False, return_type=return_type,
                                       verbose=False)
            assert (torch.equal(got, expected) if isinstance(got, torch.Tensor) else got == expected), prompt
    with pytest.raises(LensError, match="return_type must be 'input', 'str' or 'tokens'"):
        model.generate("Hi", return_type="text")


def test_patching_pairs_left_padded_equal_right_padded():
    model = char_model()
    clean_texts, corrupted_texts = ["abcdab", "cdc", "kajlb"], ["afcdab", "cec", "kgjlb"]
    clean, mask = model.to_tokens(clean_texts, padding_side="left", return_attention_mask=True)
    corrupted = model.to_tokens(corrupted_texts, padding_side="left")
    right, right_corrupted, last = patching_stats.pad_pairs([model.to_tokens(t)[0] for t in clean_texts],
                                                            [model.to_tokens(t)[0] for t in corrupted_texts])
    rows = torch.arange(3)
    at_last = lambda logits: logits[rows, -1, 1] - logits[rows, -1, 2]  # noqa: E731  left padding: last is -1
    at_right = lambda logits: logits[rows, last, 1] - logits[rows, last, 2]  # noqa: E731
    for pairs in (patching_stats.patch_pairs, patching_stats.attribution_pairs):
        left = pairs(model, clean, corrupted, at_last, "attn_head_out_all_pos", attention_mask=mask)
        expected = pairs(model, right, right_corrupted, at_right, "attn_head_out_all_pos")
        torch.testing.assert_close(left.values, expected.values, **TOL)
        torch.testing.assert_close(left.baseline, expected.baseline, **TOL)
        assert float((left.values - left.baseline[None, None]).abs().max()) > 1e-3  # the patches do something
