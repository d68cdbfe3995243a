"""Use nanoGPT's artifacts here: its prepared dataset and its checkpoint, read without executing anything.

    python tools/from_nanogpt.py --data_dir=../nanoGPT/data/shakespeare_char --to_data=data/nanogpt_char
    python train.py config/shakespeare_char_cpu.py --data_dir=data/nanogpt_char
    python tools/from_nanogpt.py --ckpt=../nanoGPT/out-shakespeare-char/ckpt.pt \\
        --data_dir=../nanoGPT/data/shakespeare_char --to_out=out-nanogpt
    python sample.py --out_dir=out-nanogpt --use_cache=False   # nanoGPT's sampler: the same tokens, seed for seed

--data_dir is nanoGPT's dataset folder (train.bin, val.bin and, for characters, meta.pkl; without meta.pkl the
ids are GPT-2 BPE). meta.pkl is read by an unpickler that builds only plain data (dicts, lists, strings,
numbers) and refuses anything else. ckpt.pt is loaded with weights_only=True; a vocabulary padded past the
tokenizer's (nanoGPT's 50304 for GPT-2's 50,257 ids) loses its padded rows, which are never sampled.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.nanogpt import convert_dataset, nanogpt_tokenizer  # noqa: E402
from weights.checkpoint import save_checkpoint  # noqa: E402
from weights.common import UserError  # noqa: E402
from weights.nanogpt import checkpoint_from_nanogpt  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    """--data_dir with --to_data (a dataset) and/or --ckpt with --to_out (a checkpoint)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="nanoGPT's dataset folder (its tokenizer, and the data)")
    parser.add_argument("--to_data", default="", help="write the dataset here, as ours")
    parser.add_argument("--ckpt", default="", help="nanoGPT's ckpt.pt")
    parser.add_argument("--to_out", default="", help="write the checkpoint here as ckpt.pt (an out_dir for sample.py)")
    args = parser.parse_args(argv)
    if not args.to_data and not (args.ckpt and args.to_out) or bool(args.ckpt) != bool(args.to_out):
        parser.error("give --to_data, or --ckpt with --to_out, or both")
    return args


def main(argv: list[str]) -> None:
    """Convert what was asked for; say where it went."""
    args = parse(argv)
    try:
        if args.to_data:
            meta = convert_dataset(args.data_dir, args.to_data)
            print(f"wrote {args.to_data}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
                  f"({meta['tokenizer']}, {meta['vocab_size']} ids); train with --data_dir={args.to_data}")
        if args.ckpt:
            target = os.path.join(args.to_out, "ckpt.pt")
            if os.path.exists(target):
                raise UserError(f"{target} already exists; pick another --to_out.")
            save_checkpoint(checkpoint_from_nanogpt(args.ckpt, nanogpt_tokenizer(args.data_dir)), target)
            print(f"wrote {target}; sample with python sample.py --out_dir={args.to_out}")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
