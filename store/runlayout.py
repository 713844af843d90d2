"""Where everything of a run lives: the one module that names a run's files and folders.

    runs/<name>/
      run.json                 what the run is: model config, training recipe, data source, status
      vocab.json               compact vocabulary only: the GPT-2 id of each model id
      metrics.jsonl            one JSON object per logged step (loss, lr, grad_norm, val_loss, ...)
      samples.jsonl            generations from fixed prompts at every checkpoint
      data.json                the corpus manifest (sizes, chunk length, canaries, seed)
      data/train.bin, val.bin  the tokenized splits (model ids, uint16 or uint32)
      checkpoints/step_000128/ model.safetensors + meta.json
      state/                   state_000128.pt + state_000128.json (its sealed record) at every
                               checkpoint, and latest.json, for --resume and --fill-in
      probes/step_000128.json  every probe result for that checkpoint
      probes/summary.json      the series across checkpoints and when each phenomenon emerges
      probes/prompt/           one prompt through the run (probes.prompt): step_000128-<key>.json per
                               checkpoint, prompt and options, keyed by the checkpoint's weight digest
    <runs>/.cache/tokens/<hash>/   tokenized corpora shared by runs ($WORKBENCH_CACHE/tokens/ if set)

Every other module asks this one for a name or a path; what is inside each file is owned by the
module that writes it (store.checkpoint: checkpoints and state; train: run.json, metrics, samples,
data; probes: results and summary).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

RUN_JSON = "run.json"
VOCAB_JSON = "vocab.json"
METRICS_JSONL = "metrics.jsonl"
SAMPLES_JSONL = "samples.jsonl"
DATA_JSON = "data.json"
DATA_DIR = "data"
SPLITS = ("train", "val")
CHECKPOINTS_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
META = "meta.json"
STATE_DIR = "state"
LATEST = "latest.json"
PROBES_DIR = "probes"
SUMMARY_JSON = "summary.json"
PROMPT_DIR = "prompt"
CACHE_DIR = ".cache"
CACHE_ENV = "WORKBENCH_CACHE"

# run files whose content changes how a checkpoint is read (their hashes are sealed into meta.json)
RUN_FILES = (VOCAB_JSON, DATA_JSON)

STEP_NAME = re.compile(r"^step_(\d{6,})$")
RESULT_NAME = re.compile(r"^step_(\d{6,})\.json$")
STATE_NAME = re.compile(r"^state_(\d{6,})\.pt$")
STATE_RECORD_NAME = re.compile(r"^state_(\d{6,})\.json$")

# every entry of a run folder the app may read (it refuses a run whose entries leave the runs folder)
RUN_ENTRIES = (RUN_JSON, VOCAB_JSON, METRICS_JSONL, SAMPLES_JSONL, DATA_JSON, DATA_DIR,
               *(f"{DATA_DIR}/{s}.bin" for s in SPLITS), CHECKPOINTS_DIR, PROBES_DIR, f"{PROBES_DIR}/{SUMMARY_JSON}")


def step_name(step: int) -> str:
    """step_000128: six digits at least, so folder listings sort by step."""
    return f"step_{int(step):06d}"


def step_of(path: str | os.PathLike) -> int:
    """The step of a checkpoint folder named step_NNNNNN (ValueError for any other name)."""
    m = STEP_NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint folder named step_NNNNNN.")
    return int(m.group(1))


def run_json(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_JSON


def vocab_json(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / VOCAB_JSON


def metrics_jsonl(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS_JSONL


def samples_jsonl(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SAMPLES_JSONL


def data_json(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / DATA_JSON


def data_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / DATA_DIR


def split_file(folder: str | os.PathLike, split: str) -> Path:
    """data/<split>.bin of a run folder (or of a token-cache folder, which has the same layout)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return Path(folder) / DATA_DIR / f"{split}.bin"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_dir(run_dir) / step_name(step)


def state_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_DIR


def state_name(step: int) -> str:
    return f"state_{int(step):06d}.pt"


def state_record_name(step: int) -> str:
    """state_000128.json: the sealed record (hash, run files, model config) of state_000128.pt."""
    return f"state_{int(step):06d}.json"


def latest_json(run_dir: str | os.PathLike) -> Path:
    return state_dir(run_dir) / LATEST


def probes_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / PROBES_DIR


def result_path(run_dir: str | os.PathLike, step: int) -> Path:
    """probes/step_NNNNNN.json: every probe result of one checkpoint."""
    return probes_dir(run_dir) / f"{step_name(step)}.json"


def result_step(path: str | os.PathLike) -> int | None:
    """The step of a result file's name, None for any other file (summary.json, temporaries)."""
    m = RESULT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def summary_path(run_dir: str | os.PathLike) -> Path:
    return probes_dir(run_dir) / SUMMARY_JSON


def prompt_cache_path(run_dir: str | os.PathLike, step: int, key: str) -> Path:
    """probes/prompt/step_000128-<key>.json: one checkpoint's entry of a prompt followed through the
    run (probes.prompt), `key` naming the prompt, the options and the checkpoint's weight digest. Not
    a result file (result_step ignores it): a cache any process may fill, and delete."""
    return probes_dir(run_dir) / PROMPT_DIR / f"{step_name(step)}-{key}.json"


def token_cache_root(runs_root: str | os.PathLike) -> Path:
    """Where tokenized corpora are cached: $WORKBENCH_CACHE/tokens, else <runs>/.cache/tokens beside
    the run folders (so runs on the same corpus and vocabulary tokenize it once)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) / "tokens" if env else Path(runs_root) / CACHE_DIR / "tokens"


LAUNCH_DIR = ".launch"


def launch_record(run_dir: str | os.PathLike) -> Path:
    """<runs>/.launch/NAME.json: the supervisor working on run NAME in the background (app/launch.py),
    beside the run folder rather than in it, because training refuses a fresh --out that holds files."""
    run_dir = Path(run_dir)
    return run_dir.parent / LAUNCH_DIR / f"{run_dir.name}.json"


def launch_log(run_dir: str | os.PathLike) -> Path:
    """<runs>/.launch/NAME.log: what the background training and probes of run NAME printed."""
    run_dir = Path(run_dir)
    return run_dir.parent / LAUNCH_DIR / f"{run_dir.name}.log"
