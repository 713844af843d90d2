"""The on-disk layout of a run, and the only code that reads or writes it.

    runs/<name>/run.json, vocab.json, metrics.jsonl, samples.jsonl, data.json
    runs/<name>/checkpoints/step_000128/{model.safetensors, meta.json}
    runs/<name>/state/{state_000128.pt, latest.json}
    runs/<name>/probes/step_000128.json, summary.json

Every write is atomic (temp file + fsync + rename), so a crash or SIGKILL at any moment leaves
each earlier file readable. Reads verify sha256 hashes, load weights with safetensors and training
state with `torch.load(weights_only=True)`: a bad file raises CheckpointError naming it, and no
file can make us execute code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import GPTConfig
from .gpt import GPT

CHECKPOINTS = "checkpoints"
STATE = "state"
PROBES = "probes"
STEP_DIR = re.compile(r"^step_(\d{6,})$")
WEIGHTS = "model.safetensors"
META = "meta.json"


class CheckpointError(Exception):
    """A run file is missing, truncated, corrupt or not what it claims to be."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(path, f"not readable JSON ({type(e).__name__}: {e})") from None


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one line and fsync. A crash can at worst leave a partial last line, which
    read_jsonl skips."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, allow_nan=False) + "\n")
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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- checkpoints -------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{int(step):06d}"


def step_of(path: str | os.PathLike) -> int:
    m = STEP_DIR.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint folder named step_NNNNNN.")
    return int(m.group(1))


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, by step. Half-written ones live under temporary
    names and are never listed; a folder is complete once its meta.json exists."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / META).exists()]
    return sorted(found, key=step_of)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: GPT, meta: dict | None = None) -> Path:
    """Write checkpoints/step_NNNNNN/ atomically: built under a temporary name, fsynced, renamed."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    raw = model.module if hasattr(model, "module") else model
    raw = getattr(raw, "_orig_mod", raw)
    state = {k: v.detach().to("cpu").contiguous() for k, v in raw.state_dict().items()}
    weights = st_save(state)
    full_meta = dict(meta or {})
    full_meta.update(step=int(step), config=raw.cfg.to_dict(), sha256=sha256_bytes(weights),
                     time=full_meta.get("time", time.time()))
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, data in ((WEIGHTS, weights), (META, (json.dumps(full_meta, indent=1) + "\n").encode())):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # rewriting a step (a resumed run redoing it): swap, then drop the old
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete temporary folders a killed writer left behind (only the writer calls this)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta = read_json(path / META)
    if not isinstance(meta, dict) or "sha256" not in meta or "config" not in meta:
        raise CheckpointError(path / META, "meta.json lacks the sha256 or config fields")
    return meta


def config_misfit(cfg: GPTConfig, state: dict[str, torch.Tensor]) -> str | None:
    """Why the config cannot describe these weights, checked on the embedding shapes and the
    block count before a model is built: meta.json has no hash of its own, and a damaged or crafted
    config must not make us allocate a model far larger than the file (minutes, or an OOM kill)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    found = {"wte.weight": tuple(state["wte.weight"].shape) if "wte.weight" in state else None,
             "wpe.weight": tuple(state["wpe.weight"].shape) if "wpe.weight" in state else None}
    want = {"wte.weight": (cfg.vocab_size, cfg.n_embd), "wpe.weight": (cfg.n_ctx, cfg.n_embd)}
    for name, shape in want.items():
        if found[name] != shape:
            return f"{name} has shape {found[name]}, the config needs {shape}"
    if len(blocks) != cfg.n_layer:
        return f"the file holds {len(blocks)} blocks, the config needs {cfg.n_layer}"
    return None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, meta) from a checkpoint folder, after verifying its sha256."""
    path = Path(path)
    if path.name == WEIGHTS:
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(path, "checkpoint folder does not exist")
    meta = read_checkpoint_meta(path)
    weights_path = path / WEIGHTS
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise CheckpointError(weights_path, f"cannot be read ({e.strerror or e})") from None
    digest = sha256_bytes(data)
    if digest != meta["sha256"]:
        raise CheckpointError(weights_path, f"sha256 {digest[:12]}… does not match meta.json "
                                            f"({str(meta['sha256'])[:12]}…): the file is truncated or corrupt")
    try:
        cfg = GPTConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(path / META, f"invalid model config ({e})") from None
    try:
        state = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(weights_path, f"not a valid safetensors file ({e})") from None
    problem = config_misfit(cfg, state)
    if problem:
        raise CheckpointError(weights_path, f"weights do not fit the config ({problem})")
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(weights_path, f"weights do not fit the config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta


# -- training state (for --resume) -------------------------------------------------------------
def save_state(run_dir: str | os.PathLike, step: int, state: dict) -> Path:
    """Write state/state_NNNNNN.pt, then point state/latest.json at it, then drop older files:
    at every moment latest.json names a complete, hash-checked file."""
    root = Path(run_dir) / STATE
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    name = f"state_{int(step):06d}.pt"
    write_bytes_atomic(root / name, data)
    write_json_atomic(root / "latest.json", {"file": name, "step": int(step), "sha256": sha256_bytes(data)})
    for p in root.iterdir():
        if p.name != name and p.name.startswith("state_") and p.suffix == ".pt":
            p.unlink(missing_ok=True)
    return root / name


def has_state(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / STATE / "latest.json").exists()


def load_state(run_dir: str | os.PathLike) -> dict:
    root = Path(run_dir) / STATE
    latest = read_json(root / "latest.json")
    if not isinstance(latest, dict) or not isinstance(latest.get("file"), str) or "/" in latest["file"]:
        raise CheckpointError(root / "latest.json", "does not name a state file")
    path = root / latest["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if sha256_bytes(data) != latest.get("sha256"):
        raise CheckpointError(path, "sha256 does not match state/latest.json: the file is truncated or corrupt")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of every kind, including refused globals
        raise CheckpointError(path, f"not a loadable training state ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "training state is not a dictionary")
    return state


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load any .pt file safely (weights_only), turning every failure into CheckpointError."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except Exception as e:
        raise CheckpointError(path, f"not a loadable torch file ({type(e).__name__})") from None
