"""How the probes path reads: `python -m probes RUN` from its first line to the written results,
as the modules of this project it passes through and how often it comes back to one it had left,
counted by the training path's rule (bench/train_path.py: every distinct call site entering a
module from another one is an entry; each entry into a module after its first is a return).

Run: `python -m bench.probes_path` (a fresh 1-step `nano` run trained untraced in a temporary folder,
then its two checkpoints probed in this process, one worker, one thread, under the trace).
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import probes.run.cli  # imported before tracing: import-time code is not the path
import train.cli

from .train_path import RUN, PathTrace, traced_main


def trace_probes_path(run: Path) -> PathTrace:
    """Train RUN into `run` (untraced), then `python -m probes` (its main) on it under the trace."""
    with contextlib.redirect_stderr(io.StringIO()):
        if train.cli.main([*RUN, "--out", str(run)]) != 0:
            raise RuntimeError("the 1-step run to probe did not train")
    trace = PathTrace(end=None)
    sys.setprofile(trace)
    try:
        status = probes.run.cli.main([str(run), "--jobs", "1", "--threads", "1"])
    finally:
        sys.setprofile(None)
    if status != 0:
        raise RuntimeError(f"python -m probes exited with status {status}")
    return trace


def main(argv: list[str] | None = None) -> int:
    return traced_main(argv, __doc__, trace_probes_path)


if __name__ == "__main__":
    sys.exit(main())
