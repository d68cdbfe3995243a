"""Prepare a web-scale corpus as GPT-2 BPE shards: FineWeb-Edu from the Hugging Face Hub, or local files.

    python data/fineweb/prepare.py --max_tokens=1_000_000_000                  # FineWeb-Edu sample-10BT, streamed
    python data/fineweb/prepare.py --input DIR_OR_FILES... --out_dir data/mycorpus   # .txt, .jsonl, .parquet

Writes val_000000.bin, train_000000.bin, ... (token files, whole documents, each preceded by
<|endoftext|>), progress.json and, once finished, meta.json. Interrupt it at any time and run the same
command again: it resumes after the last complete shard, without losing or repeating a document
(add a larger --max_tokens to continue a run that stopped at its limit). Local input: a .txt file is one
document, a .jsonl line or .parquet row is one document (its --text_field). Streaming from the Hub
needs `pip install datasets` and internet; tiktoken's files must be available (data/setup_tiktoken.py).
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data.shards import PrepareError, build_shards, input_files, local_documents, local_source  # noqa: E402
from data.tokenizer import GPT2Tokenizer, TokenizerError  # noqa: E402
from data.tokens import TokenFileError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def hub_documents(name: str, config: str, split: str, text_field: str):
    """documents(skip) streamed from a Hugging Face dataset (nothing is downloaded up front)."""
    try:
        from datasets import load_dataset  # lazy: only the Hub path needs it
    except ImportError:
        raise PrepareError("streaming from the Hub needs the datasets package: pip install datasets; "
                           "or pass local files with --input.") from None

    def documents(skip: int):
        hub_logger = logging.getLogger("huggingface_hub")  # its retries print a warning per try: one line here
        level = hub_logger.level
        hub_logger.setLevel(logging.ERROR)
        try:
            stream = load_dataset(name, name=config or None, split=split, streaming=True)
        except Exception as e:  # offline, unknown name, ...
            raise PrepareError(f"cannot open {name} ({config}) on the Hugging Face Hub ({type(e).__name__}); "
                               "check the name and your connection, or pass local files with --input.") from None
        finally:
            hub_logger.setLevel(level)
        if skip:
            stream = stream.skip(skip)
        for row in stream:
            yield row[text_field] or ""

    return documents


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help="local .txt/.jsonl/.parquet files or folders (default: the Hub)")
    parser.add_argument("--out_dir", default=HERE)
    parser.add_argument("--hf_dataset", default="HuggingFaceFW/fineweb-edu")
    parser.add_argument("--hf_config", default="sample-10BT")
    parser.add_argument("--hf_split", default="train")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--max_tokens", type=lambda s: int(s.replace("_", "")), default=None,
                        help="stop after about this many tokens (whole documents)")
    parser.add_argument("--shard_tokens", type=lambda s: int(s.replace("_", "")), default=100_000_000)
    parser.add_argument("--val_tokens", type=lambda s: int(s.replace("_", "")), default=10_000_000,
                        help="the first documents, up to about this many tokens, form the validation split")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--restart", action="store_true", help="ignore progress.json and start from scratch")
    args = parser.parse_args(argv)

    tokenizer_meta = GPT2Tokenizer().meta()  # fails early, in one line, when tiktoken's files are missing
    if args.input:
        files = input_files(args.input)
        documents, source = local_documents(files, args.text_field), local_source(files)
    else:
        documents = hub_documents(args.hf_dataset, args.hf_config, args.hf_split, args.text_field)
        source = {"hub": args.hf_dataset, "config": args.hf_config, "split": args.hf_split,
                  "text_field": args.text_field}
    meta = build_shards(args.out_dir, documents, tokenizer_meta, source, args.shard_tokens, args.val_tokens,
                        args.max_tokens, args.num_proc, args.restart)
    state = "complete" if meta["complete"] else "stopped at --max_tokens; raise it and re-run to continue"
    print(f"{meta['documents']:,} documents: train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} "
          f"tokens in {meta['shards']} shards -> {args.out_dir} ({state})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (PrepareError, TokenizerError, TokenFileError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("\ninterrupted; run the same command again to resume after the last complete shard.")
