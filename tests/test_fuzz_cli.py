"""Property-based fuzzing (hypothesis) of the three command lines, called in-process through their
main(argv): `python -m train`, `python -m probes`, `python -m store.generate`, `python -m probes.prompt`. Arguments are
drawn per flag from valid values, values out of range, non-numbers, NaN/inf, huge integers, odd
paths and random junk, in random order. The property: exit status 0 (valid input), or 2 with
one sentence on stderr and no traceback (and for train, nothing created in --out); never another
exception, never a hang (each example runs under a deadline).

Every refusal is checked to come before any action: nothing on stdout, no file or folder created,
removed or rewritten anywhere under the test's folder (for train the token cache too, for probes
the run's results), and no process, worker pool or Ray instance started (_fuzzing.Starts).

Training itself is not run: arguments that pass every check reach the trainer, which is replaced
by a stub that raises `Accepted` (so each example costs the checks and the corpus setup, not the
training). Arguments that only size the work (steps, batch size, corpus size, tokens to generate)
are drawn from ranges that fit this machine when valid; their validity limits are fuzzed, not
whether a huge but valid job finishes.

`make test` runs each fuzzer on a fixed seed, `make stress` on a fresh one; either is printed, and
HYPOTHESIS_SEED=N replays it (tests/_fuzzing.py).
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
import shutil
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import _fuzzing
import store.generate as generate_cli
import probes.prompt as prompt_cli
import probes.run.cli as probes_cli
import probes.run.runner as probes_runner
import train.cli as train_cli
from _fuzzing import (Accepted, changes, floats, huge, ints, junk, mostly, one_sentence, refused_cleanly, sized,
                      starts, tree)  # noqa: F401 (starts: a fixture)
from probes.measure.compute import PROBES
from probes.run.ray_runner import RayCluster

from store.runrecord import set_status

FAST, STRESS = 40, 600
EXAMPLES = [pytest.param(FAST, id="fast"), pytest.param(STRESS, id="stress", marks=pytest.mark.stress)]


def fuzz(n: int, deadline_ms: int = 20_000):
    """A fixed, printed seed for the fast set, a fresh one for the stress set (_fuzzing.fuzz)."""
    return _fuzzing.fuzz(n, stress=n == STRESS, deadline_ms=deadline_ms)


# -- python -m train -----------------------------------------------------------------------------
class StubTrainer:
    def __init__(self, *args, **kwargs):
        raise Accepted


def exit_status(main, argv: list[str]) -> int | str:
    """main(argv)'s exit status; "help" where argparse's --help exited (fine for a CLI entry point)."""
    try:
        return main(argv)
    except SystemExit as e:
        assert "--help" in argv and e.code == 0, argv
        return "help"


def called(main, argv: list[str], capsys, seen: Counter, root: Path, starts) -> tuple[int, str, str] | None:
    """main(argv) with its outcome checked (outcome): (status, stdout, stderr), or None after --help
    exited (counted as "help")."""
    before = tree(root)
    capsys.readouterr()
    starts.take()
    status = exit_status(main, argv)
    if status == "help":
        seen["help"] += 1
        return None
    return (status, *outcome(status, argv, capsys, seen, root, before, starts))


def outcome(status: int, argv: list[str], capsys, seen: Counter, root: Path, before: dict, starts) -> tuple[str, str]:
    """What the command printed (stdout, stderr), its status counted and checked (0 or 2), and a
    refusal checked to come before any action."""
    out, err = capsys.readouterr()
    seen[status] += 1
    assert status in (0, 2), (argv, status, err)
    if status == 2:
        refused_cleanly(status, out, err, before, tree(root), starts.take(), argv)
    return out, err


@pytest.fixture(scope="module")
def train_world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train_fuzz")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(f"Story {i}: Tom and Mia went to the park and saw a red ball." for i in range(40)))
    folder = root / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(text.read_text())
    (root / "empty.txt").write_text("")
    (root / "one.txt").write_text("only one story")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x80" * 10)
    (root / "cfg.toml").write_text('lr = 0.01\nsteps = 3\n')
    (root / "bad.toml").write_text('lr = "fast"\n')
    (root / "broken.toml").write_text('lr = = 1\n')
    (root / "nan.toml").write_text('lr = nan\n')
    (root / "unknown.yaml").write_text('colour: blue\n')
    (root / "list.yaml").write_text('- 1\n- 2\n')
    (root / "a_file").write_text("x")
    occupied = root / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("x")
    return {"root": root, "counter": itertools.count()}


def train_argvs(world: dict):
    root: Path = world["root"]
    data = st.one_of(
        st.sampled_from([f"text:{root / 'corpus.txt'}", f"text:{root / 'texts'}"]),
        st.sampled_from([f"text:{root / n}" for n in ("empty.txt", "one.txt", "binary.txt", "missing.txt")]),
        st.sampled_from(["stories", "text:", "wiki", "stories:x", "text:/dev/null", "TEXT:x"]), junk)
    flags = {
        "--preset": st.one_of(st.sampled_from(["nano", "tiny", "small", "huge"]), junk),
        "--data": data,
        "--steps": ints(1, 10 ** 6), "--batch-size": ints(1, 64), "--grad-accum": ints(1, 4),
        "--lr": floats(1e-6, 1.0), "--warmup": ints(0, 10 ** 9), "--eval-every": ints(1, 10 ** 9),
        "--ckpt-every": ints(1, 10 ** 9), "--seed": st.one_of(ints(0, 2 ** 62), st.just(str(2 ** 64 - 1))),
        "--device": st.one_of(st.sampled_from(["cpu", "cuda", "auto", "tpu"]), junk),
        "--attention": st.one_of(st.sampled_from(["standard", "gated", "linear", "flash"]), junk),
        "--threads": st.one_of(ints(0, 4), st.just("100000")),
        "--n-layer": ints(1, 4), "--n-head": ints(1, 8), "--n-embd": ints(1, 64), "--n-ctx": ints(1, 64),
        "--dropout": floats(0, 0.99), "--vocab-size": st.one_of(ints(3, 10 ** 6), st.just("gpt2")),
        "--corpus-mb": sized(0.001, 0.02, 1e6), "--val-fraction": floats(0.01, 0.49),
        "--canary-copies": st.one_of(st.sampled_from(["1,2", "none", "0", "1,,2", "-1", "1.5", "a"]), junk),
        "--canaries-per-count": ints(1, 2), "--copy-weight": st.one_of(floats(0, 3), st.sampled_from(["1e308", "1e300", "1e7"])), "--weight-decay": floats(0, 1),
        "--grad-clip": floats(0, 10), "--min-lr-ratio": floats(0, 1), "--beta2": floats(0.5, 0.999),
        "--eval-batches": ints(1, 10 ** 6), "--sample-tokens": ints(0, 8), "--max-docs": ints(0, 50),
        "--val-data": st.one_of(st.sampled_from([f"text:{root / n}" for n in ("one.txt", "corpus.txt", "empty.txt",
                                                                               "missing.txt")] + ["stories"]), junk),
        "--config": st.sampled_from([str(root / n) for n in ("cfg.toml", "bad.toml", "broken.toml", "nan.toml",
                                                             "unknown.yaml", "list.yaml", "missing.toml", "a_file")]),
    }
    pairs = st.lists(st.sampled_from(sorted(flags)), max_size=7, unique=True).flatmap(
        lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))
    switches = st.lists(st.sampled_from(["--compile", "--resume", "--help", "--bogus", "-x"]), max_size=2, unique=True)
    outs = st.one_of(st.just("fresh"), st.sampled_from(["fresh", "fresh", "occupied", "a_file", "below_file", "none"]))
    return st.tuples(pairs, switches, outs, st.randoms(use_true_random=False))


def out_arg(world: dict, kind: str) -> list[str]:
    root: Path = world["root"]
    if kind == "none":
        return []
    path = {"fresh": root / "runs" / f"r{next(world['counter'])}", "occupied": root / "occupied",
            "a_file": root / "a_file", "below_file": root / "a_file" / "run"}[kind]
    return ["--out", str(path)]


@pytest.mark.parametrize("n", EXAMPLES)
def test_train_cli_exits_0_or_2_with_one_sentence(train_world, monkeypatch, capsys, starts, n):
    monkeypatch.setattr(train_cli, "Trainer", StubTrainer)
    monkeypatch.setenv("WORKBENCH_CACHE", str(train_world["root"] / "cache"))  # under the root: a refusal caches nothing
    starts.patch(monkeypatch, train_cli.dist, "init_process_group")
    seen = Counter()

    @fuzz(n)
    @given(args=train_argvs(train_world))
    def check(args):
        pairs, switches, out_kind, rnd = args
        pairs = [p for p in [out_arg(train_world, out_kind), *pairs] if p]
        if "--corpus-mb" not in [p[0] for p in pairs]:
            pairs.append(["--corpus-mb", "0.005"])  # when the stories corpus is valid, keep it small
        rnd.shuffle(pairs)
        argv = [x for pair in pairs for x in pair] + switches
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        before = tree(train_world["root"])
        capsys.readouterr()
        starts.take()
        try:
            status = train_cli.main(argv)
        except Accepted:
            assert out is not None and (out / "run.json").is_file() and (out / "data.json").is_file(), argv
            seen["accepted"] += 1
            return
        printed, err = capsys.readouterr()
        seen[status] += 1
        if status == 0:
            assert "--help" in argv, (argv, err)
            return
        refused_cleanly(status, printed, err, before, tree(train_world["root"]), starts.take(), argv)

    check()
    print(f"train CLI: {dict(seen)}")
    assert seen[2] > 0 and sum(seen.values()) >= n


# -- a run for the probes and generate command lines -----------------------------------------
@pytest.fixture(scope="module")
def probe_world(fake_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli_fuzz")
    run = Path(shutil.copytree(fake_run(steps=(0, 3)), root / "run"))  # probed below: a copy of the shared run
    import probes
    probes.run_probes(run, threads=1)  # results present: a plain run computes nothing
    training = Path(shutil.copytree(run, root / "training"))
    set_status(training, "training")
    (root / "not_a_run").mkdir()
    (root / "a_file").write_text("x")
    return {"root": root, "run": run, "training": training}


def probes_argvs(world: dict):
    root = world["root"]
    runs = mostly(st.just(str(world["run"])), st.sampled_from([str(root / "not_a_run"), str(root / "a_file"),
                                                               str(root / "missing"), "", "-"]))
    only = st.one_of(st.lists(st.sampled_from(list(PROBES) + ["telepathy", "", " "]), min_size=1, max_size=3)
                     .map(",".join), junk)
    steps = st.one_of(st.lists(st.sampled_from([0, 3, 1, -1, 2 ** 70]), min_size=1, max_size=3)
                      .map(lambda s: ",".join(map(str, s))), junk)
    ray = st.one_of(st.sampled_from(["local", "auto", "ray://127.0.0.1:6379", "ray://h:0", "ray://", "cluster"]), junk)
    flags = {"--only": only, "--steps": steps, "--device": st.one_of(st.sampled_from(["cpu", "cuda", "auto", "gpu"]), junk),
             "--poll": floats(0.01, 10), "--threads": st.one_of(ints(1, 2), st.just("100000")),
             "--jobs": st.one_of(st.just("1"), st.integers(-2, 0).map(str), st.just("100000"), junk),
             "--ray": ray}
    pairs = st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))
    switches = st.lists(st.sampled_from(["--force", "--watch", "--help", "--bogus", "--ship"]), max_size=2, unique=True)
    return st.tuples(runs, pairs, switches)


class RayWouldStart(Exception):
    """Every argument passed and a Ray cluster would be started or joined now."""


@pytest.mark.parametrize("n", EXAMPLES)
def test_probes_cli_exits_0_or_2_with_one_sentence(probe_world, monkeypatch, capsys, starts, n):
    def no_ray(self):
        raise RayWouldStart

    monkeypatch.setattr(RayCluster, "__enter__", no_ray)
    starts.patch(monkeypatch, probes_runner, "ProcessPoolExecutor")
    seen = Counter()
    run = str(probe_world["run"])

    @fuzz(n)
    @given(args=probes_argvs(probe_world))
    @example(args=(run, (["--only", ""],), ["--watch"]))  # found by the fuzzer: the watcher spoke, then refused
    @example(args=(run, (["--only", "telepathy"], ["--jobs", "2"]), ["--watch", "--force"]))
    @example(args=(run, (["--steps", "1"],), ["--force"]))
    @example(args=(run, (["--ray", "ray://h:0"],), []))
    @example(args=(run, (["--device", "gpu"], ["--jobs", "2"]), ["--force"]))
    def check(args):
        run, pairs, switches = args
        if "--force" in switches and "--jobs" not in [p[0] for p in pairs]:
            pairs = pairs + (["--jobs", "1"],)  # recomputing is fine; spawning worker pools each time is slow
        argv = [run] + [x for pair in pairs for x in pair] + switches
        before = tree(probe_world["root"])
        capsys.readouterr()
        starts.take()
        try:
            status = probes_cli.main(argv)
        except RayWouldStart:
            printed, err = capsys.readouterr()
            assert "--ray" in argv and not printed and not err and not changes(before, tree(probe_world["root"])), argv
            seen["ray"] += 1
            return
        outcome(status, argv, capsys, seen, probe_world["root"], before, starts)
        if status == 0 and "--help" not in argv:
            assert "--bogus" not in argv and ("--ship" not in argv or "--ray" in argv), argv

    check()
    print(f"probes CLI: {dict(seen)}")
    assert seen[2] > 0 and seen[0] > 0 and sum(seen.values()) >= n


def test_probes_watch_refuses_a_poll_it_could_not_sleep(probe_world, capsys):
    """Found by the fuzzer: --poll inf or 1e300 passed the check and crashed time.sleep (an
    OverflowError traceback) after a whole pass over a run still training; NaN did the same with a
    ValueError."""
    for poll in ("inf", "1e300", "nan", "-1", "0"):
        assert probes_cli.main([str(probe_world["training"]), "--watch", "--poll", poll]) == 2
        assert "--poll must be" in one_sentence(capsys.readouterr().err)


# -- python -m store.generate --------------------------------------------------------------------
def generate_argvs(world: dict):
    root = world["root"]
    prompts = mostly(st.text(min_size=1, max_size=30), st.sampled_from(["", " ", "<|endoftext|>", "Once upon a time",
                                                                        "\udcff", "--prompt", "-"]))
    flags = {"--run": mostly(st.just(str(world["run"])), st.sampled_from([str(root / "not_a_run"), str(root / "a_file"),
                                                                          str(root / "missing"), ""])),
             "--prompt": prompts, "--step": st.one_of(st.sampled_from(["0", "3", "1"]), ints(0, 5)),
             "--max-new-tokens": ints(0, 12), "--temperature": floats(0, 3), "--top-k": ints(1, 50),
             "--top-p": floats(0, 1), "--seed": st.one_of(ints(0, 2 ** 62), huge),
             "--device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:7", "meta", "cpu:0"]), junk)}
    required = st.tuples(flags["--run"].map(lambda v: ["--run", v]), flags["--prompt"].map(lambda v: ["--prompt", v]))
    optional = st.lists(st.sampled_from(sorted(set(flags) - {"--run", "--prompt"})), max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))
    drop = st.sampled_from([None] * 8 + [0, 1])  # sometimes a required flag is missing
    return st.tuples(required, optional, drop, st.lists(st.sampled_from(["--help", "--bogus"]), max_size=1))


@pytest.mark.parametrize("n", EXAMPLES)
def test_generate_cli_exits_0_or_2_with_one_sentence(probe_world, capsys, starts, n):
    seen = Counter()

    @fuzz(n)
    @given(args=generate_argvs(probe_world))
    def check(args):
        required, optional, drop, switches = args
        pairs = [p for i, p in enumerate(required) if i != drop] + list(optional)
        argv = [x for pair in pairs for x in pair] + switches
        done = called(generate_cli.main, argv, capsys, seen, probe_world["root"], starts)
        if done is None:
            return
        status, out, err = done
        if status == 0:
            assert isinstance(out, str) and not err.strip(), (argv, err)

    check()
    print(f"generate CLI: {dict(seen)}")
    assert seen[2] > 0 and seen[0] > 0 and sum(seen.values()) >= n


# -- python -m probes.prompt --------------------------------------------------------------------
def prompt_argvs(world: dict):
    root = world["root"]
    runs = mostly(st.just(str(world["run"])), st.sampled_from([str(root / "not_a_run"), str(root / "a_file"),
                                                               str(root / "missing"), "", "-"]))
    texts = mostly(st.text(min_size=1, max_size=20), st.sampled_from(["", " ", "\n", "They wave to each other",
                                                                      "\udcff", "--tokens", "x" * 5000]))
    flags = {"--tokens": st.one_of(ints(1, 16), st.sampled_from(["0", "-1", "1025", "nan"]), huge, junk),
             "--steps": st.one_of(st.sampled_from(["0", "3", "0,3", "1", "-1", ""]), junk),
             "--seed": st.one_of(ints(0, 2 ** 62), st.just("-1"), huge),
             "--corrupted": st.one_of(texts, st.just("They wave to each one"))}
    pairs = st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*[flags[n].map(lambda v, n=n: [n, v]) for n in names]))
    positional = st.tuples(runs, texts).map(list) | st.tuples(runs).map(list)  # sometimes the text is missing
    return st.tuples(positional, pairs, st.lists(st.sampled_from(["--help", "--bogus"]), max_size=1))


@pytest.mark.parametrize("n", EXAMPLES)
def test_prompt_cli_exits_0_or_2_with_one_sentence(probe_world, capsys, starts, n):
    """The prompt time-lapse's command: its JSON on stdout (every checkpoint of the run) or one
    sentence and exit 2 with nothing written (its cache included) and nothing started."""
    seen = Counter()
    run = str(probe_world["run"])

    @fuzz(n)
    @given(args=prompt_argvs(probe_world))
    @example(args=([run, "They wave to each other"], (["--corrupted", "They wave to each one"],), []))
    @example(args=([run, "x" * 5000], (), []))
    def check(args):
        positional, pairs, switches = args
        argv = positional + [x for pair in pairs for x in pair] + switches
        done = called(prompt_cli.main, argv, capsys, seen, probe_world["root"], starts)
        if done is None:
            return
        status, out, err = done
        if status == 0 and "--help" in argv:
            assert out.startswith("usage: python -m probes.prompt"), argv
        elif status == 0:
            result = json.loads(out)
            assert [c["step"] for c in result["checkpoints"]] and not starts.take(), argv

    check()
    print(f"prompt CLI: {dict(seen)}")
    assert seen[2] > 0 and seen[0] > 0 and sum(seen.values()) >= n
