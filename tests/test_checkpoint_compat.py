"""Checkpoints written before the package layout of issue 15 still load: the payload below is what
that version's train.py saved (keys, config dicts and parameter names, `attn.score.*` included)."""

import pytest
import torch

from model import (GPT, GPTConfig, HardAttentionConfig, RNNConfig, RNNEncoderDecoder, Seq2Seq, Seq2SeqConfig,
                   load_checkpoint, save_checkpoint)
from model.config import flatten
from training.config import from_dict, to_dict
from training.families import model_from_checkpoint


def old_payload(model, model_type: str, model_args: dict) -> dict:
    """A checkpoint dict as the previous version wrote it: its parameter names, its config keys."""
    state = {k.replace(".scorer.", ".score."): v for k, v in model.state_dict().items()}  # Attention.score then
    return {"model": state, "optimizer": {"state": {}, "param_groups": []}, "model_type": model_type,
            "model_args": model_args, "train_config": {"out_dir": "out", "model_type": model_type},
            "tokenizer": {"tokenizer": "char", "vocab_size": 2, "specials": [], "chars": "ab"}, "iter_num": 2, "best_val_loss": 4.0,
            "rng": [], "elapsed_s": 1.0, "wandb_id": None}


def test_old_gpt_checkpoint_with_a_learned_score_loads_through_a_file(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, attn_score="general")).eval()
    with torch.no_grad():
        model.blocks[1].attn.scorer.weight.mul_(3.0)  # not the initial value: the loaded one must be read
    args = {**to_dict(model.config)}
    payload = old_payload(model, "gpt", args)
    assert "blocks.1.attn.score.weight" in payload["model"]
    save_checkpoint(payload, str(tmp_path / "ckpt.pt"))
    loaded = model_from_checkpoint(load_checkpoint(str(tmp_path))).eval()
    idx = torch.randint(0, 11, (2, 8))
    assert torch.equal(loaded.blocks[1].attn.scorer.weight, model.blocks[1].attn.scorer.weight)
    assert torch.allclose(loaded(idx)[0], model(idx)[0])


def test_old_seq2seq_checkpoint_with_zero_meaning_same_as_target_loads():
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, cross_attn_score="general")
    model = Seq2Seq(config).eval()
    # the previous version stored 0 for "the target side's value" (resolved by properties then)
    args = {**to_dict(config), "n_encoder_layer": 0, "source_block_size": 0, "source_vocab_size": 0}
    loaded = model_from_checkpoint(old_payload(model, "seq2seq", args)).eval()
    assert (loaded.config.n_encoder_layer, loaded.config.source_block_size, loaded.config.source_vocab_size) == (2, 8, 13)
    assert loaded.encoder.wte is loaded.decoder.wte  # one shared vocabulary, as before
    src, tgt = torch.randint(0, 13, (2, 6)), torch.randint(0, 13, (2, 5))
    assert torch.allclose(loaded(src, tgt)[0], model(src, tgt)[0])


# model_args as the version before issue 29 stored them (its to_dict of a GPTConfig, copied from a checkpoint
# its train.py wrote): the hard attention options were flat fields of the config then
NEW_IN_35 = {"hard_attention_credit": "query", "hard_attention_samples": 1, "hard_attention_normalize": False}
GPT_ARGS_BEFORE_29 = {
    "block_size": 8, "vocab_size": 11, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0, "bias": False,
    "attn_score": "general", "attn_weighting": "hard", "cross_attn_score": "scaled_dot",
    "cross_attn_weighting": "softmax", "hard_attention_temperature": 0.5, "hard_attention_estimator": "reinforce",
    "hard_attention_eval": "sample", "hard_attention_baseline": "moving_average",
    "hard_attention_baseline_momentum": 0.8, "hard_attention_entropy": 0.01, "activation": "gelu",
    "mlp_hidden": None, "norm": "layernorm", "norm_eps": 1e-05, "post_norm": False, "attn_only": False,
    "pos_emb": "learned", "rope_base": 10000.0, "qk_norm": False, "zero_init": False, "tie_embeddings": True,
    "logit_softcap": 0.0}


def test_checkpoint_with_flat_hard_attention_options_loads_into_the_nested_config(tmp_path):
    torch.manual_seed(0)
    config = from_dict(GPTConfig, GPT_ARGS_BEFORE_29)
    assert config.hard_attention == HardAttentionConfig(temperature=0.5, estimator="reinforce", eval="sample",
                                                        baseline="moving_average", baseline_momentum=0.8, entropy=0.01)
    stored = to_dict(config)  # this version stores the same flat keys (and options added since)
    assert {k: stored[k] for k in GPT_ARGS_BEFORE_29} == GPT_ARGS_BEFORE_29
    model = GPT(config).train()
    idx = torch.randint(0, 11, (2, 8))
    model(idx, idx)[1].backward()  # one REINFORCE step: the baseline buffer holds a real value
    state = dict(model.state_dict())
    assert "blocks.1.attn.weighting.baseline" in state and torch.isfinite(state["blocks.1.attn.weighting.baseline"])
    save_checkpoint(old_payload(model, "gpt", dict(GPT_ARGS_BEFORE_29)), str(tmp_path / "ckpt.pt"))
    loaded = model_from_checkpoint(load_checkpoint(str(tmp_path)))
    assert loaded.config == config
    assert torch.equal(loaded.blocks[1].attn.weighting.baseline, model.blocks[1].attn.weighting.baseline)
    assert loaded.blocks[0].attn.weighting.eval_mode == "sample" and loaded.blocks[0].attn.weighting.momentum == 0.8
    model.eval(), loaded.eval()
    torch.manual_seed(1)  # eval='sample' draws: the same seed, the same draws
    expected = model(idx)[0]
    torch.manual_seed(1)
    assert torch.equal(loaded(idx)[0], expected)


def test_rnn_checkpoint_with_flat_hard_attention_options_loads():
    args = {"block_size": 8, "vocab_size": 13, "source_block_size": 8, "source_vocab_size": 13, "cell": "gru",
            "n_layer": 1, "n_embd": 16, "bidirectional": True, "attention": True, "n_head": 1,
            "attn_score": "additive", "attn_weighting": "hard", "hard_attention_temperature": 1.0,
            "hard_attention_estimator": "reinforce", "hard_attention_eval": "argmax", "hard_attention_baseline": "none",
            "hard_attention_baseline_momentum": 0.9, "hard_attention_entropy": 0.0, "dropout": 0.0, "bias": True,
            "tie_embeddings": True}  # an RNN's model_args before issue 29
    model = RNNEncoderDecoder(from_dict(RNNConfig, args)).eval()
    loaded = model_from_checkpoint(old_payload(model, "rnn", dict(args))).eval()
    assert loaded.config.hard_attention.baseline == "none" and to_dict(loaded.config) == {**args, **NEW_IN_35}
    src, tgt = torch.randint(0, 13, (2, 6)), torch.randint(0, 13, (2, 5))
    assert torch.equal(loaded(src, tgt)[0], model(src, tgt)[0])


def test_config_classes_take_a_checkpoints_flat_model_args():
    """nanoGPT's habit, `GPTConfig(**checkpoint["model_args"])`, builds the nested hard-attention config from the
    flat keys every checkpoint stores (it was a TypeError once the options were nested)."""
    for cls in (GPTConfig, Seq2SeqConfig, RNNConfig):
        flat = {**flatten(cls()), "hard_attention_estimator": "reinforce", "hard_attention_temperature": 0.5}
        config = cls(**flat)
        assert config.hard_attention == HardAttentionConfig(estimator="reinforce", temperature=0.5)
        assert flatten(config) == flat
    with pytest.raises(TypeError, match="hard_attention_bogus"):
        GPTConfig(hard_attention_bogus=1)
