"""Web-scale preparation on small local files: shards, resume after a crash, bad input, the shard loader."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import run_script
from data.fineweb.prepare import main as prepare_main
from data.loader import LMBatches
from data.shards import PrepareError, build_shards, input_files, local_documents, local_source
from data.tokenizer import CharTokenizer, GPT2Tokenizer
from data.tokens import TokenFileError, load_tokens
from model import GPTConfig

WORDS = "the a of sea ship wind light house north river stone bread king song".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(5, 60))) + f" ({i})" for i in range(n)]


@pytest.fixture
def corpus(tmp_path):
    """A folder of inputs: two .jsonl files, a .txt with Latin-1 bytes, an empty .txt, a .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    docs = make_docs(400)
    for part, chunk in (("a", docs[:150]), ("b", docs[150:300])):
        with open(src / f"{part}.jsonl", "w") as f:
            for d in chunk:
                f.write(json.dumps({"text": d, "id": 0}) + "\n")
    (src / "c.txt").write_bytes("caf\u00e9 au lait ".encode("latin-1") * 20)
    (src / "d.txt").write_bytes(b"")
    pq.write_table(pa.table({"text": docs[300:], "n": list(range(100))}), src / "e.parquet")
    expected_docs = docs[:300] + [("caf\ufffd au lait " * 20)] + docs[300:]  # sorted file order; d.txt is empty
    return src, expected_docs


def expected_stream(docs: list[str]) -> np.ndarray:
    tok = GPT2Tokenizer()
    return np.array([t for d in docs for t in [50256, *tok.encode_ordinary(d)]])


def shard_stream(folder) -> tuple[np.ndarray, list[str]]:
    """All tokens of val then train shards, in order."""
    files = sorted(f for f in os.listdir(folder) if f.startswith("val_")) + \
        sorted(f for f in os.listdir(folder) if f.startswith("train_"))
    return np.concatenate([np.asarray(load_tokens(str(folder / f))) for f in files]), files


def test_prepare_script_writes_every_document_once(corpus, tmp_path):
    src, docs = corpus
    out = tmp_path / "out"
    proc = run_script("data/fineweb/prepare.py", "--input", str(src), "--out_dir", str(out), "--shard_tokens=1500",
                      "--val_tokens=1000", "--num_proc=2")
    assert "not valid UTF-8" in proc.stderr and "c.txt" in proc.stderr
    assert "tokens/s" in proc.stderr and "402 documents" in proc.stdout  # the empty file counts as read
    stream, files = shard_stream(out)
    assert np.array_equal(stream, expected_stream(docs))  # nothing lost, repeated or reordered
    assert files[0] == "val_000000.bin" and files[1] == "train_000000.bin"
    for f in files:
        tokens = load_tokens(str(out / f))
        assert tokens.dtype == np.uint16 and tokens[0] == 50256  # each shard starts a document
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["complete"] and meta["train_tokens"] + meta["val_tokens"] == stream.size
    assert 1000 <= meta["val_tokens"] < 1100  # the val split ends at the first document boundary past 1000

    batches = LMBatches(str(out), GPTConfig(block_size=16, vocab_size=50257), batch_size=64)
    for split in ("train", "val"):
        batch = batches.get(split, torch.Generator().manual_seed(0))
        parts = [np.asarray(p) for p in batches.data[split].parts]
        for x, y in zip(batch["idx"].numpy(), batch["targets"].numpy()):
            assert np.array_equal(x[1:], y[:-1])
            window = np.concatenate([x, y[-1:]])
            assert any(window.tobytes() in p.astype(np.int64).tobytes() for p in parts)
    starts = batches.get("train", torch.Generator().manual_seed(1))["idx"][:, 0]
    assert len(set(starts.tolist())) > 10  # windows come from across the shards

    from data.mlm import MLMBatches  # a BERT reads the same shards
    from data.tokenizer import from_meta
    from model import BERTConfig

    tokenizer = from_meta(meta).with_specials(MLMBatches.specials)
    mlm = MLMBatches(str(out), BERTConfig(block_size=18, vocab_size=tokenizer.vocab_size), 64, tokenizer=tokenizer)
    parts = [np.asarray(p).astype(np.int64).tobytes() for p in mlm.data["train"].parts]
    assert len(parts) > 1
    batch = mlm.get("train", torch.Generator().manual_seed(0))
    text = torch.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"])[:, 1:17]  # unmasked windows
    full = batch["attention_mask"].sum(dim=1) == 18  # rows not cut short
    assert full.sum() > 40 and all(any(row.numpy().tobytes() in p for p in parts) for row in text[full])


class Crash(Exception):
    pass


def crashing(documents, after: int):
    """documents(skip) that raises after yielding `after` documents (a kill mid-run)."""

    def wrapped(skip):
        for n, doc in enumerate(documents(skip)):
            if n == after:
                raise Crash
            yield doc

    return wrapped


def test_interrupted_run_resumes_to_identical_shards(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr("data.shards.BATCH_DOCS", 16)  # documents go to the tokenizer 16 at a time
    src, _ = corpus
    files = input_files([str(src)])
    docs, source, meta = local_documents(files), local_source(files), GPT2Tokenizer().meta()
    opts = dict(shard_tokens=1200, val_tokens=900, progress=False)
    build_shards(str(tmp_path / "full"), docs, meta, source, **opts)

    part = tmp_path / "part"
    with pytest.raises(Crash):
        build_shards(str(part), crashing(docs, 230), meta, source, **opts)
    state = json.loads((part / "progress.json").read_text())
    assert 0 < state["shards"][-1]["docs_end"] < 230 and not (part / "meta.json").exists()
    # debris of a crash: a half-written temporary file and a shard that progress.json never listed
    (part / "train_000009.bin.tmp123").write_bytes(b"HSTOKENS")
    (part / "train_000099.bin").write_bytes(b"junk")
    with pytest.raises(Crash):  # crash again, after the first resume
        build_shards(str(part), crashing(docs, 60), meta, source, **opts)
    build_shards(str(part), docs, meta, source, **opts)

    full_files, part_files = sorted(os.listdir(tmp_path / "full")), sorted(os.listdir(part))
    assert full_files == part_files
    for f in full_files:
        if f.endswith(".bin"):
            assert (tmp_path / "full" / f).read_bytes() == (part / f).read_bytes(), f

    # a shard cut mid-write (e.g. a copy or a disk that filled up) is detected, then remade
    victim = part / "train_000001.bin"
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 7)
    with pytest.raises(TokenFileError, match="truncated"):
        load_tokens(str(victim))
    build_shards(str(part), docs, meta, source, **opts)
    for f in full_files:
        assert (tmp_path / "full" / f).read_bytes() == (part / f).read_bytes(), f


def test_max_tokens_stops_and_a_larger_limit_continues(corpus, tmp_path):
    src, docs = corpus
    out = tmp_path / "out"
    args = ["data/fineweb/prepare.py", "--input", str(src), "--out_dir", str(out), "--shard_tokens=1000",
            "--val_tokens=500", "--num_proc=1"]
    proc = run_script(*args, "--max_tokens=3000")
    assert "stopped at --max_tokens" in proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"] and 3000 <= meta["train_tokens"] + meta["val_tokens"] < 3100
    run_script(*args)  # no limit: runs to the end of the input
    stream, _ = shard_stream(out)
    assert np.array_equal(stream, expected_stream(docs))
    assert json.loads((out / "meta.json").read_text())["complete"]


def test_vocab_over_65535_writes_uint32(tmp_path):
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    tok = CharTokenizer(chars)
    text = chars[-500:] + chars[:500]
    documents = lambda skip: iter([text, text[::-1]][skip:])  # noqa: E731
    meta = build_shards(str(tmp_path), documents, tok.meta(), "two docs", shard_tokens=600, val_tokens=100,
                        progress=False)
    assert meta["vocab_size"] == tok.vocab_size + 1  # [EOS] separates documents when there is no <|endoftext|>
    eos = tok.vocab_size
    train = load_tokens(str(tmp_path / "train_000000.bin"))
    assert train.dtype == np.uint32 and train[0] == eos and eos > 65535
    assert train.tolist() == [eos, *tok.encode(text[::-1])]  # the first document went to val
    assert load_tokens(str(tmp_path / "val_000000.bin")).tolist() == [eos, *tok.encode(text)]
    batches = LMBatches(str(tmp_path), GPTConfig(block_size=32, vocab_size=meta["vocab_size"]), batch_size=4)
    assert batches.get("train", torch.Generator().manual_seed(0))["idx"].max() > 65535


def test_bad_input_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_bytes(b"")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "cut in the mid')
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    cases = [(["--input", str(tmp_path / "empty")], "no text"),
             (["--input", str(tmp_path / "bad.jsonl")], "line 2"),
             (["--input", str(tmp_path / "missing.txt")], "does not exist"),
             (["--input", str(tmp_path / "notes.md")], ".jsonl"),
             (["--input", str(tmp_path / "bad.parquet")], "parquet"),
             (["--input", str(tmp_path / "empty"), "--shard_tokens=0"], "positive"),
             (["--input", str(tmp_path / "empty"), "--val_tokens=0"], "positive")]
    for args, words in cases:  # in this process: each ends in the PrepareError that the script prints
        with pytest.raises(PrepareError, match=words.replace(".", r"\.")):
            prepare_main([*args, "--out_dir", str(tmp_path / "o"), "--num_proc=1"])
    proc = run_script("data/fineweb/prepare.py", *cases[1][0], "--out_dir", str(tmp_path / "o"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 2  # the progress line, the error

    # resuming into a folder made from other input or settings is refused
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.txt").write_text("some words " * 300)
    (good / "b.txt").write_text("other words " * 300)
    out = tmp_path / "o2"
    prepare_main(["--input", str(good), "--out_dir", str(out), "--val_tokens=10", "--shard_tokens=100"])
    with pytest.raises(PrepareError, match="different val_tokens.*--restart"):
        prepare_main(["--input", str(good), "--out_dir", str(out), "--val_tokens=20", "--shard_tokens=100"])
    with pytest.raises(PrepareError, match="all taken by"):
        build_shards(str(tmp_path / "o3"), local_documents(input_files([str(good)])), GPT2Tokenizer().meta(), "x",
                     val_tokens=10**6, progress=False)


def test_max_tokens_inside_the_val_split_says_to_raise_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("some words " * 300)
    (src / "b.txt").write_text("other words " * 300)
    files = input_files([str(src)])
    args = (str(tmp_path / "out"), local_documents(files), GPT2Tokenizer().meta(), local_source(files), 10**6, 10)
    with pytest.raises(PrepareError, match="max_tokens=5 was reached.*raise --max_tokens"):
        build_shards(*args, max_tokens=5, progress=False)  # smaller than the first document
    meta = build_shards(*args, progress=False)  # the same command without the limit continues
    assert meta["complete"] and meta["documents"] == 2 and meta["val_tokens"] == meta["train_tokens"] == 602


def test_hub_offline_is_one_error_without_the_retry_warnings(monkeypatch):
    # offline, huggingface_hub retries and logs a warning per try; the script says one line instead
    import logging

    import datasets

    from data.fineweb.prepare import hub_documents
    seen = []
    retries = logging.getLogger("huggingface_hub.utils._http")
    handler = logging.Handler()
    handler.emit = seen.append
    retries.addHandler(handler)

    def offline(*args, **kwargs):
        retries.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co")
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    level = logging.getLogger("huggingface_hub").level
    try:
        with pytest.raises(PrepareError, match="cannot open org/corpus .*--input"):
            next(hub_documents("org/corpus", "cfg", "train", "text")(0))
    finally:
        retries.removeHandler(handler)
    assert not seen and logging.getLogger("huggingface_hub").level == level


def test_shards_all_shorter_than_a_window_say_so(tmp_path):
    from data.tokens import Windows, split_files, write_tokens

    for i in range(3):  # 30 tokens in all, but no shard holds the 17 that one window needs
        write_tokens(str(tmp_path / f"train_{i:06d}.bin"), np.arange(10), vocab_size=10)
    with pytest.raises(TokenFileError, match=r"3 train_\*\.bin shards .* longest has 10 tokens.*17"):
        Windows(split_files(str(tmp_path), "train"), 16)
    write_tokens(str(tmp_path / "val.bin"), np.arange(10), vocab_size=10)
    with pytest.raises(TokenFileError, match=r"val\.bin in .* has 10 tokens, fewer than the 17"):
        Windows(split_files(str(tmp_path), "val"), 16)
