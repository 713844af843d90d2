"""Data sources: the built-in stories, a text file or folder, or TinyStories. Each becomes a list
of training documents, a list of held-out documents and the canaries planted in training (the
built-in stories and text:PATH; train.stories makes and plants them, the same way for both). Documents are split here, so the token pipeline never needs to know where text came from.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.tokenizer import EOT

from .args import BadInput, TrainArgs
from .stories import build_stories, make_canaries, plant


@dataclass
class Corpus:
    source: str
    train: list[str]
    val: list[str]
    canaries: list[dict] = field(default_factory=list)


def load_corpus(args: TrainArgs) -> Corpus:
    """The documents of `args.data`, the held-out ones from `args.val_data` when it is given. Bad
    input (missing file, empty corpus, offline TinyStories) raises BadInput with one sentence."""
    if args.data == "stories":
        corpus = stories_corpus(args)
    elif args.data == "tinystories":
        corpus = tinystories_corpus(args)
    elif args.data.startswith("text:"):
        corpus = text_corpus(args.data[5:], args.seed, args.val_fraction, args.canary_counts, args.canaries_per_count,
                             max_docs=args.max_docs, held_out=bool(args.val_data))
    else:
        raise BadInput(f"unknown data source {args.data!r}; use stories, tinystories or text:PATH.")
    if args.val_data:
        corpus.val = read_documents(args.val_data[5:])
    return corpus


def check_source(args: TrainArgs) -> None:
    """Cheap checks every DDP rank can make before any work: a missing path, above all, and a
    held-out file that is the training text itself (its loss would measure recall, not held-out
    loss)."""
    train_files = text_files(args.data[5:]) if args.data.startswith("text:") else []
    if not args.val_data:
        return
    val_files = text_files(args.val_data[5:], "held-out data")
    for v in val_files:
        if v.stat().st_size == 0:
            raise BadInput(f"the held-out file {v} is empty.")
        same = [t for t in train_files if t.resolve() == v.resolve() or file_digest(t) == file_digest(v)]
        if same:
            raise BadInput(f"--val-data {v} is the training text {same[0]} itself; hold out text the model does "
                           "not train on.")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (data.json records the held-out file's)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise BadInput(f"{path} cannot be read ({e.strerror or e}).") from None
    return h.hexdigest()


def held_out_record(val_data: str) -> dict | None:
    """What data.json says of --val-data: the path and each file's sha256, None without one."""
    if not val_data:
        return None
    return {"source": val_data, "files": [{"path": str(f), "sha256": file_digest(f), "bytes": f.stat().st_size}
                                          for f in text_files(val_data[5:])]}


def stories_corpus(args: TrainArgs) -> Corpus:
    train_chars = int(args.corpus_mb * 1_000_000)
    val_chars = max(20_000, int(train_chars * args.val_fraction))
    c = build_stories(args.seed, train_chars, val_chars, args.canary_counts, args.canaries_per_count, args.copy_weight,
                      args.burstiness, args.story_episodes)
    return Corpus("stories", c.train, c.val, c.canaries)


# -- text:PATH -----------------------------------------------------------------------------
def text_files(path: str, what: str = "data") -> list[Path]:
    """The .txt files of a file or folder path (`what` names it in the refusal: data, held-out data)."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{what} path {path} does not exist.")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*.txt") if f.is_file())
    if not files:
        raise BadInput(f"{what} folder {path} holds no .txt files.")
    return files


def split_documents(text: str) -> list[str]:
    """Stories separated by <|endoftext|> (the TinyStories file format) or else by blank lines."""
    parts = text.split(EOT) if EOT in text else re.split(r"\n[ \t\r\f\v]*\n", text)
    return [d.strip() for d in parts if d.strip()]


def split_held_out(docs: list[str], seed: int, fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded random `fraction` of the documents (at least one) is held out;
    training keeps the file order."""
    n_val = max(1, int(round(len(docs) * fraction)))
    held = set(np.random.default_rng([int(seed), 31337]).choice(len(docs), size=n_val, replace=False).tolist())
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def read_documents(path: str) -> list[str]:
    """The documents of a text file or folder (split_documents), BadInput when there are none."""
    docs: list[str] = []
    for f in text_files(path):
        try:
            docs += split_documents(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise BadInput(f"{f} is not UTF-8 text.") from None
        except OSError as e:
            raise BadInput(f"{f} cannot be read ({e.strerror or e}).") from None
    if not docs:
        raise BadInput(f"the corpus at {path} is empty.")
    return docs


def text_corpus(path: str, seed: int, fraction: float, copies: tuple[int, ...] = (), per_count: int = 4,
                max_docs: int = 0, held_out: bool = False) -> Corpus:
    """The documents of a text file or folder (its first `max_docs` when that is set), a seeded
    held-out share (none when `held_out`: the held-out text comes from a file of its own), and the
    canaries of `copies` (per_count for each count; none by default) planted among the training
    documents at seeded places, each copy its own document, after the split, so none is held out."""
    docs = read_documents(path)
    if max_docs:
        docs = docs[:max_docs]
    if held_out:
        train, val = docs, []
    elif len(docs) < 2:
        raise BadInput(f"the corpus at {path} holds a single document; a held-out split needs at least two "
                       "(separate stories with blank lines or <|endoftext|>).")
    else:
        train, val = split_held_out(docs, seed, fraction)
    canaries = make_canaries(seed, tuple(copies), per_count) if copies else []
    return Corpus(f"text:{path}", plant(train, canaries, seed) if canaries else train, val, canaries)


# -- tinystories -----------------------------------------------------------------------------
TINYSTORIES = "roneneldan/TinyStories"
OFFLINE = ("TinyStories is neither cached nor reachable (no network); download TinyStories-train.txt "
           "elsewhere and pass --data text:PATH instead.")


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def tinystories_cached() -> bool:
    """Whether the hub or datasets cache holds any copy of TinyStories (checked without network)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    ds = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    return (hub / "datasets--roneneldan--TinyStories").is_dir() or any(ds.glob("roneneldan___tiny_stories*"))


def go_offline() -> None:
    """Make huggingface_hub and datasets use their caches only, even if already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import sys
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True


def tinystories_corpus(args: TrainArgs) -> Corpus:
    """TinyStories through `datasets`: from its cache when there, else the hub if reachable; never
    hangs offline. Takes the first --corpus-mb of training text and a matching share of validation."""
    if not hub_reachable():
        if not tinystories_cached():
            raise BadInput(OFFLINE)
        go_offline()
    try:
        import datasets
    except ImportError:
        raise BadInput("tinystories needs the `datasets` package; pip install datasets, or pass --data text:PATH.") from None
    try:
        ds = datasets.load_dataset(TINYSTORIES)
    except Exception:
        raise BadInput(OFFLINE) from None
    limit = int(args.corpus_mb * 1_000_000)
    train = take_chars((r["text"] for r in ds["train"]), limit)
    val = take_chars((r["text"] for r in ds["validation"]), max(20_000, int(limit * args.val_fraction)))
    if not train or not val:
        raise BadInput("the TinyStories dataset came back empty.")
    return Corpus("tinystories", train, val)


def take_chars(texts, limit: int) -> list[str]:
    out, total = [], 0
    for t in texts:
        t = t.strip()
        if t:
            out.append(t)
            total += len(t)
        if total >= limit:
            break
    return out
