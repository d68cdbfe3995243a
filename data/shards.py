"""Tokenize a stream of documents into shards of token files that a crash cannot corrupt.

Each document becomes `<|endoftext|>` followed by its tokens (GPT-2's separator; other tokenizers
use `[EOS]`), so every document, and every shard, starts with a separator. A shard holds whole
documents: it is cut once it reaches `shard_tokens`. The first `val_tokens` (whole documents; at least 1) go to
`val_NNNNNN.bin`, the rest to `train_NNNNNN.bin`; data/loader.py samples windows across them.

Resume: `progress.json` lists the committed shards with the number of documents consumed after
each one. A shard is written atomically, then the list; a crash at any point loses only the
uncommitted documents, which the next run reads again. On restart every listed shard is checked
(header and length) and any damaged one is remade, with everything after it. With the same input
and settings an interrupted-and-resumed run writes byte-identical shards to an uninterrupted one.
"""

import glob
import itertools
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

from data.tokenizer import from_meta
from data.tokens import TokenFileError, dtype_for_vocab, read_header, write_json, write_tokens
from weights.common import UserError

PROGRESS = "progress.json"
SHARD_RE = re.compile(r"(train|val)_\d{6}\.bin$")
BATCH_DOCS = 512  # documents handed to the workers at a time (bounds memory on endless streams)


class PrepareError(UserError, ValueError):
    """Input or output that the prepare step cannot use; the message says what to do."""


# ---------------------------------------------------------------------------------------------- tokenizing

_worker = {}


def _init_worker(tokenizer_meta: dict) -> None:
    tok = from_meta(tokenizer_meta)
    if getattr(tok, "eot_id", None) is None:
        tok = tok.with_specials(("[EOS]",))
        sep = tok.special_ids["[EOS]"]
    else:
        sep = tok.eot_id
    _worker.update(tok=tok, sep=sep, dtype=dtype_for_vocab(tok.vocab_size),
                   encode=getattr(tok, "encode_ordinary", tok.encode))


def encode_document(text: str) -> np.ndarray | None:
    """[separator] + the document's ids, or None for an empty document."""
    if not text:
        return None
    ids = _worker["encode"](text)
    return np.array([_worker["sep"], *ids], dtype=_worker["dtype"])


def shard_tokenizer_meta(tokenizer_meta: dict) -> dict:
    """The meta of the tokenizer the shards are written with (the separator token included)."""
    _init_worker(tokenizer_meta)
    return _worker["tok"].meta()


# ---------------------------------------------------------------------------------------------- progress

class Progress:
    """A one-line progress bar on stderr: documents, tokens, tokens/s (and a bar when the total is known)."""

    def __init__(self, total_tokens: int | None, start_tokens: int = 0, every_s: float = 0.5):
        self.total, self.start_tokens, self.every_s = total_tokens, start_tokens, every_s
        self.t0 = self.last = time.perf_counter()

    def line(self, docs: int, tokens: int) -> str:
        """The text of the bar."""
        rate = (tokens - self.start_tokens) / max(1e-9, time.perf_counter() - self.t0)
        bar = ""
        if self.total:
            frac = min(1.0, tokens / self.total)
            bar = f"[{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% "
        return f"{bar}{docs:,} docs, {tokens:,} tokens, {rate / 1000:,.1f}k tokens/s"

    def update(self, docs: int, tokens: int, final: bool = False) -> None:
        """Redraw at most every `every_s` seconds, and always when final."""
        now = time.perf_counter()
        if final or now - self.last >= self.every_s:
            self.last = now
            sys.stderr.write("\r" + self.line(docs, tokens) + ("\n" if final else ""))
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------- state

def load_state(out_dir: str, settings: dict, restart: bool) -> list[dict]:
    """The committed shards that are still intact; removes stray and damaged shard files."""
    path = os.path.join(out_dir, PROGRESS)
    shards = []
    if os.path.exists(path) and not restart:
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            shards = list(state["shards"])
        except (OSError, ValueError, KeyError, TypeError):
            raise PrepareError(f"{path} is unreadable; pass --restart to tokenize from the start.")
        for key, value in settings.items():
            if state["settings"].get(key) != value:
                raise PrepareError(f"{out_dir} holds shards made with a different {key}; use the same options, "
                                   "another --out_dir, or --restart to start over.")
    for n, shard in enumerate(shards):
        try:
            _, count = read_header(os.path.join(out_dir, shard["file"]))
            ok = count == shard["tokens"]
        except TokenFileError:
            ok = False
        if not ok:
            print(f"warning: {shard['file']} is damaged; remaking it and the {len(shards) - n - 1} shards after it.",
                  file=sys.stderr)
            shards = shards[:n]
            break
    keep = {s["file"] for s in shards}
    for file in os.listdir(out_dir):
        stray = SHARD_RE.fullmatch(file) and file not in keep
        if stray or ".bin.tmp" in file or file.startswith(PROGRESS + ".tmp"):
            os.remove(os.path.join(out_dir, file))
    return shards


# ---------------------------------------------------------------------------------------------- the builder

class ShardWriter:
    """The shards of one dataset folder: which split the next one goes to, and committing each one
    (token file first, then progress.json, so a crash leaves every listed shard whole)."""

    def __init__(self, out_dir: str, settings: dict, shards: list[dict]):
        self.out_dir, self.settings, self.shards = out_dir, settings, shards
        self.vocab_size = settings["tokenizer"]["vocab_size"]

    def totals(self) -> dict:
        """Committed tokens per split."""
        return {split: sum(s["tokens"] for s in self.shards if s["split"] == split) for split in ("val", "train")}

    def next_limit(self) -> tuple[str, int]:
        """The split the next shard goes to and its size (the val split ends near val_tokens)."""
        val_left = self.settings["val_tokens"] - self.totals()["val"]
        shard_tokens = self.settings["shard_tokens"]
        return ("val", min(shard_tokens, val_left)) if val_left > 0 else ("train", shard_tokens)

    def commit(self, buffer: list[np.ndarray], docs_end: int) -> None:
        """Write the buffered documents' tokens as the next shard and record it in progress.json."""
        split, _ = self.next_limit()
        index = sum(1 for s in self.shards if s["split"] == split)
        file = f"{split}_{index:06d}.bin"
        tokens = np.concatenate(buffer)
        write_tokens(os.path.join(self.out_dir, file), tokens, self.vocab_size)
        self.shards.append({"file": file, "split": split, "tokens": int(tokens.size), "docs_end": docs_end})
        self.save_progress(exhausted=False)

    def save_progress(self, exhausted: bool) -> None:
        """progress.json: the settings and the committed shards (`exhausted` once the input is read whole)."""
        write_json(os.path.join(self.out_dir, PROGRESS),
                   {"settings": self.settings, "shards": self.shards, "exhausted": exhausted})


def tokenize_into(writer: ShardWriter, stream: Iterator[str], docs: int, max_tokens: int | None, pool,
                  bar: "Progress | None") -> tuple[int, int, bool]:
    """Tokenize the stream's documents into shards; return (documents read in all, tokens committed,
    whether max_tokens stopped the reading)."""
    committed = sum(writer.totals().values())
    buffer, buffered, (_, limit) = [], 0, writer.next_limit()
    limited = False
    while not limited:
        batch = list(itertools.islice(stream, BATCH_DOCS))
        if not batch:
            break
        encoded = pool.map(encode_document, batch, chunksize=16) if pool else map(encode_document, batch)
        for ids in encoded:
            docs += 1
            if ids is not None:
                buffer.append(ids)
                buffered += ids.size
            if buffered >= limit:
                writer.commit(buffer, docs)
                committed, buffer, buffered, (_, limit) = committed + buffered, [], 0, writer.next_limit()
            if max_tokens is not None and committed + buffered >= max_tokens:
                limited = True
                break
        if bar:
            bar.update(docs, committed + buffered)
    if buffer:
        writer.commit(buffer, docs)
        committed += buffered
    return docs, committed, limited


def check_train_tokens(count: dict, docs: int, limited: bool, max_tokens: int | None, val_tokens: int) -> None:
    """Raise a PrepareError, saying what to change, when no token went to the train split."""
    if count["train"] == 0 and limited:
        raise PrepareError(f"no training tokens: max_tokens={max_tokens:,} was reached within the validation split "
                           f"({count['val']:,} tokens; val_tokens={val_tokens:,}, whole documents); raise --max_tokens "
                           "and run the same command again to continue.")
    if count["train"] == 0:
        raise PrepareError(f"no training tokens: the input's {docs:,} documents ({count['val']:,} tokens) were all "
                           f"taken by val_tokens={val_tokens:,} (documents are never split; a .txt file is one); "
                           "give more documents or a smaller --val_tokens."
                           if count["val"] else "the input holds no text (every document is empty).")


def build_shards(out_dir: str, documents: Callable[[int], Iterator[str]], tokenizer_meta: dict, source,
                 shard_tokens: int = 100_000_000, val_tokens: int = 10_000_000, max_tokens: int | None = None,
                 num_proc: int = 1, restart: bool = False, progress: bool = True) -> dict:
    """Tokenize documents(skip) into shards in out_dir (resuming a previous run); return the meta dict.

    `documents(skip)` yields the documents' texts in a fixed order, starting after the first `skip`.
    `source` describes the input; a resumed run must have the same source and settings.
    """
    if shard_tokens < 1 or val_tokens < 1 or (max_tokens is not None and max_tokens < 1):
        raise PrepareError("shard_tokens, val_tokens and max_tokens must be positive (train.py evaluates on "
                           "the val split).")
    os.makedirs(out_dir, exist_ok=True)
    tok_meta = shard_tokenizer_meta(tokenizer_meta)
    settings = {"source": source, "tokenizer": tok_meta, "shard_tokens": shard_tokens, "val_tokens": val_tokens}
    writer = ShardWriter(out_dir, settings, load_state(out_dir, settings, restart))
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):  # meta.json marks a complete dataset: drop it until this run is done
        os.remove(meta_path)
    docs = writer.shards[-1]["docs_end"] if writer.shards else 0
    committed = sum(writer.totals().values())
    bar = Progress(max_tokens, committed) if progress else None
    limited = max_tokens is not None and committed >= max_tokens  # reached before this run: read nothing
    pool = multiprocessing.Pool(num_proc, _init_worker, (tokenizer_meta,)) if num_proc > 1 else None
    if pool is None:
        _init_worker(tokenizer_meta)
    try:
        if not limited:
            docs, committed, limited = tokenize_into(writer, documents(docs), docs, max_tokens, pool, bar)
    finally:
        if pool is not None:
            pool.terminate()
    if bar:
        bar.update(docs, committed, final=True)
    count = writer.totals()
    check_train_tokens(count, docs, limited, max_tokens, val_tokens)
    writer.save_progress(exhausted=not limited)
    meta = {**tok_meta, "source": source, "documents": docs, "train_tokens": count["train"],
            "val_tokens": count["val"], "shards": len(writer.shards), "complete": not limited}
    write_json(meta_path, meta)
    return meta


# ---------------------------------------------------------------------------------------------- local files

INPUT_EXTS = (".txt", ".jsonl", ".parquet")


def input_files(paths: list[str]) -> list[str]:
    """The .txt/.jsonl/.parquet files named by paths (folders are searched recursively), in a fixed order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                           if f.endswith(INPUT_EXTS) and os.path.isfile(f))
            if not found:
                raise PrepareError(f"{path} holds no .txt, .jsonl or .parquet files.")
            files.extend(found)
        elif not os.path.isfile(path):
            raise PrepareError(f"input {path} does not exist; pass .txt, .jsonl or .parquet files or folders.")
        elif not path.endswith(INPUT_EXTS):
            raise PrepareError(f"{path} is not a .txt, .jsonl or .parquet file.")
        else:
            files.append(path)
    return files


def to_text(raw: bytes, where: str) -> str:
    """UTF-8 text; bytes that are not UTF-8 become U+FFFD, with a warning naming where they were."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"warning: {where} is not valid UTF-8 (byte {e.start}); invalid bytes replaced by U+FFFD.",
              file=sys.stderr)
        return raw.decode("utf-8", errors="replace")


def file_documents(path: str, text_field: str = "text") -> Iterator[str]:
    """Documents of one file: a whole .txt file, each line of a .jsonl, each row of a .parquet."""
    if path.endswith(".txt"):
        with open(path, "rb") as f:
            yield to_text(f.read(), path)
    elif path.endswith(".jsonl"):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(to_text(line, f"{path} line {n}"))[text_field]
                except (ValueError, KeyError, TypeError):
                    raise PrepareError(f"{path} line {n} is not a JSON object with a {text_field!r} field; "
                                       "fix or remove that line (or set --text_field).") from None
                if not isinstance(text, str):
                    raise PrepareError(f"{path} line {n}: {text_field!r} is not a string.")
                yield text
    else:
        try:
            import pyarrow.parquet as pq  # lazy: only parquet input needs it
        except ImportError:
            raise PrepareError("reading .parquet files needs pyarrow; run: pip install pyarrow.") from None
        try:
            parquet = pq.ParquetFile(path)
            if text_field not in parquet.schema_arrow.names:
                raise PrepareError(f"{path} has no column {text_field!r} (it has {parquet.schema_arrow.names}); "
                                   "set --text_field.")
            for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
                for text in batch.column(0).to_pylist():
                    yield text or ""
        except PrepareError:
            raise
        except Exception as e:  # pyarrow's errors for a damaged file
            raise PrepareError(f"{path} is not a readable parquet file ({type(e).__name__}).") from None


def local_documents(files: list[str], text_field: str = "text") -> Callable[[int], Iterator[str]]:
    """documents(skip) over local files, in order."""

    def documents(skip: int) -> Iterator[str]:
        stream = itertools.chain.from_iterable(file_documents(f, text_field) for f in files)
        return itertools.islice(stream, skip, None)

    return documents


def local_source(files: list[str]) -> list:
    """What identifies local input for resuming: each file's absolute path and size."""
    return [[os.path.abspath(f), os.path.getsize(f)] for f in files]
