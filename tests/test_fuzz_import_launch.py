"""Property-based fuzzing (hypothesis) of the importer (`python -m train.importer`) and the launcher
(`python -m app.launch`), called in-process through their main(argv), as test_fuzz_cli.py does for
train, probes and generate. The property: exit status 0 (valid input), or 2 with one sentence on
stderr, and a refusal comes before any action: nothing on stdout, no file or folder created,
removed or rewritten under the test's folder (the token cache included), no process started.

Nothing long runs: arguments that pass every check reach a stub that raises `Accepted` (the
importer's first checkpoint, the launcher's supervisor), so each example costs the checks only.
`make test` runs each fuzzer on a fixed seed, `make stress` on a fresh one; either is printed, and
HYPOTHESIS_SEED=N replays it (tests/_fuzzing.py).
"""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import _fuzzing
import app.launch as launch
import train.importer as importer
from _fuzzing import (Accepted, changes, floats, ints, junk, mostly, refused_cleanly, starts,  # noqa: F401 (a fixture)
                      tree)
from _importer import nano_file, nano_state, probe_text

FAST, STRESS = 40, 500
EXAMPLES = [pytest.param(FAST, id="fast"), pytest.param(STRESS, id="stress", marks=pytest.mark.stress)]


def fuzz(n: int):
    """A fixed, printed seed for the fast set, a fresh one for the stress set (_fuzzing.fuzz)."""
    return _fuzzing.fuzz(n, stress=n == STRESS, deadline_ms=30_000)


switches = st.sampled_from([[]] * 8 + [["--help"], ["--bogus"]])  # mostly none, so that valid examples are common


def raise_accepted(*args, **kwargs):
    raise Accepted


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A nanoGPT checkpoint and a probe text, an import of them (a complete run), and odd paths."""
    root = tmp_path_factory.mktemp("fuzz_import_launch")
    nano = root / "nano"
    nano.mkdir()
    nano_file(nano / "ckpt.pt", nano_state(5), 100)
    text = probe_text(root / "probe.txt")
    (root / "short.txt").write_text("Tom ran.\n\nMia sat.\n")  # too few tokens for two held-out sequences
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x80" * 10)
    (root / "junk.pt").write_bytes(b"not a pickle")
    (root / "not_hf").mkdir()
    (root / "not_hf" / "config.json").write_text("{")
    (root / "a_file").write_text("x")
    (root / "occupied").mkdir()
    (root / "occupied" / "something").write_text("x")
    imported = root / "runs" / "imported"
    assert importer.main(["--from", f"nanogpt:{nano}", "--data", f"text:{text}", "--out", str(imported),
                          "--sample-tokens", "0"]) == 0
    return {"root": root, "nano": nano, "text": text, "imported": imported, "counter": itertools.count()}


def out_path(world: dict, kind: str) -> str:
    root: Path = world["root"]
    return str({"fresh": root / "runs" / f"r{next(world['counter'])}", "occupied": root / "occupied",
                "a_file": root / "a_file", "below_file": root / "a_file" / "run", "imported": world["imported"],
                "empty": Path("")}[kind])


# -- python -m train.importer ----------------------------------------------------------------------
def import_argvs(world: dict):
    root = world["root"]
    sources = mostly(st.just(f"nanogpt:{world['nano']}"),
                     st.sampled_from([f"hf:{world['nano']}", f"nanogpt:{root / 'junk.pt'}", f"hf:{root / 'not_hf'}",
                                      f"nanogpt:{root / 'missing'}", f"hf:{root / 'a_file'}", "hf:", "nano:x", ""]),
                     junk)
    data = mostly(st.just(f"text:{world['text']}"),
                  st.sampled_from([f"text:{root / n}" for n in ("short.txt", "binary.txt", "missing.txt")]),
                  st.sampled_from(["text:", "wiki", "TEXT:x", "stories:x"]), junk)
    outs = st.sampled_from(["fresh"] * 6 + ["imported", "occupied", "a_file", "below_file", "empty"])
    flags = {"--seed": st.one_of(ints(0, 2 ** 62), st.just(str(2 ** 63))), "--seq-len": ints(2, 64),
             "--sample-tokens": ints(0, 8)}
    optional = st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True).flatmap(
        lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))
    drop = st.sampled_from([None] * 8 + ["--from", "--data", "--out"])  # sometimes a required flag is missing
    return st.tuples(sources, data, outs, optional, drop, switches, st.randoms(use_true_random=False))


@pytest.mark.parametrize("n", EXAMPLES)
def test_importer_exits_0_or_2_and_refuses_before_writing(world, monkeypatch, capsys, starts, n):
    monkeypatch.setattr(importer, "import_checkpoint", raise_accepted)
    monkeypatch.setenv("WORKBENCH_CACHE", str(world["root"] / "cache"))  # under the root: a refusal caches nothing
    seen = Counter()
    nano, text = f"nanogpt:{world['nano']}", f"text:{world['text']}"

    @fuzz(n)
    @given(args=import_argvs(world))
    @example(args=(nano, text, "fresh", (["--seq-len", "32"], ["--sample-tokens", "2"]), None, [], None))
    @example(args=(nano, f"text:{world['root'] / 'short.txt'}", "fresh", (), None, [], None))  # tokenized, then refused
    @example(args=(nano, text, "imported", (["--seq-len", "9"],), None, [], None))
    @example(args=(nano, text, "fresh", (["--seq-len", "65"],), None, [], None))
    def check(args):
        source, data, out_kind, optional, drop, switches, rnd = args
        pairs = [["--from", source], ["--data", data], ["--out", out_path(world, out_kind)], *optional]
        pairs = [p for p in pairs if p[0] != drop]
        if rnd is not None:
            rnd.shuffle(pairs)
        argv = [x for pair in pairs for x in pair] + switches
        before = tree(world["root"])
        capsys.readouterr()
        starts.take()
        try:
            status = importer.main(argv)
        except Accepted:
            out = Path(argv[argv.index("--out") + 1])
            assert (out / "run.json").is_file() and (out / "data.json").is_file(), argv
            seen["accepted"] += 1
            return
        printed, err = capsys.readouterr()
        seen[status] += 1
        if status == 0:
            assert "--help" in argv or out_kind == "imported", (argv, err)  # nothing new to import is fine
            return
        refused_cleanly(status, printed, err, before, tree(world["root"]), starts.take(), argv)

    check()
    print(f"importer: {dict(seen)}")
    assert seen[2] > 0 and seen["accepted"] > 0 and sum(seen.values()) >= n


# -- python -m app.launch --------------------------------------------------------------------------
def launch_argvs(world: dict):
    root = world["root"]
    runs = mostly(st.just("fresh"), st.sampled_from(["imported", "occupied", "a_file", "below_file", "empty"]))
    ours = {"--serve": ints(1, 65535), "--address": mostly(st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "::1"]),
                                                           st.sampled_from(["bad host!", "-x", "1.2.3.4.5", ""]), junk)}
    train = {"--preset": mostly(st.just("nano"), st.just("huge"), junk), "--steps": ints(1, 10 ** 6),
             "--data": mostly(st.just("stories"), st.sampled_from([f"text:{root / 'probe.txt'}", f"text:{root / 'nope'}",
                                                                   "wiki"]), junk),
             "--lr": floats(1e-6, 1.0), "--n-ctx": ints(1, 64), "--out": st.just(str(root / "elsewhere")),
             "--fill-in": st.sampled_from(["1:2:1", "x"]), "--threads": st.one_of(ints(0, 4), st.just("100000"))}

    def pairs(flags: dict, most: int):
        return st.lists(st.sampled_from(sorted(flags)), max_size=most, unique=True).flatmap(
            lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))

    train_switches = st.lists(st.sampled_from(["--resume", "--bogus", "--compile"]), max_size=1)
    return st.tuples(runs, pairs(ours, 2), switches, pairs(train, 3), train_switches)


@pytest.mark.parametrize("n", EXAMPLES)
def test_launcher_exits_0_or_2_and_refuses_before_starting_anything(world, monkeypatch, capsys, starts, n):
    monkeypatch.setattr(launch.Supervisor, "run", raise_accepted)
    seen = Counter()

    @fuzz(n)
    @given(args=launch_argvs(world))
    @example(args=("fresh", (["--serve", "0"],), [], (["--preset", "nano"],), []))
    @example(args=("fresh", (["--serve", "8501"],), [], (["--steps", "0"],), []))  # training's own check, first
    @example(args=("fresh", (), [], (["--out", str(world["root"] / "elsewhere")],), []))
    @example(args=("imported", (), [], (), []))  # an imported run cannot be trained on
    def check(args):
        run_kind, ours, switches, train, train_switches = args
        run = out_path(world, run_kind)
        argv = [run] + [x for pair in ours for x in pair] + switches
        train_argv = [x for pair in train for x in pair] + train_switches
        argv += ["--", *train_argv] if train_argv else []
        before = tree(world["root"])
        capsys.readouterr()
        starts.take()
        try:
            status = launch.main(argv)
        except Accepted:
            printed, err = capsys.readouterr()
            assert not printed and not err and not changes(before, tree(world["root"])), (argv, printed, err)
            seen["accepted"] += 1
            return
        printed, err = capsys.readouterr()
        seen[status] += 1
        if status == 0:
            assert "--help" in argv, (argv, err)
            return
        refused_cleanly(status, printed, err, before, tree(world["root"]), starts.take(), argv)

    check()
    print(f"launcher: {dict(seen)}")
    assert seen[2] > 0 and seen["accepted"] > 0 and sum(seen.values()) >= n
