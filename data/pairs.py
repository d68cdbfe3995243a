"""Source/target pairs for the encoder-decoder: files, built-in tasks, batches grouped by length.

A prepared pairs dataset is a folder with train.jsonl and val.jsonl (one {"source", "target"} object
a line) and meta.json (a char tokenizer over every character of the pairs), written last.

    python data/pairs.py --input pairs.tsv --out_dir data/mypairs      # your own pairs (TSV or JSONL)
    python data/reverse/prepare.py                                      # built-in: reverse lines
    python data/denoise/prepare.py                                      # built-in: restore corrupted lines
"""

import argparse
import json
import os
import random
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from data.corpus import shakespeare_text
from data.tokenizer import CharTokenizer
from data.tokens import TokenFileError, replace_dataset
from weights.common import IGNORE_INDEX, ConfigError, atomic_write

SPLITS = ("train", "val")


class PairsError(TokenFileError):
    """A pairs file that cannot be read as source/target pairs (a data error, as a bad token file)."""


# ----------------------------------------------------------------------------------------------
# Reading pairs


def read_pairs(path: str) -> list[tuple[str, str]]:
    """Pairs from a TSV file (`source<TAB>target` a line) or JSONL (`{"source": ..., "target": ...}`)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")  # not splitlines(): text may hold U+2028, form feeds, ...
    except OSError:
        raise PairsError(f"cannot read {path}; pass an existing TSV or JSONL file of source/target pairs.")
    except UnicodeDecodeError:
        raise PairsError(f"{path} is not UTF-8 text; convert it to UTF-8 first.")
    first = next((line for line in lines if line.strip()), "")
    jsonl = path.endswith((".jsonl", ".json")) or not path.endswith(".tsv") and first.lstrip().startswith("{")
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                row = json.loads(line)
                pair = (row["source"], row["target"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PairsError(f"{path} line {n}: expected a JSON object with \"source\" and \"target\".")
            if not all(isinstance(s, str) for s in pair):
                raise PairsError(f"{path} line {n}: \"source\" and \"target\" must be strings.")
        else:
            fields = line.split("\t")
            if len(fields) != 2:
                raise PairsError(f"{path} line {n}: expected `source<TAB>target` (one tab), "
                                 f"found {len(fields) - 1} tabs.")
            pair = (fields[0], fields[1])
        pairs.append(pair)
    if not pairs:
        raise PairsError(f"{path} holds no pairs.")
    return pairs


# ----------------------------------------------------------------------------------------------
# Built-in tasks made from the public-domain corpus


def corpus_lines(max_len: int, max_plays: int | None = None) -> list[str]:
    """Distinct non-empty lines of the built-in Shakespeare, each cut to at most max_len characters."""
    lines = (line.strip()[:max_len].rstrip() for line in shakespeare_text(max_plays).splitlines())
    return list(dict.fromkeys(line for line in lines if line))


def reverse_pairs(lines: list[str], unit: str = "chars") -> list[tuple[str, str]]:
    """(line, the line reversed) by characters or by words."""
    if unit == "chars":
        return [(line, line[::-1]) for line in lines]
    if unit == "words":
        return [(line, " ".join(reversed(line.split()))) for line in lines]
    raise ValueError(f"unit must be chars or words, got {unit!r}.")


def corrupt(line: str, rng: random.Random, mask_char: str, noise: float = 0.15, mean_span: float = 3.0) -> str:
    """Replace random spans (about `noise` of the characters, mean length mean_span) by one mask_char each."""
    out, i = [], 0
    start_p = noise / mean_span  # chance that a span starts at a given character
    while i < len(line):
        if rng.random() < start_p:
            span = max(1, round(rng.expovariate(1 / mean_span)))
            out.append(mask_char)
            i += span
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def denoise_pairs(lines: list[str], seed: int = 0, noise: float = 0.15,
                  mask_char: str = "~") -> list[tuple[str, str]]:
    """(corrupted line, original line): spans replaced by mask_char (which must not occur in the lines)."""
    if any(mask_char in line for line in lines):
        raise ValueError(f"the mask character {mask_char!r} occurs in the text; pick another one.")
    rng = random.Random(seed)
    return [(corrupt(line, rng, mask_char, noise), line) for line in lines]


def split_pairs(pairs: list[tuple[str, str]], n_val: int, seed: int = 0):
    """Shuffle distinct pairs (by source) with a fixed seed; hold out n_val of them for validation."""
    distinct = list({source: (source, target) for source, target in pairs}.values())
    if len(distinct) < 2:
        raise PairsError("at least two distinct sources are needed to hold some out for validation.")
    random.Random(seed).shuffle(distinct)
    n_val = min(n_val, len(distinct) // 2)
    return distinct[n_val:], distinct[:n_val]


def write_pairs_dataset(out_dir: str, train: list, val: list, meta_extra: dict) -> dict:
    """Write train.jsonl, val.jsonl and (last) meta.json with a char tokenizer over all the pairs
    (the dataset already in out_dir stays whole until they are written: data/tokens.py replace_dataset)."""
    tokenizer = CharTokenizer.from_text("".join(s + t for s, t in train + val))
    meta = {**tokenizer.meta(), "format": "pairs", "train_pairs": len(train), "val_pairs": len(val), **meta_extra}
    texts = {f"{split}.jsonl": "".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
                                       for s, t in pairs) for split, pairs in zip(SPLITS, (train, val))}
    replace_dataset(out_dir, {name: lambda path, text=text: write_atomic(path, text) for name, text in texts.items()},
                    meta)
    return meta


def write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file and a rename."""
    with atomic_write(path, "w") as f:
        f.write(text)


def task_parser(doc: str, out_dir: str) -> argparse.ArgumentParser:
    """Command-line options shared by the built-in tasks' prepare scripts."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_len", type=int, default=40, help="cut each line to this many characters")
    parser.add_argument("--n_val", type=int, default=2000, help="held-out lines")
    parser.add_argument("--max_plays", type=int, default=None, help="use only the first N plays")
    parser.add_argument("--out_dir", default=out_dir)
    return parser


def run_task(prepare, args: argparse.Namespace, **options) -> None:
    """Call a task's prepare(out_dir, max_len, n_val, max_plays, **options) and report; one-line errors."""
    if args.max_len < 1 or args.n_val < 1:
        sys.exit("error: --max_len and --n_val must be positive.")
    try:
        meta = prepare(args.out_dir, max_len=args.max_len, n_val=args.n_val, max_plays=args.max_plays, **options)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{meta['task']}: {meta['train_pairs']:,} train and {meta['val_pairs']:,} val pairs, "
          f"vocab {meta['vocab_size']} -> {args.out_dir}")


# ----------------------------------------------------------------------------------------------
# Batches


class PairBatches:
    """Batches of (source, target) pairs for Seq2Seq, each drawn from pairs of similar lengths.

    The training pairs are sorted by length and cut into groups of a few batches; a batch is
    batch_size pairs of one group (groups drawn in proportion to their size), so little of it is padding.
    """

    specials = ("[PAD]", "[BOS]", "[EOS]")
    group_batches = 8  # a length group holds this many batches' worth of pairs
    eval_pairs = 1000  # held-out pairs decoded for val_exact_match at each evaluation

    def __init__(self, folder: str, model_config, batch_size: int, device: str = "cpu", tokenizer=None):
        self.batch_size, self.device, self.tokenizer = batch_size, device, tokenizer
        self.pad, self.bos, self.eos = (tokenizer.special_ids[s] for s in self.specials)
        if model_config.source_vocab_size < tokenizer.vocab_size:  # the source is written with the same tokenizer
            raise ConfigError(f"source_vocab_size {model_config.source_vocab_size} is smaller than the dataset's vocabulary "
                              f"({tokenizer.vocab_size} ids); leave it at 0 (one vocabulary) or raise it.")
        self.max_source, self.max_target = model_config.source_block_size, model_config.block_size - 1  # BOS/EOS
        self.pairs, self.groups = {}, {}
        for split in SPLITS:
            path = os.path.join(folder, f"{split}.jsonl")
            if not os.path.exists(path):
                raise TokenFileError(f"{path} is missing; the encoder-decoder trains on a pairs dataset: "
                                     "--dataset=reverse, --dataset=denoise, or one made by python data/pairs.py.")
            pairs, dropped = [], 0
            for source, target in read_pairs(path):
                src, tgt = tokenizer.encode(source), tokenizer.encode(target)
                if 0 < len(src) <= self.max_source and len(tgt) <= self.max_target:
                    pairs.append((src, tgt))
                else:
                    dropped += 1
            if not pairs:
                raise TokenFileError(f"no {split} pair has a non-empty source that fits source_block_size "
                                     f"{self.max_source} and a target that fits block_size {self.max_target + 1}; "
                                     f"raise them to cover the pairs in {folder}.")
            if dropped:
                print(f"{split}: skipped {dropped} of {dropped + len(pairs)} pairs with an empty source or longer "
                      f"than source_block_size {self.max_source} or block_size - 1 = {self.max_target}",
                      file=sys.stderr)
            self.pairs[split] = pairs
            self.groups[split] = self.length_groups(pairs, batch_size * self.group_batches)

    @staticmethod
    def length_groups(pairs: list, size: int) -> list[torch.Tensor]:
        """Indices of pairs sorted by (source, target) length, cut into groups of `size`."""
        shuffled = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
        order = sorted(shuffled, key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))  # stable: random within a length
        return [torch.tensor(order[i:i + size]) for i in range(0, len(order), size)]

    def get(self, split: str, generator: torch.Generator) -> dict:
        """One batch of the model's keyword arguments: src, src_mask, tgt, targets."""
        groups = self.groups[split]
        sizes = torch.tensor([len(g) for g in groups], dtype=torch.float)
        group = groups[torch.multinomial(sizes, 1, generator=generator).item()]
        if len(group) >= self.batch_size:
            picks = group[torch.randperm(len(group), generator=generator)[:self.batch_size]]
        else:
            picks = group[torch.randint(len(group), (self.batch_size,), generator=generator)]
        return self.collate([self.pairs[split][i] for i in picks.tolist()])

    def collate(self, pairs: list[tuple[list[int], list[int]]]) -> dict:
        """Pad a list of (source ids, target ids): src/src_mask, tgt = BOS + target, targets = target + EOS."""
        B = len(pairs)
        S = max(len(s) for s, _ in pairs)
        T = max(len(t) for _, t in pairs) + 1
        src = torch.full((B, S), self.pad, dtype=torch.long)
        tgt = torch.full((B, T), self.pad, dtype=torch.long)
        targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for b, (s, t) in enumerate(pairs):
            src[b, :len(s)] = torch.tensor(s)
            tgt[b, :len(t) + 1] = torch.tensor([self.bos, *t])
            targets[b, :len(t) + 1] = torch.tensor([*t, self.eos])
        batch = {"src": src, "src_mask": src != self.pad, "tgt": tgt, "targets": targets}
        return {k: v.to(self.device) for k, v in batch.items()}

    @staticmethod
    def count_tokens(batch: dict) -> torch.Tensor:
        """The real tokens of a batch: its sources' and its targets' (with EOS), not padding; for tokens/s."""
        return batch["src_mask"].sum() + (batch["targets"] != IGNORE_INDEX).sum()

    def eval_metrics(self, logits: torch.Tensor, batch: dict) -> dict:
        """Teacher-forced token accuracy (every target token and EOS; padding excluded)."""
        real = batch["targets"] >= 0
        correct = (logits.argmax(-1) == batch["targets"]) & real
        return {"token_accuracy": correct.sum().item() / max(1, real.sum().item())}

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """val_exact_match: share of held-out pairs whose greedy decoding equals the target exactly."""
        pairs = self.pairs["val"][:self.eval_pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # similar lengths decode together
        correct = 0
        for start in range(0, len(order), 256):
            chunk = [pairs[i] for i in order[start:start + 256]]
            batch = self.collate(chunk)
            outputs = model.generate(batch["src"], self.bos, self.eos, batch["src_mask"],
                                     max_new_tokens=max(len(t) for _, t in chunk) + 1)
            correct += sum(out == t for out, (_, t) in zip(outputs, chunk))
        return {"val_exact_match": correct / len(pairs)}


# ----------------------------------------------------------------------------------------------
# Command line: prepare your own pairs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Prepare a pairs dataset from a TSV or JSONL file.")
    parser.add_argument("--input", required=True, help="TSV (source<TAB>target) or JSONL (source, target) file")
    parser.add_argument("--val", help="a file of held-out pairs; default: hold out --n_val pairs of --input")
    parser.add_argument("--n_val", type=int, default=500, help="pairs held out when --val is not given")
    parser.add_argument("--out_dir", required=True, help="where to write train.jsonl, val.jsonl, meta.json")
    args = parser.parse_args(argv)
    if args.n_val < 1 and not args.val:
        raise PairsError(f"--n_val must be at least 1 (pairs held out for validation), got {args.n_val}.")
    pairs = read_pairs(args.input)
    if args.val:
        train, val = pairs, read_pairs(args.val)
    else:
        train, val = split_pairs(pairs, args.n_val)
    meta = write_pairs_dataset(args.out_dir, train, val, {"source": os.path.abspath(args.input)})
    print(f"{len(train):,} train and {len(val):,} val pairs, vocab {meta['vocab_size']} -> {args.out_dir}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (PairsError, OSError) as e:
        sys.exit(f"error: {e}")
