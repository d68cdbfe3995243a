"""Checkpoints written before the package layout of issue 15 still load: the payload below is what
that version's train.py saved (keys, config dicts and parameter names, `attn.score.*` included)."""

import torch

from model import GPT, GPTConfig, Seq2Seq, Seq2SeqConfig, load_checkpoint, save_checkpoint
from training.config import to_dict
from training.families import model_from_checkpoint


def old_payload(model, model_type: str, model_args: dict) -> dict:
    """A checkpoint dict as the previous version wrote it: its parameter names, its config keys."""
    state = {k.replace(".scorer.", ".score."): v for k, v in model.state_dict().items()}  # Attention.score then
    return {"model": state, "optimizer": {"state": {}, "param_groups": []}, "model_type": model_type,
            "model_args": model_args, "train_config": {"out_dir": "out", "model_type": model_type},
            "tokenizer": {"kind": "char", "chars": "ab"}, "iter_num": 2, "best_val_loss": 4.0,
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
