"""Shared by every test module."""
from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def keep_signal_handlers(request):
    """A test that leaves SIGINT ignored in this process would make every later child process ignore
    Ctrl-C too (an ignored signal is inherited across exec, and Python then installs no handler):
    each test leaves SIGINT and SIGTERM as it found them, and one that changed them is named."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        if signal.getsignal(s) != handler:
            print(f"{request.node.nodeid} changed the {s.name} handler; restored", file=sys.stderr)
            signal.signal(s, handler)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The app, the runners and the trainer set torch's thread count for themselves (and some run
    in-process here); every test leaves the count as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """Small ops on a shared 2-core machine run far faster on one thread than on two: modules of
    many tiny forwards ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- runs shared by the whole session ---------------------------------------------------------------
# Built once per session and shared read-only: a test that changes a run (resumes it, probes it,
# edits a file) works on its own copy, `shutil.copytree(shared, tmp_path / NAME)`. Each shared run is
# hashed when built and again when the session ends, and a changed one fails the session.
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _read_only(folder: Path, request: pytest.FixtureRequest) -> Path:
    before = _digest(folder)

    def unchanged():
        assert _digest(folder) == before, (f"a test changed the shared run {folder}; a test that changes a "
                                           "run must copy it first (shutil.copytree into its tmp_path)")
    request.addfinalizer(unchanged)
    return folder


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, request) -> Path:
    """The real small run, trained once per session by train.testing.make_small_run with its
    defaults (40 steps of a 2-layer, 64-wide nano model on the stories with canaries; checkpoints at
    0, 1, 2, 4, 8, 10, 20, 30, 40; a training state at each). Its folder is named `small`."""
    from _small_run import make_small_run

    threads = torch.get_num_threads()
    try:
        run = make_small_run(tmp_path_factory.mktemp("shared") / "small")
    finally:
        torch.set_num_threads(threads)  # the trainer sets its own count: the session keeps its own
    return _read_only(run, request)


@pytest.fixture(scope="session")
def app_roots(small_run, tmp_path_factory) -> dict[str, Path]:
    """The app tests' runs folders, one per app state, built from a copy of `small_run` probed by the
    real runner (see app_fixtures.trained_roots). Not hashed (the app under test may write beside
    the runs), but a test that changes a run on purpose copies it first, as before."""
    from app_fixtures import trained_roots

    return trained_roots(small_run, tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory, request):
    """`fake_run(**options)`: the fake run `_runs.write_run(root, **options)` builds (random-init
    checkpoints, no training), built once per session for each set of options and shared read-only."""
    from _runs import write_run

    root = tmp_path_factory.mktemp("fake_runs")
    built: dict[str, Path] = {}

    def get(**options) -> Path:
        key = repr(sorted(options.items()))
        if key not in built:
            built[key] = _read_only(write_run(root / str(len(built)), **options), request)
        return built[key]
    return get


@pytest.fixture(scope="session")
def importer_sources(tmp_path_factory, request) -> dict:
    """The importer tests' sources, made once per session and shared read-only: a probe text, an HF
    Trainer output folder (checkpoint-1, -3, -6 of a GPT2LMHeadModel trained here) and a folder of
    nanoGPT checkpoint files with their state dicts (see _importer.make_sources)."""
    from _importer import make_sources

    sources = make_sources(tmp_path_factory.mktemp("importer"))
    _read_only(sources["base"], request)
    return sources
