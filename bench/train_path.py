"""How the training path reads: `python -m train` from its first line to the loop, as the modules
of this project it passes through and how often it comes back to one it had left.

Run: `python -m bench.train_path` (a fresh 1-step `nano` run in a temporary folder, in this
process). The trace follows the project's own frames (model/, train/, probes/, app/), ignoring
the standard library and torch, and ends where the loop begins (`Trainer.run`). Every distinct
call site that enters a module from another one is an entry (a call repeated in a loop counts
once: the question is how the code reads, not how often it runs); each entry into a module after
its first is a return to a module the path had left. nanoGPT's train.py, one file read top to
bottom, would count none.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Callable

import train.cli  # imported before tracing: import-time code is not the path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "store", "train", "probes", "app")
LOOP = ("train.loop", "run")
RUN = ["--preset", "nano", "--data", "stories", "--steps", "1", "--warmup", "0", "--batch-size", "2",
       "--eval-every", "1", "--eval-batches", "1", "--sample-tokens", "4", "--device", "cpu", "--seed", "0"]


def module_of(filename: str) -> str | None:
    """`train.cli` for ROOT/train/cli.py; None outside the project's packages."""
    try:
        rel = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    if rel.parts[0] not in PACKAGES or rel.suffix != ".py":
        return None
    return ".".join(rel.with_suffix("").parts)


class PathTrace:
    """The cross-module call sites taken from the first traced call until `end` (module, function)
    is called (the training loop, by default; None: until the traced call returns)."""

    def __init__(self, end: tuple[str, str] | None = LOOP) -> None:
        self.entries: dict[str, list[tuple[str, int, str]]] = collections.defaultdict(list)
        self.seen: set[tuple[str, int, str]] = set()
        self.done = False
        self.end = end

    def __call__(self, frame, event: str, arg) -> None:
        if self.done or event != "call":
            return
        module = module_of(frame.f_code.co_filename)
        if module is None:
            return
        if (module, frame.f_code.co_name) == self.end:
            self.done = True
            sys.setprofile(None)
            return
        caller = frame.f_back
        while caller is not None and module_of(caller.f_code.co_filename) is None:
            caller = caller.f_back  # through the standard library and torch to the project frame
        if caller is None:
            return
        source = module_of(caller.f_code.co_filename)
        site = (source, caller.f_lineno, module)  # one line calling through a table of functions: one entry
        if source != module and site not in self.seen:
            self.seen.add(site)
            self.entries[module].append((source, caller.f_lineno, frame.f_code.co_name))

    def returns(self) -> tuple[int, collections.Counter]:
        """How many times the path came back to a module it had left, and to which ones."""
        back = collections.Counter({m: len(e) - 1 for m, e in self.entries.items() if len(e) > 1})
        return sum(back.values()), back


def trace_training_path(out: Path) -> PathTrace:
    """Run `python -m train` (its main) on RUN into `out` under the trace."""
    trace = PathTrace()
    sys.setprofile(trace)
    try:
        train.cli.main([*RUN, "--out", str(out)])
    finally:
        sys.setprofile(None)
    if not trace.done:
        raise RuntimeError(f"the trace never reached {'.'.join(LOOP)}")
    return trace


def report(trace: PathTrace) -> None:
    """The count and, per module returned to, how often and from where."""
    total, back = trace.returns()
    print(f"modules on the path: {len(trace.entries)}; entries: {sum(len(e) for e in trace.entries.values())}; "
          f"returns to a module already left: {total}")
    for module, n in back.most_common():
        sources = collections.Counter(source for source, _, _ in trace.entries[module])
        print(f"  {module}: {n} (entered from " + ", ".join(f"{k} {v}x" for k, v in sources.most_common()) + ")")


def traced_main(argv: list[str] | None, doc: str, trace_path: Callable[[Path], PathTrace]) -> int:
    """A path counter's command: `trace_path` on a fresh run folder in a temporary directory, reported."""
    argparse.ArgumentParser(description=doc.splitlines()[0]).parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trace = trace_path(Path(tmp) / "run")
    report(trace)
    return 0


def main(argv: list[str] | None = None) -> int:
    return traced_main(argv, __doc__, trace_training_path)


if __name__ == "__main__":
    sys.exit(main())
