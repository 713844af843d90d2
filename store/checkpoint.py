"""Checkpoints and training state: writing them atomically, and reading them back only once every
byte that changes their behaviour is verified. (Where each file lives: store.runlayout.)

Every write is atomic (temp file + fsync + rename), so a crash or SIGKILL at any moment leaves
each earlier file readable. Reads load weights with safetensors and training state with
`torch.load(weights_only=True)`, so no file can make us execute code.

What is verified on load (any damage raises CheckpointError naming the damaged file):
  meta.json          sealed: its "self_sha256" is the sha256 of the canonical JSON (sorted keys,
                     compact separators) of all its other fields. An edit of anything that changes
                     behaviour or reporting (config: ln_eps, n_head, attention, dropout...; step,
                     tokens, losses, the hashes below) breaks the seal. Only whitespace and number
                     spelling are free, since they do not change what is read. Its "step" must also
                     match the folder name, so a meta.json copied into another step is refused.
  model.safetensors  its sha256 is in meta.json ("sha256"), and each tensor's ("tensor_sha256", see
                     store.integrity), so damage names the tensor; older checkpoints lack the latter.
  vocab.json,        the run files that change how a checkpoint is read (vocab.json maps model ids
  data.json          to GPT-2 ids, so it decides the text a model writes; data.json says which
                     sequences a step had seen, and the batches a resumed run draws): their sha256
                     at save time (null: the file did not exist) is in meta.json and latest.json
                     ("run_files"), checked whenever the checkpoint lies in <run>/checkpoints/.
  latest.json        sealed like meta.json; names the latest state file and holds its sha256.
  state_NNNNNN.json  the same sealed record for each kept state (every checkpoint's, unless a run
                     keeps only the latest), so --fill-in can start from any of them.
  state_NNNNNN.pt    its sha256 is in latest.json and in state_NNNNNN.json.
  run.json "model"   a resumed run builds its model from run.json's config before loading the
                     state into it: latest.json records that config, and load_state compares them.

Not verified: the rest of run.json (status and timestamps change during a run by design; the
training recipe and the probes' seed are a run's description, not how its checkpoints are read),
data/*.bin (their lengths are checked against data.json; hashing them would cost a pass over the
whole corpus per load), metrics/samples/probe results (reports, rebuilt or re-read by line).
The seals guard against damage and careless edits, not against someone who recomputes them.
Files written before these seals existed (no "self_sha256") are refused: an old meta.json cannot be
told apart from an edited one."""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load, save as st_save

from model.config import GPTConfig
from store.runio import (CheckpointError, RunFileError, as_checkpoint_error, fsync_dir, read_json, remove_temporaries,
                    sha256_bytes, temp_folder, write_bytes_atomic)
from store.runlayout import (CHECKPOINTS_DIR, META, RUN_FILES, STATE_NAME, STATE_RECORD_NAME, STEP_NAME, WEIGHTS,
                        checkpoint_dir, checkpoints_dir, latest_json, run_json as run_json_path, state_dir, state_name,
                        state_record_name, step_of)
from model.gpt import GPT
from store.integrity import TENSOR_DIGESTS, compare_checkpoints, damaged_tensors, tensor_digests
from store.runrecord import read_record

SEAL = "self_sha256"


# -- sealed JSON: a file that carries the hash of its own content --------------------------------
def canonical_json(obj: Any) -> bytes:
    """One byte string per JSON value (sorted keys, no spaces), so the seal does not depend on
    indentation or key order, only on what a reader gets."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(obj: dict) -> dict:
    """A copy of `obj` carrying SEAL = sha256 of the canonical JSON of its other fields."""
    body = {k: v for k, v in obj.items() if k != SEAL}
    return {**body, SEAL: sha256_bytes(canonical_json(body))}


def check_seal(path: str | os.PathLike, obj: Any) -> dict:
    """`obj` (read from `path`) if it is a JSON object whose seal matches its content, else
    CheckpointError naming `path`."""
    path = Path(path)
    if not isinstance(obj, dict):
        raise CheckpointError(path, "is not a JSON object")
    if SEAL not in obj:
        raise CheckpointError(path, f"has no {SEAL!r} field: it was written before {path.name} carried its own "
                                    "hash, so an edit to it could not be detected; re-save it with this version "
                                    "of the workbench (train or import the run again)")
    want = sha256_bytes(canonical_json({k: v for k, v in obj.items() if k != SEAL}))
    if obj[SEAL] != want:
        raise CheckpointError(path, f"its content does not match its {SEAL} ({str(obj[SEAL])[:12]}… recorded, "
                                    f"{want[:12]}… now): the file was edited or is corrupt")
    return obj


def read_sealed_json(path: str | os.PathLike) -> dict:
    """A sealed file (meta.json, latest.json) verified; any problem is a CheckpointError."""
    try:
        return check_seal(path, read_json(path))
    except RunFileError as e:
        raise as_checkpoint_error(e) from None


def encode_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


# -- run files a checkpoint depends on -------------------------------------------------------------
def run_file_hashes(run_dir: str | os.PathLike) -> dict[str, str | None]:
    """{name: sha256 or None when absent} for RUN_FILES of a run folder, recorded at save time."""
    out: dict[str, str | None] = {}
    for name in RUN_FILES:
        path = Path(run_dir) / name
        try:
            out[name] = sha256_bytes(path.read_bytes())
        except FileNotFoundError:
            out[name] = None
        except OSError as e:
            raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    return out


def check_run_files(run_dir: str | os.PathLike, recorded: Any, guard: Path) -> None:
    """Raise CheckpointError naming the run file whose content is not what `guard` (a sealed
    meta.json or latest.json) recorded when it was written."""
    if not isinstance(recorded, dict) or set(recorded) != set(RUN_FILES):
        raise CheckpointError(guard, f"lacks the hashes of the run files {', '.join(RUN_FILES)}")
    now = run_file_hashes(run_dir)
    for name in RUN_FILES:
        if now[name] == recorded[name]:
            continue
        path = Path(run_dir) / name
        if recorded[name] is None:
            problem = f"did not exist when {guard} was written, and would change how it is read"
        elif now[name] is None:
            problem = f"is missing, but {guard} was written with it"
        else:
            problem = (f"sha256 {now[name][:12]}… does not match the {str(recorded[name])[:12]}… recorded in "
                       f"{guard}: the file was edited or is corrupt")
        raise CheckpointError(path, problem)


# -- checkpoints -------------------------------------------------------------------------------
def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, by step. Half-written ones live under temporary
    names and are never listed; a folder is complete once its meta.json exists."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_NAME.match(p.name) and (p / META).exists()]
    return sorted(found, key=step_of)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: GPT, meta: dict | None = None) -> Path:
    """Write checkpoints/step_NNNNNN/ atomically: built under a temporary name, fsynced, renamed.
    meta.json gets the step, config, weights hash and the run files' hashes, then its seal; so
    write vocab.json and data.json before the first checkpoint."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    raw = model.module if hasattr(model, "module") else model
    raw = getattr(raw, "_orig_mod", raw)
    state = {k: v.detach().to("cpu").contiguous() for k, v in raw.state_dict().items()}
    weights = st_save(state)
    full_meta = {k: v for k, v in (meta or {}).items() if k != SEAL}
    full_meta.update(step=int(step), config=raw.cfg.to_dict(), sha256=sha256_bytes(weights),
                     **{TENSOR_DIGESTS: tensor_digests(weights)},
                     time=full_meta.get("time", time.time()), run_files=run_file_hashes(run_dir))
    full_meta = seal(full_meta)
    tmp = temp_folder(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, data in ((WEIGHTS, weights), (META, encode_json(full_meta))):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # rewriting a step (a resumed run redoing it): swap, then drop the old
            old = temp_folder(final, old=True)
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
    remove_temporaries(checkpoints_dir(run_dir))


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """meta.json of a checkpoint folder, with its seal verified and its fields checked."""
    path = Path(path)
    meta = read_sealed_json(path / META)
    if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(path / META, "meta.json lacks the sha256 or config fields")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(path / META, f"its step {step!r} is not an integer")
    m = STEP_NAME.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(path / META, f"says step {step}, but lies in the folder of step {int(m.group(1))}")
    return meta


def verify_checkpoint(path: str | os.PathLike) -> tuple[dict, bytes]:
    """(meta, weight bytes) of a checkpoint folder once every file it depends on is verified:
    meta.json's seal and step, the weights' sha256, and (inside <run>/checkpoints/) the run's
    vocab.json and data.json. Parses nothing binary, so it is the cheap check the app runs."""
    path = Path(path)
    if path.name == WEIGHTS:
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(path, "checkpoint folder does not exist")
    meta = read_checkpoint_meta(path)
    if path.parent.name == CHECKPOINTS_DIR:  # the lexical run folder: a symlinked step is read as part of this run
        check_run_files(path.parent.parent, meta.get("run_files"), path / META)
    weights_path = path / WEIGHTS
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise CheckpointError(weights_path, f"cannot be read ({e.strerror or e})") from None
    digest = sha256_bytes(data)
    if digest != meta["sha256"] and (damaged := damaged_tensors(data, meta.get(TENSOR_DIGESTS))):  # name them
        raise CheckpointError(weights_path, f"tensor {', '.join(damaged[:5])} does not match its sha256 in "
                                            "meta.json: the file is corrupt, or holds another checkpoint's tensor")
    if digest != meta["sha256"]:
        raise CheckpointError(weights_path, f"sha256 {digest[:12]}… does not match meta.json "
                                            f"({str(meta['sha256'])[:12]}…): the file is truncated or corrupt")
    return meta, data


def run_integrity(run_dir: str | os.PathLike) -> dict:
    """store.integrity.compare_checkpoints over every checkpoint's verified meta.json (or its problem).
    A meta.json that lies outside the run folder (a link) is not opened: it is a bad checkpoint."""
    metas, bad, inside = {}, {}, os.path.realpath(run_dir) + os.sep
    for path in list_checkpoints(run_dir):
        try:
            if not os.path.realpath(path / META).startswith(inside):
                raise CheckpointError(path / META, "lies outside the run folder, so it is not read")
            metas[step_of(path)] = read_checkpoint_meta(path)
        except CheckpointError as e:
            bad[step_of(path)] = f"{e.path}: {e.problem}"
    return compare_checkpoints(metas, bad)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, meta) from a checkpoint folder, after verify_checkpoint."""
    path = Path(path)
    if path.name == WEIGHTS:
        path = path.parent
    meta, data = verify_checkpoint(path)
    weights_path = path / WEIGHTS
    try:
        cfg = GPTConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(path / META, f"invalid model config ({e})") from None
    try:
        state = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(weights_path, f"not a valid safetensors file ({e})") from None
    problem = cfg.misfit({k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise CheckpointError(weights_path, f"weights do not fit the config ({problem})")
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(weights_path, f"weights do not fit the config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta


# -- training state (for --resume and --fill-in) --------------------------------------------------
def save_state(run_dir: str | os.PathLike, step: int, state: dict, model_config: dict | None = None,
               keep_older: bool = True) -> Path:
    """Write state/state_NNNNNN.pt, then its sealed record state_NNNNNN.json, then point
    state/latest.json (the same record) at it: at every moment latest.json and every record name a
    complete, hash-checked file. A record holds the file's sha256, the run files' hashes and
    `model_config` (the config the state's weights belong to, which a resumed run reads from
    run.json). Older states are kept, so training can be redone from any checkpoint (--fill-in);
    with keep_older=False they are dropped once latest.json points past them."""
    root = state_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    name = state_name(step)
    record = {"file": name, "step": int(step), "sha256": sha256_bytes(data), "run_files": run_file_hashes(run_dir)}
    if model_config is not None:
        record["model"] = dict(model_config)
    sealed = encode_json(seal(record))
    write_bytes_atomic(root / name, data)
    write_bytes_atomic(root / state_record_name(step), sealed)
    write_bytes_atomic(latest_json(run_dir), sealed)
    if not keep_older:
        for p in root.iterdir():
            if p.name not in (name, state_record_name(step)) and (STATE_NAME.match(p.name)
                                                                   or STATE_RECORD_NAME.match(p.name)):
                p.unlink(missing_ok=True)
    return root / name


def drop_state(run_dir: str | os.PathLike, step: int) -> None:
    """Remove the kept state of `step` (never latest.json's): its record first, so no record ever
    names a missing file, then the file."""
    root = state_dir(run_dir)
    (root / state_record_name(step)).unlink(missing_ok=True)
    (root / state_name(step)).unlink(missing_ok=True)


def has_state(run_dir: str | os.PathLike) -> bool:
    return latest_json(run_dir).exists()


def kept_state_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps whose training state the run keeps (a record state_NNNNNN.json, or latest.json's step
    for runs written before records existed), sorted. Listed by name only: load_state verifies."""
    root = state_dir(run_dir)
    if not root.is_dir():
        return []
    steps = {int(m.group(1)) for m in map(STATE_RECORD_NAME.match, (p.name for p in root.iterdir())) if m}
    if has_state(run_dir):
        try:
            step = read_json(latest_json(run_dir)).get("step")
        except (RunFileError, AttributeError):
            step = None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            steps.add(step)
    return sorted(steps)


def state_record_path(run_dir: str | os.PathLike, step: int | None) -> Path:
    """The sealed record of the state at `step` (None: the latest). A run written before records
    existed has only latest.json, which serves for its own step."""
    if step is None:
        return latest_json(run_dir)
    path = state_dir(run_dir) / state_record_name(step)
    if not path.exists() and latest_json(run_dir).exists():
        try:
            if read_json(latest_json(run_dir)).get("step") == step:
                return latest_json(run_dir)
        except (RunFileError, AttributeError):
            pass
    return path


def read_latest(run_dir: str | os.PathLike, step: int | None = None) -> dict:
    """state/latest.json (or, for a `step`, the record state_NNNNNN.json) with its seal, fields, run
    files and recorded model config verified."""
    run_dir = Path(run_dir)
    path = state_record_path(run_dir, step)
    if step is not None and not path.exists():
        raise CheckpointError(path, f"does not exist: the run keeps no training state of step {step}")
    latest = read_sealed_json(path)
    rec_step, name = latest.get("step"), latest.get("file")
    if isinstance(rec_step, bool) or not isinstance(rec_step, int) or rec_step < 0:
        raise CheckpointError(path, f"its step {rec_step!r} is not a non-negative integer")
    if step is not None and rec_step != step:
        raise CheckpointError(path, f"says step {rec_step}, but is the record of step {step}")
    step = rec_step
    if name != state_name(step):
        raise CheckpointError(path, f"does not name a state file of its step {step} (it names {name!r})")
    if not isinstance(latest.get("sha256"), str):
        raise CheckpointError(path, "lacks the sha256 of the state file")
    check_run_files(run_dir, latest.get("run_files"), path)
    if "model" in latest:
        run_json = run_json_path(run_dir)
        try:
            run = read_record(run_dir)
        except RunFileError as e:
            raise as_checkpoint_error(e) from None
        if canonical_json(run.get("model")) != canonical_json(latest["model"]):
            raise CheckpointError(run_json, f"its model config is not the one the training state in {path} was "
                                            "saved with: run.json was edited or is corrupt")
    return latest


def load_state(run_dir: str | os.PathLike, step: int | None = None) -> dict:
    """The latest training state (or the one kept at `step`), once its record and bytes are
    verified."""
    root = state_dir(run_dir)
    latest = read_latest(run_dir, step)
    path = root / latest["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if sha256_bytes(data) != latest["sha256"]:
        raise CheckpointError(path, "sha256 does not match its record in state/: the file is truncated or corrupt")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of every kind, including refused globals
        raise CheckpointError(path, f"not a loadable training state ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "training state is not a dictionary")
    return state
