"""The layout's rules, checked on the source with `ast`: which package may import which, no import
cycles, no project import hidden inside a function, and functions that fit on a screen."""

import ast
import io
import os
import re
import sys
import tokenize

import pytest

from conftest import REPO

PACKAGES = ("model", "weights", "lens", "training", "data")
MAX_FUNCTION_LINES = 60


def python_files(*folders: str) -> list[str]:
    """Every .py file under the folders (relative to the repo), in a stable order."""
    found = []
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            found += [os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".py")]
    return sorted(found)


def scripts() -> list[str]:
    """The scripts: train.py, sample.py, bench.py, benchmarks/ and tools/."""
    top = [f for f in ("train.py", "sample.py", "bench.py") if os.path.exists(os.path.join(REPO, f))]
    return top + python_files("benchmarks", "tools")


def parse(path: str) -> ast.Module:
    """The syntax tree of a repo file."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def module_name(path: str) -> str:
    """data/loader.py -> data.loader; model/__init__.py -> model."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def imported(node: ast.AST) -> list[str]:
    """The absolute module names an import statement names (`from a import b` gives a and a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def top_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the imports run when the module loads: not inside a function or a class."""
    found = []
    for node in tree.body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            found += [(inner.lineno, name) for name in imported(inner)]
    return found


def function_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the imports placed inside a function."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                found += [(node.lineno, name) for name in imported(node)]
    return found


def root(name: str) -> str:
    """The top-level package of a module name."""
    return name.split(".")[0]


# the analysis methods every family has, added to HookedModel by model/__init__.py (docs/architecture.md)
# (with the lens modules they import)
ANALYSIS_METHODS = ("lens.methods", "lens.tl_methods", "lens.tl_names", "lens.weight_space", "lens.factored", "lens.cache")


def allowed_in_model(path: str, name: str) -> bool:
    """Whether model/ file `path` may import `name`: torch, the standard library, model/, weights/; and
    model/__init__.py the analysis methods of ANALYSIS_METHODS."""
    if root(name) in {"torch", "model", "weights"} | set(sys.stdlib_module_names):
        return True
    return path == "model/__init__.py" and (name in ANALYSIS_METHODS or name.rsplit(".", 1)[0] in ANALYSIS_METHODS)


def test_model_imports_only_torch_the_standard_library_model_and_weights():
    bad = [f"{path}:{line} imports {name}" for path in python_files("model")
           for line, name in top_level_imports(parse(path)) if not allowed_in_model(path, name)]
    assert not bad, bad


def test_the_analysis_methods_import_nothing_of_model():
    """model/__init__.py imports them, so they must not import model/ back (nor lens/ beyond themselves)."""
    paths = [name.replace(".", "/") + ".py" for name in ANALYSIS_METHODS]
    bad = [f"{path}:{line} imports {name}" for path in paths for line, name in top_level_imports(parse(path))
           if root(name) in PACKAGES and root(name) not in ("weights", "data") and
           name.rsplit(".", 1)[0] not in ANALYSIS_METHODS and name not in ANALYSIS_METHODS]
    assert not bad, bad


@pytest.mark.parametrize("package", ["weights", "data"])
def test_weights_and_data_never_import_model(package):
    bad = [f"{path}:{line} imports {name}" for path in python_files(package)
           for line, name in top_level_imports(parse(path)) + function_imports(parse(path)) if root(name) == "model"]
    assert not bad, bad


def test_no_project_import_inside_a_function_in_the_packages():
    bad = [f"{path}:{line} imports {name}" for path in python_files(*PACKAGES)
           for line, name in function_imports(parse(path)) if root(name) in PACKAGES]
    assert not bad, bad


def test_no_function_longer_than_a_screen():
    long = []
    for path in python_files(*PACKAGES) + scripts():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} has {lines} lines")
    assert not long, long


def globals_assignments(tree: ast.Module) -> list[int]:
    """Lines that make names through globals(): `globals()[...] = ...` and `globals().update(...)`."""
    def is_globals(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals"

    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        found += [node.lineno for target in targets if isinstance(target, ast.Subscript) and is_globals(target.value)]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update" \
                and is_globals(node.func.value):
            found.append(node.lineno)
    return sorted(found)


def test_no_function_made_through_globals_in_the_packages():
    """Every public name is written out, so that grep and an IDE find it (STYLE.md)."""
    bad = [f"{path}:{line}" for path in python_files(*PACKAGES) for line in globals_assignments(parse(path))]
    assert not bad, bad


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports when it loads (`from pkg import name` counts as pkg.name
    when that is a module, else as pkg)."""
    paths = python_files(*PACKAGES)
    modules = {module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, target in top_level_imports(parse(path)):
            if root(target) not in PACKAGES:
                continue
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts))} - {name}
        graph[name] = {t for t in targets if t in modules and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (as a list of modules), or None."""
    state = {}  # module -> "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_files():
    graph = import_graph()
    assert "model.gpt" in graph and "weights.pretrained" in graph["model.gpt"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checks_catch_what_they_forbid():
    """Each rule fails on a small example of what it forbids."""
    tree = ast.parse("import os\nimport numpy\nfrom model.gpt import GPT\n\ndef f():\n    from data.tokens import load_tokens\n")
    assert [name for _, name in top_level_imports(tree)] == ["os", "numpy", "model.gpt", "model.gpt.GPT"]
    assert [name for _, name in function_imports(tree)] == ["data.tokens", "data.tokens.load_tokens"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert allowed_in_model("model/__init__.py", "lens.methods.AnalysisMethods")
    assert not allowed_in_model("model/gpt.py", "lens.methods.AnalysisMethods")  # only the package's face
    assert not allowed_in_model("model/__init__.py", "lens.patching")  # not every analysis module
    made = ast.parse("for k in KINDS:\n    globals()[f'get_{k}'] = make(k)\nglobals().update(more)\n"
                     "names = globals()['KINDS']\nglobals()['x'] += 1\n")
    assert globals_assignments(made) == [2, 3, 5]  # reading globals() is not making a name
    long = ast.parse("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    func = long.body[0]
    assert func.end_lineno - func.lineno + 1 > MAX_FUNCTION_LINES


# ---- the learner's path (README "A learner's path"; docs/architecture.md) ----
# the files a learner reads first, in README's order; with the leaves they import (model/rules.py, the shared
# errors) and the code their GPT runs (the family base, generation, sampling). Then train.py's schedule,
# optimizer, step and loop (LEARNER_FUNCTIONS), counted in the bound too; train.py is a script: its imports are
# the packages', not the core's.
LEARNER_FILES = ("model/layers.py", "model/attention.py", "model/rotary.py", "model/gpt.py", "model/hooks.py",
                 "model/transformer_config.py", "model/rules.py", "model/family.py", "model/generation.py",
                 "model/sampling.py", "weights/errors.py")
LEARNER_FUNCTIONS = {"train.py": ("lr_at", "make_optimizer", "train_step", "train_loop")}
WEIGHTS_ENTRY = "weights.pretrained"  # the one entry GPT.from_pretrained / save_pretrained call (a learner skips it)
VARIANT_NAMES = ("hard", "reinforce", "gumbel")  # research variants: plug-ins the core loss never names


def learner_bound(readme: str) -> int:
    """The code-line bound README states for the learner's files: 'at most N code lines'."""
    found = re.search(r"at most\s+([\d,]+)\s+code lines", readme)  # a line may break inside it
    assert found, "README's learner's path states no 'at most N code lines' bound"
    return int(found.group(1).replace(",", ""))


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    return len(code_line_numbers(source))


def function_code_lines(source: str, names: tuple[str, ...]) -> dict[str, int]:
    """code_lines of each top-level function in `names` (its decorators included); a name that is not one of the
    module's functions fails (the bound must not shrink because a function was renamed)."""
    numbers = code_line_numbers(source)
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found[node.name] = len([n for n in numbers if first <= n <= node.end_lineno])
    missing = [name for name in names if name not in found]
    assert not missing, f"no top-level function {', '.join(missing)}: update LEARNER_FUNCTIONS and README"
    return found


def code_line_numbers(source: str) -> set[int]:
    """The numbers of the lines code_lines counts."""
    tree = ast.parse(source)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docs.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docs)
    return lines


def outside_imports(paths: tuple[str, ...], trees: dict[str, ast.Module]) -> list[str]:
    """'path:line imports name' for each import of a learner's file that is not torch, the standard library,
    another learner's file or the weights entry."""
    own = {module_name(p) for p in paths}
    bad = []
    for path in paths:
        for line, name in top_level_imports(trees[path]) + function_imports(trees[path]):
            top = root(name)
            if top == "torch" or top in sys.stdlib_module_names or name in own or name.rsplit(".", 1)[0] in own \
                    or name == WEIGHTS_ENTRY or name.rsplit(".", 1)[0] == WEIGHTS_ENTRY:
                continue
            bad.append(f"{path}:{line} imports {name}")
    return bad


def variant_names_in_loss_code(tree: ast.Module) -> list[str]:
    """Names, attributes and strings (docstrings aside) that name a research variant inside a function whose
    name says loss (logits_and_loss, auxiliary_losses, ...)."""
    found = []
    for func in ast.walk(tree):
        if not (isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) and "loss" in func.name):
            continue
        body = func.body[1:] if ast.get_docstring(func) is not None else func.body
        for node in (n for stmt in body for n in ast.walk(stmt)):
            text = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else \
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if any(v in text.lower() for v in VARIANT_NAMES):
                found.append(f"{func.name}:{node.lineno} {text}")
    return found


def test_the_learners_files_import_only_each_other_torch_the_standard_library_and_the_weights_entry():
    trees = {path: parse(path) for path in LEARNER_FILES}
    bad = outside_imports(LEARNER_FILES, trees)
    assert not bad, bad


def test_the_learners_path_stays_within_the_bound_readme_states():
    """The learner's files and train.py's functions of the path, together."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        bound = learner_bound(f.read())
    counts = {}
    for path in LEARNER_FILES:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            counts[path] = code_lines(f.read())
    for path, names in LEARNER_FUNCTIONS.items():
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            counts.update({f"{path} {name}": n for name, n in function_code_lines(f.read(), names).items()})
    assert sum(counts.values()) <= bound, (sum(counts.values()), counts)


def test_the_core_loss_names_no_research_variant():
    variants = ("model/hard_attention.py", "model/reinforce.py")  # the plug-ins themselves
    bad = [f"{path} {found}" for path in python_files("model") if path not in variants
           for found in variant_names_in_loss_code(parse(path))]
    assert not bad, bad


def test_the_learners_path_checks_catch_what_they_forbid():
    """Each rule of the learner's path fails on a small example of what it forbids."""
    files = ("model/a.py", "model/b.py")
    trees = {"model/a.py": ast.parse("import torch\nimport os\nfrom model.b import f\nfrom weights.pretrained import g\n"),
             "model/b.py": ast.parse("from weights.common import atomic_write\nfrom lens.cache import ActivationCache\n"
                                     "def h():\n    import model.seq2seq\n")}
    assert outside_imports(files, trees) == ["model/b.py:1 imports weights.common",
                                             "model/b.py:1 imports weights.common.atomic_write",
                                             "model/b.py:2 imports lens.cache", "model/b.py:2 imports lens.cache.ActivationCache",
                                             "model/b.py:4 imports model.seq2seq"]
    assert code_lines('"""doc\n\nmore"""\n\nx = 1  # one\n# a comment\n\ndef f():\n    """doc"""\n    return (1,\n'
                      '            2)\n') == 4
    script = ('import torch\n\n@torch.no_grad()\ndef lr_at(it):\n    """doc"""\n    # why\n    return (it +\n'
              '            1)\n\ndef main():\n    return lr_at(0)\n')
    assert function_code_lines(script, ("lr_at",)) == {"lr_at": 4}  # decorator, def, the two lines of return
    with pytest.raises(AssertionError, match="no top-level function train_step"):
        function_code_lines(script, ("lr_at", "train_step"))
    assert learner_bound("...together at most\n1,234 code lines...") == 1234
    with pytest.raises(AssertionError):
        learner_bound("no bound here")
    loss = ast.parse('def logits_and_loss(model):\n    """hard attention\'s REINFORCE term is added here"""\n'
                     '    for m in model.modules():\n        if isinstance(m, HardAttention) or m.name == "gumbel":\n'
                     '            loss = m.reinforce_term()\n    return loss\n\ndef forward(self):\n    return self.hard\n')
    assert variant_names_in_loss_code(loss) == ["logits_and_loss:4 HardAttention", "logits_and_loss:4 gumbel",
                                                "logits_and_loss:5 reinforce_term"]
