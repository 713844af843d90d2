"""Reading and writing a run's files safely: atomic writes (temporary name, fsync, rename), so a
crash or SIGKILL at any moment leaves the old content or all of the new; the temporary names every
writer uses and their recognition; JSON and JSON-lines reads that turn every failure into a
RunFileError naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any


class RunFileError(Exception):
    """A file of a run (run.json, data.json, a log, a result) is missing, unreadable or not what
    it claims to be. `path` names it, `problem` says what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CheckpointError(RunFileError):
    """A checkpoint or the training state, or a file it depends on, failed verification."""


def as_checkpoint_error(e: RunFileError) -> CheckpointError:
    return e if isinstance(e, CheckpointError) else CheckpointError(e.path, e.problem)


# -- temporary names ---------------------------------------------------------------------------
# Every writer builds a file or folder under a temporary name beside its final one, then renames
# it into place; the name carries the writer's pid, so a reader can tell a live writer's work from
# what a killed one left. Files are .NAME.tmp-PID; folders (a checkpoint, a token-cache entry) are
# .tmp-NAME-PID, and the version a folder swap replaces is .old-NAME-PID while it is removed.
TEMP_NAME = re.compile(r"^\.(?:.+\.tmp-(\d+)|(?:tmp|old)-.+-(\d+))$")


def temp_path(final: str | os.PathLike) -> Path:
    """Where this process writes the file `final` before renaming it into place."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def temp_folder(final: str | os.PathLike, old: bool = False) -> Path:
    """Where this process builds the folder `final` (or, `old`, parks the version it replaces)."""
    final = Path(final)
    return final.with_name(f".{'old' if old else 'tmp'}-{final.name}-{os.getpid()}")


def temp_writer(path: str | os.PathLike) -> int | None:
    """The pid in a temporary name (temp_path, temp_folder), None for a name that is not one."""
    m = TEMP_NAME.match(Path(path).name)
    return None if m is None else int(m.group(1) or m.group(2))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_temporaries(folder: str | os.PathLike, live_writers_too: bool = True) -> None:
    """Delete the temporary files and folders in `folder`: all of them when the caller is the
    folder's only writer (a run's trainer), else only those whose writer is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        pid = temp_writer(p)
        if pid is None or (not live_writers_too and pid_alive(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# -- atomic primitives -------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either the old content or all of the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def link_or_copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make `dst` a hard link to `src` (a copy across file systems), atomically: a cached token
    file installed into a run."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunFileError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunFileError(path, f"not readable JSON ({type(e).__name__}: {e})") from None


def append_jsonl(path: str | os.PathLike, *rows: Any) -> None:
    """Append one line per row in one write, then fsync. A crash can at worst leave a partial
    last line, which read_jsonl skips."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete JSON line of `path` ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return rows


def keep_rows_through(paths: list[Path], step: int) -> None:
    """Rewrite each .jsonl of `paths` atomically with only its complete rows of steps <= `step`, so
    a resumed run appends after them without duplicates (and a line cut short by a kill is gone)."""
    for path in paths:
        if path.exists():
            rows = [r for r in read_jsonl(path) if isinstance(r, dict) and int(r.get("step", -1)) <= step]
            write_bytes_atomic(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
