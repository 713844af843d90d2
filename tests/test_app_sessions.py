"""The app under concurrent sessions (Streamlit runs each browser session in a thread of one
process and shares the loaded checkpoints among them):

- the shared model is never hooked: an ablating generation in one thread leaves another thread's
  clean generation, loss and attention pattern exactly as when computed alone;
- N AppTest sessions in threads drive every page, with interactive ablation of different heads and
  kinds beside clean views of the same checkpoint: no exception, every number equal to the same
  computation run alone, page times reported (median, 95th percentile) for N = 1, 4 (and 8 under
  `make stress`);
- "Compute probe results" runs once per run whichever session asks; a second session sees the
  progress, not a second computation.
"""
from __future__ import annotations

import shutil
import statistics
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from unittest.mock import patch

import pytest
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

import probes
from app import cache, jobs
from app.analysis import attention_patterns, greedy_continuation
from app.runfolder import run_files
from store.checkpoint import checkpoint_dir, load_checkpoint
from store.vocab import load_tokenizer
from probes.measure.ablation import generation_hooks

# an exception in any session's script thread fails the test, not just a warning
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
PAGES = ["runs", "heads", "attention", "memorization", "repetition", "induction", "compare"]
KINDS = ["zero", "mean", "resample"]


def solo_model(run: Path, step: int):
    return load_checkpoint(checkpoint_dir(run, step))[0]  # a model of its own, as if nobody else ran


def solo_generation(run: Path, step: int, heads, kind: str, prompt: str, n: int = 48) -> str:
    model, tok = solo_model(run, step), load_tokenizer(run)
    hooks = generation_hooks(model, heads, kind, probes.heldout_tokens(run, n=16)) if heads else []
    return tok.decode(greedy_continuation(model, tok, prompt, n, hooks)[1])


def solo_loss(run: Path, step: int, heads, kind: str) -> float:
    return float(probes.ablate(solo_model(run, step), probes.heldout_tokens(run, n=16), heads, kind)["loss"])


# -- the shared model is never hooked -----------------------------------------------------------
def test_an_ablating_thread_never_changes_another_threads_results(app_roots):
    """The measurement of the issue: one thread generates with every layer-0 head ablated while
    another computes clean generations, losses and patterns on the same loaded checkpoint."""
    run_dir = app_roots["computed"] / "small"
    run = run_files(app_roots["computed"], "small")
    step = max(run.checkpoint_steps)
    prompts = ["Once upon a time", "Tom and Mia went to the park", "The dog ran", "One day, a little girl"]
    heads = [(0, h) for h in range(4)]
    want = {p: solo_generation(run_dir, step, [], "zero", p, 24) for p in prompts}
    want_loss = solo_loss(run_dir, step, [], "zero")
    tok = load_tokenizer(run_dir)
    ids = tok.encode(prompts[1])
    want_pattern = attention_patterns(solo_model(run_dir, step), ids)[1]
    ablated = solo_generation(run_dir, step, heads, "zero", prompts[0], 24)
    assert ablated != want[prompts[0]], "the ablation must change the generation, or this test proves nothing"

    key = cache.checkpoint_key(run, step)
    stop, errors = threading.Event(), []

    def ablate_forever() -> None:
        i = 0
        while not stop.is_set():
            try:  # the uncached functions the cached page calls wrap: every call really computes
                cache._generation.__wrapped__(str(run_dir), step, key, tuple(heads), KINDS[i % 3], prompts[0], 24)
                cache._ablation.__wrapped__(str(run_dir), step, key, tuple(heads), KINDS[i % 3], 16)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            i += 1

    thread = threading.Thread(target=ablate_forever)
    thread.start()
    try:
        wrong = 0
        for i in range(10):
            p = prompts[i % len(prompts)]
            got = cache._generation.__wrapped__(str(run_dir), step, key, (), "zero", p, 24)["text"]
            loss = cache._ablation.__wrapped__(str(run_dir), step, key, (), "zero", 16)["loss"]
            pattern = cache._pattern.__wrapped__(str(run_dir), key, tuple(ids))[1]
            wrong += (got != want[p]) + (abs(loss - want_loss) > 1e-6) + (pattern != want_pattern)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert wrong == 0, f"{wrong} of 30 clean results differed from the same computation run alone"


# -- N sessions at once --------------------------------------------------------------------------
def heads_for(i: int) -> list[str]:
    return [f"L{i % 2}H{i % 4}"] + ([f"L{(i + 1) % 2}H{(i + 2) % 4}"] if i % 2 else [])


def session(root: Path, i: int, times: list[float], failures: list[str], seen: dict) -> None:
    """One user: every page, then interactive ablation of its own heads and kind on the Heads page
    (odd sessions) or clean views only (even sessions)."""
    try:
        at = AppTest.from_file(APP, default_timeout=300)
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        for page in PAGES[1:]:
            t = time.perf_counter()
            at.switch_page(f"views/{page}.py").run()
            times.append(time.perf_counter() - t)
            if at.exception or at.error:
                failures.append(f"session {i} {page}: {[e.value for e in (*at.exception, *at.error)]}")
        at.switch_page("views/heads.py").run()
        if at.exception or at.error:
            failures.append(f"session {i} heads: {[e.value for e in (*at.exception, *at.error)]}")
            return
        if not [w for w in at.text_input if w.key == "ablate_prompt"]:
            failures.append(f"session {i}: the Heads page drew no interactive ablation: "
                            f"{[str(e.value)[:200] for e in (*at.info, *at.warning, *at.markdown)]}")
            return
        labels, kind = (heads_for(i), KINDS[i % 3]) if i % 2 else ([], "zero")
        prompt = f"Tom and Mia went to the {['park', 'sea', 'shop', 'farm'][i % 4]}"
        at.text_input(key="ablate_prompt").set_value(prompt)
        at.radio(key="interactive_kind").set_value(kind)
        t = time.perf_counter()
        at.multiselect(key="ablate_heads").set_value(labels).run()
        times.append(time.perf_counter() - t)
        if at.exception or at.error:
            failures.append(f"session {i} ablation: {[e.value for e in (*at.exception, *at.error)]}")
        loss = [m for m in at.metric if m.label == "Loss with ablation"][0].value
        texts = [m.value for m in at.markdown if "font-family:monospace" in m.value]
        seen[i] = {"labels": labels, "kind": kind, "prompt": prompt, "loss": loss, "texts": texts,
                   "step": at.select_slider(key="step").value}
    except Exception:  # noqa: BLE001 - collected, the test fails on it
        failures.append(f"session {i}: {traceback.format_exc()}")


@contextmanager
def one_server() -> Iterator[None]:
    """What a real server has and overlapping AppTest runs do not: process-wide state that lasts.

    AppTest switches the global option global.appTest on for each run and back off after it, and
    puts a mock Runtime into the class-level singleton for each run and clears it after. With the
    runs of several sessions overlapping, one session's end pulls both from under another's feet
    (widgets miss their test metadata; "Runtime hasn't been created!"). A `streamlit run` server
    has one Runtime for all its sessions: so the option stays on for the whole batch, and the
    first mock Runtime serves every session until the batch ends."""
    first: list = []
    compiling = threading.Lock()
    real_bytecode = ScriptCache.get_bytecode

    def get_bytecode(self, script_path):
        # A server has one ScriptCache, whose lock makes every session compile a page in turn; each
        # AppTest has its own, so their compiles overlap, and CPython 3.11's AST constructor is not
        # safe across threads ("AST constructor recursion depth mismatch"). One lock, as a server.
        with compiling:
            return real_bytecode(self, script_path)

    def instance(cls):
        if not first and cls._instance is not None:
            first.append(cls._instance)
        if first:
            return first[0]
        raise RuntimeError("Runtime hasn't been created!")

    with patch_config_options({"global.appTest": True}), \
            patch.object(Runtime, "instance", classmethod(instance)), \
            patch.object(Runtime, "exists", classmethod(lambda cls: bool(first) or cls._instance is not None)), \
            patch.object(ScriptCache, "get_bytecode", get_bytecode):
        yield


def run_sessions(root: Path, n: int) -> tuple[list[float], list[str], dict]:
    """n sessions at once, as n browser tabs on one server (see one_server)."""
    times: list[float] = []
    failures: list[str] = []
    seen: dict = {}
    threads = [threading.Thread(target=session, args=(root, i, times, failures, seen)) for i in range(n)]
    with one_server():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return times, failures, seen


def check_against_solo(run_dir: Path, seen: dict) -> None:
    from app.views.heads import parse_label
    from app.ui import text_pieces, ngram_mask
    from app.plot_data import highlight_html
    for i, s in seen.items():
        heads = [parse_label(h) for h in s["labels"]]
        step = int(s["step"])
        if heads:
            assert s["loss"] == f"{solo_loss(run_dir, step, heads, s['kind']):.4f}", f"session {i}"
        for labels in ([], heads) if heads else ([],):
            text = solo_generation(run_dir, step, labels, s["kind"], s["prompt"])
            ids, pieces = text_pieces(text)
            body = highlight_html(pieces, ngram_mask(ids, 4))
            assert any(body in t for t in s["texts"]), f"session {i}: generation with {labels} differs from solo"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load_test(app_roots, monkeypatch, sizes) -> None:
    root = app_roots["computed"]
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    report = []
    for n in sizes:
        times, failures, seen = run_sessions(root, n)
        assert not failures, "\n".join(failures[:5])
        assert len(seen) == n
        check_against_solo(root / "small", seen)
        report.append(f"N={n}: {len(times)} page runs, median {statistics.median(times):.2f} s, "
                      f"p95 {percentile(times, 0.95):.2f} s")
    print("\n" + "\n".join(report))


def test_concurrent_sessions_short(app_roots, monkeypatch):
    load_test(app_roots, monkeypatch, (1, 4))


@pytest.mark.stress
def test_concurrent_sessions_long(app_roots, monkeypatch):
    load_test(app_roots, monkeypatch, (1, 4, 8))


# -- heavy work once per run ----------------------------------------------------------------------
def test_probe_computation_runs_once_whichever_session_asks(app_roots, monkeypatch, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(app_roots["computed"], root)
    run = root / "small"
    original = probes.read_results(run)
    gone = sorted(original)[-3:]
    for step in gone:
        (run / "probes" / f"step_{step:06d}.json").unlink()
    calls, real = [], probes.run_probes
    release = threading.Event()

    def counted(*args, **kwargs):
        calls.append(args)
        release.wait(60)  # hold the computation open while the second session looks
        return real(*args, **kwargs)

    monkeypatch.setattr(probes, "run_probes", counted)
    monkeypatch.setenv("WORKBENCH_RUNS", str(root))
    first = AppTest.from_file(APP, default_timeout=120)
    first.run()
    first.switch_page("views/heads.py").run()
    first.button(key="compute-heads").click().run()
    second = AppTest.from_file(APP, default_timeout=120)
    second.run()
    second.switch_page("views/induction.py").run()
    info = "\n".join(str(e.value) for e in second.info)
    assert "being computed" in info, info
    assert not [b for b in second.button if b.label == "Compute probe results"]
    assert jobs.start_probes(run, gone) is jobs.running(run)  # a third ask joins the same job
    release.set()
    assert jobs.running(run).wait(timeout=120)
    assert len(calls) == 1
    assert sorted(probes.read_results(run)) == sorted(original)
    second.run()
    assert not second.exception and not second.error
    assert not [e for e in second.info if "being computed" in str(e.value)]
