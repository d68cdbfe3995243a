"""Export a trained checkpoint as a Hugging Face folder that transformers loads offline.

    python tools/export_hf.py --out_dir=out --to=hf-out           # a GPT -> GPT2LMHeadModel (or Llama/Qwen3)
    python tools/export_hf.py --out_dir=out-bert --to=hf-bert     # a BERT -> BertForMaskedLM

The folder holds config.json, model.safetensors and the tokenizer's files (GPT-2's vocab.json and
merges.txt, or a character-level tokenizer.json). It is built beside --to, then swapped in, so an export
over an earlier one leaves none of its files; a --to that holds anything else is refused unless
--overwrite=True. Then, in Python:
    AutoModelForCausalLM.from_pretrained("hf-out"), AutoTokenizer.from_pretrained("hf-out")
An option that no Hugging Face class expresses (additive or hard attention, relu2, soft-capped
logits, ...) is refused with one line naming it.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.families import model_from_checkpoint  # noqa: E402
from weights.checkpoint import load_checkpoint  # noqa: E402
from weights.common import UserError  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    """--out_dir (the checkpoint's folder) and --to (the folder to write); --key=value or --key value."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="out", help="the training run's folder (holding ckpt.pt)")
    parser.add_argument("--to", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--overwrite", default="False", choices=("True", "False"),
                        help="True: replace --to even if it holds something else than an earlier export")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Load the checkpoint, write the folder, say what loads it."""
    args = parse(argv)
    try:
        ckpt = load_checkpoint(args.out_dir)
        model = model_from_checkpoint(ckpt)
        model.save_pretrained(args.to, ckpt.get("tokenizer"), overwrite=args.overwrite == "True")
    except UserError as e:
        sys.exit(f"error: {e}")
    auto = "AutoModelForMaskedLM" if model.model_type == "bert" else "AutoModelForCausalLM"
    print(f"wrote {args.to} (config.json, model.safetensors, tokenizer files); load it with "
          f"transformers.{auto}.from_pretrained({args.to!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
