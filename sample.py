"""Sample text from a trained model, printing it as it is generated.

    python sample.py --out_dir=out --start="ROMEO:" --num_samples=2 --max_new_tokens=300
    python sample.py --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --top_p=0.95 --seed=1
    python sample.py --start="ROMEO:" --max_new_tokens=40 --attention_dir=attn  # maps: PNG, HTML, npz
    python sample.py --start="ROMEO:" --ablate=0.1,1.3 --ablate_mode=mean        # knock heads out
    python sample.py --out_dir=out-bert --start="To be, or not to [MASK]"   # a BERT fills its masks
    python sample.py --out_dir=out-seq2seq --start="a line of text"      # encoder-decoder: greedy
    python sample.py --out_dir=out-seq2seq --start="a line" --decoding=beam --beam_size=4
    python sample.py --out_dir=out-rnn --start="a line of text" --attention_dir=attn-rnn  # the RNN encoder-decoder
    python sample.py --start="ROMEO:" --fast_decode=True   # static KV cache + compiled step (compiles first)
    python sample.py --init_from=gpt2 --start="The meaning of life is"    # OpenAI's GPT-2 (or a HF folder)
    python sample.py --init_from=path/to/bert --start="Paris is the [MASK] of France." --attention_dir=attn
    python sample.py --init_from=path/to/weights --tokenizer=path/to/tokenizer --start="..."  # a folder without one
"""

import os
import sys
from dataclasses import replace

from data.tokenizer import from_meta
from training.config import SampleConfig, build, check_init_from, parse_args, usage, wants_help
from training.families import FAMILIES, load_pretrained, model_from_checkpoint, pretrained_tokenizer, refuse_ignored
from training.system import pick_device, pick_dtype
from weights.checkpoint import SAMPLE_KEYS, load_checkpoint
from weights.common import ConfigError, UserError


def load_model(cfg: SampleConfig, device: str):
    """(model in eval mode, tokenizer, model_type, whether it was trained with --doc_mask) from out_dir's
    checkpoint, or a Hugging Face folder (GPT-2, Llama, Pythia, BERT, RoBERTa, ...) with its own tokenizer
    (or --tokenizer's)."""
    if cfg.init_from == "resume":
        if cfg.tokenizer:
            raise ConfigError("--tokenizer is for --init_from=<folder>; a checkpoint of ours holds its tokenizer.")
        ckpt = load_checkpoint(os.path.join(cfg.out_dir, cfg.checkpoint), needs=SAMPLE_KEYS)
        return (model_from_checkpoint(ckpt).to(device).eval(), from_meta(ckpt["tokenizer"]),
                ckpt.get("model_type", "gpt"), bool(ckpt.get("train_config", {}).get("doc_mask", False)))
    model = load_pretrained(cfg.init_from).to(device).eval()
    return model, pretrained_tokenizer(model, cfg.init_from, cfg.tokenizer), model.model_type, False


def main(argv: list[str]) -> None:
    """Sample from the model named on the command line."""
    if wants_help(argv):
        print(usage(__doc__, {"options (defaults)": SampleConfig}), end="")
        return
    given = parse_args(argv)
    cfg = build(given, SampleConfig)[0]
    check_init_from(cfg.init_from, ("resume",))
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    model, tokenizer, model_type, doc_masked = load_model(cfg, device)
    refuse_ignored(given, model_type, SampleConfig, source=cfg.out_dir if cfg.init_from == "resume" else cfg.init_from)
    if cfg.doc_mask is None:  # as the model was trained: a doc-masked GPT continues the prompt's last document
        cfg = replace(cfg, doc_mask=doc_masked and model_type == "gpt")
    FAMILIES[model_type].decode(model, tokenizer, cfg, device, dtype)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
