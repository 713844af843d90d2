"""Which runs the app may read, and what each one holds — without Streamlit.

The app is read-only and confined to its runs folder ($WORKBENCH_RUNS or ./runs): a run name is a
single folder name, never a path, and anything that resolves outside the folder (a `..`, an
absolute path, a symlink pointing elsewhere) is refused with one sentence. Everything the pages
show about a run's files is gathered here through store.checkpoint, the one module that knows the
layout.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from store.checkpoint import list_checkpoints
from store.runio import RunFileError, read_jsonl, write_bytes_atomic
from store.runrecord import read_record
from store.checkpoint import verify_checkpoint as verify_files
from store.runlayout import (META, RUN_ENTRIES, WEIGHTS, metrics_jsonl, probes_dir, result_step, run_json,
                             samples_jsonl, step_of)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_COMMAND = "make demo"
DEMO_TRAIN_COMMAND = "python -m train --preset nano --data stories --out runs/demo"


def runs_root(environ: Mapping[str, str] | None = None) -> Path:
    """$WORKBENCH_RUNS, else ./runs, else the repository's runs/ (so `streamlit run app` finds the
    demo from any working directory)."""
    environ = os.environ if environ is None else environ
    if environ.get("WORKBENCH_RUNS"):
        return Path(environ["WORKBENCH_RUNS"]).expanduser().resolve()
    here = Path.cwd() / "runs"
    return (here if here.is_dir() else REPO_ROOT / "runs").resolve()


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink followed, lies inside `root`."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def safe_run_dir(root: Path, name: str) -> Path:
    """The folder of run `name` inside `root`, or ValueError saying why the name is refused."""
    path = run_dir_for(root, name)
    if not path.is_dir():
        raise ValueError(f"There is no run named {name!r} in {root}.")
    return path


def run_dir_for(root: Path, name: str) -> Path:
    """Where run `name` lives (or will live) inside `root`, or ValueError saying why the name is
    refused; the folder need not exist yet (the New-run form names runs before they are made)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("A run name must be a non-empty folder name.")
    if os.path.isabs(name) or name.startswith("~"):
        raise ValueError(f"Run name {name!r} is refused: absolute paths are not allowed, only runs inside {root}.")
    if ".." in name or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"Run name {name!r} is refused: it must be a single folder name inside {root}, "
                         "without '..' or path separators.")
    if name.startswith("."):
        raise ValueError(f"Run name {name!r} is refused: hidden folders are not runs.")
    path = root / name
    if not inside(root, path):
        raise ValueError(f"Run {name!r} is refused: it is a symlink that points outside {root}.")
    return path


def run_names(root: Path) -> list[str]:
    """Folders of `root` that hold a run.json (hidden folders such as the token cache and
    symlinks leading outside are not runs)."""
    if not root.is_dir():
        return []
    names = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir() or not inside(root, p):
            continue
        if run_json(p).is_file() and inside(root, run_json(p)):
            names.append(p.name)
    return names


@dataclass
class RunFiles:
    """What one run folder holds, as read right now. `problems` names files that could not be
    read; the pages show them and carry on with the rest."""

    name: str
    path: Path
    info: dict = field(default_factory=dict)
    checkpoint_steps: list[int] = field(default_factory=list)
    probe_files: dict[int, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    @property
    def training(self) -> bool:
        return self.status == "training"

    @property
    def missing_probes(self) -> list[int]:
        return [s for s in self.checkpoint_steps if s not in self.probe_files]


def check_confined(root: Path, run_dir: Path) -> None:
    """Refuse a run any of whose files is a symlink leading outside the runs folder, so the
    app can never be made to read (or hand the probes runner) a file from elsewhere."""
    for entry in RUN_ENTRIES:
        p = run_dir / entry
        if (p.exists() or p.is_symlink()) and not inside(root, p):
            raise ValueError(f"Run {run_dir.name!r} is refused: {entry} is a symlink that points outside {root}.")


def run_files(root: Path, name: str) -> RunFiles:
    """Gather a run's listing (cheap: names and small JSON only, no weights)."""
    path = safe_run_dir(root, name)
    check_confined(root, path)
    run = RunFiles(name=name, path=path)
    try:
        run.info = read_record(path)
    except RunFileError as e:
        run.problems.append(str(e))
    run.checkpoint_steps = [step_of(p) for p in list_checkpoints(path)
                            if all(inside(root, q) for q in (p, p / WEIGHTS, p / META))]
    run.probe_files = probe_files(root, path)
    return run


def probe_files(root: Path, run_dir: Path) -> dict[int, Path]:
    """{step: probes/step_NNNNNN.json} for the result files present."""
    folder = probes_dir(run_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        step = result_step(p)
        if step is not None and p.is_file() and inside(root, p):
            found[step] = p
    return dict(sorted(found.items()))


def file_key(path: Path) -> tuple[str, int, int]:
    """(path, mtime_ns, size): the cache key of a file's content, so an edited file is re-read."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def verify_checkpoint(path: Path) -> str | None:
    """None if every file the checkpoint depends on is intact (meta.json's seal, the weights'
    sha256, the run's vocab.json and data.json), else the problem as one sentence naming the file.
    Cheaper than loading the model, and catches the same damage short of a forged hash."""
    try:
        verify_files(path)
    except RunFileError as e:
        return str(e)
    return None


METRIC_COLUMNS = {"train": "loss", "val": "val_loss", "grad_norm": "grad_norm"}


def metrics_series(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Train loss, held-out loss and gradient-norm curves from metrics.jsonl (each only at the
    rows that hold it: held-out loss is evaluated every few steps, step 0 has no gradient)."""
    out: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in METRIC_COLUMNS}
    for row in read_jsonl(metrics_jsonl(run_dir)):
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        for name, column in METRIC_COLUMNS.items():
            v = row.get(column)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[name][0].append(int(row["step"]))
                out[name][1].append(float(v))
    return out


def samples_at(run_dir: Path, step: int) -> list[dict]:
    """samples.jsonl rows written at one checkpoint step."""
    return [r for r in read_jsonl(samples_jsonl(run_dir)) if isinstance(r, dict) and r.get("step") == step]


def sample_steps(run_dir: Path) -> list[int]:
    return sorted({int(r["step"]) for r in read_jsonl(samples_jsonl(run_dir))
                   if isinstance(r, dict) and isinstance(r.get("step"), int)})


UPLOADS = ".uploads"  # <runs>/.uploads: texts uploaded through the New-run form


def keep_upload(root: Path, name: str, suffix: str, data: bytes, created: list[Path]) -> str:
    """text:PATH of an uploaded text kept as <runs>/.uploads/NAME-DIGEST.SUFFIX: named by its content,
    so an upload never replaces the text another run trains on (a run of that name, or an earlier
    upload); a file this call wrote is added to `created`, for the form to remove when it is refused."""
    path = root / UPLOADS / f"{name}-{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        created.append(path)
    return f"text:{path}"
