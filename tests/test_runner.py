"""The probes runner and the summary: incremental, atomic under SIGKILL, corrupt checkpoints
skipped, --watch following a run in training, bad input refused, and emergence steps found
exactly on synthetic series."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import probes
from store.checkpoint import load_checkpoint
from store.runio import write_json_atomic
from store.runlayout import checkpoint_dir, result_path
from probes.run.cli import main
from probes.measure.ablation import head_ablation_probe
from probes.measure.compute import fit_context
from probes.measure.inputs import probe_inputs
from probes.measure.results import ablation_key, is_done, read_results
from probes.analyse.summary import summarize, write_summary

from _runs import add_checkpoint, corrupt_checkpoint
from store.runrecord import set_status

REPO = Path(__file__).resolve().parents[1]
STEPS = (0, 1, 2, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def template(fake_run) -> Path:
    """The session's fake run with STEPS (conftest.py): shared, so every test copies it."""
    return fake_run(steps=STEPS)


@pytest.fixture
def run(template, tmp_path) -> Path:
    """A fresh copy of the template run for each test."""
    return Path(shutil.copytree(template, tmp_path / "run"))


def probe_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def test_second_run_computes_nothing_and_leaves_files_untouched(run):
    calls = []
    done = probes.run_probes(run, progress=lambda d, t, s: calls.append((d, t, s)))
    assert done == list(STEPS)
    assert calls[0] == (0, 4, None) and calls[-1] == (4, 4, 4)
    results = read_results(run)
    assert sorted(results) == list(STEPS)
    assert all(set(probes.PROBES) <= set(r) for r in results.values())
    stamps = {p: p.stat().st_mtime_ns for p in (run / "probes").iterdir()}
    assert probes.run_probes(run) == []
    assert {p: p.stat().st_mtime_ns for p in (run / "probes").iterdir()} == stamps
    summary = json.loads((run / "probes" / "summary.json").read_text())
    assert summary["steps"] == list(STEPS)
    assert summary["series"]["head_ablation.clean_loss"] == [results[s]["head_ablation"]["clean_loss"] for s in STEPS]
    # --force recomputes, --steps restricts, and the numbers are reproducible
    assert probes.run_probes(run, steps=[2], force=True) == [2]
    again = read_results(run)[2]
    assert again["head_ablation"]["zero"] == results[2]["head_ablation"]["zero"]
    assert again["repetition"]["continuations"] == results[2]["repetition"]["continuations"]


def test_only_computes_the_named_probes_and_a_full_run_fills_in_the_rest(run):
    assert probes.run_probes(run, only=["memorization"], steps=[1]) == [1]
    first = read_results(run)[1]
    assert "memorization" in first and "head_ablation" not in first
    assert probes.run_probes(run, only="memorization", steps=[1]) == []
    assert probes.run_probes(run, steps=[1]) == [1]
    full = read_results(run)[1]
    assert set(probes.PROBES) <= set(full)
    assert full["memorization"] == first["memorization"]
    # --force with --only recomputes the named probes and keeps the others
    assert probes.run_probes(run, only=["induction"], steps=[1], force=True) == [1]
    assert set(probes.PROBES) <= set(read_results(run)[1])


def test_mean_and_resample_ablation_are_computed_on_demand_with_the_sweeps_numbers(run):
    """The default set measures zero ablation exactly and estimates every kind; `--only
    head_ablation_mean,head_ablation_resample` adds the exact sweeps beside it (the numbers of the
    sweep on the same held-out blocks), keeps the rest, and is not redone once there."""
    assert probes.run_probes(run, steps=[1]) == [1]
    default = read_results(run)[1]
    ha = default["head_ablation"]
    assert ha["kinds"] == ["zero"] and "mean" not in ha and "resample" not in ha
    assert set(ha["attribution"]) == {"zero", "mean", "resample"} and set(ha["attribution_agreement"]) == {"zero"}
    assert ablation_key(default, "zero") == "head_ablation" and ablation_key(default, "mean") is None
    want = ["head_ablation_mean", "head_ablation_resample"]
    assert not is_done(default, want)
    assert probes.run_probes(run, only=want, steps=[1]) == [1]
    both = read_results(run)[1]
    assert both["head_ablation"] == ha  # the default entry is kept as it was
    inputs = probe_inputs(run)
    model, _ = load_checkpoint(checkpoint_dir(run, 1))
    s = inputs.sizes
    for kind in ("mean", "resample"):
        entry = both[f"head_ablation_{kind}"]
        assert ablation_key(both, kind) == f"head_ablation_{kind}" and entry["kinds"] == [kind]
        direct = head_ablation_probe(model.eval(), fit_context(inputs.ablation_pool, model.cfg.n_ctx),
                                     block=s.n_ablation, target_se=s.ablation_target_se,
                                     max_sequences=s.n_ablation_max, kinds=(kind,), estimates=(kind,))
        assert entry[kind] == direct[kind] and entry["delta_se"] == direct["delta_se"]
        assert set(entry["attribution_agreement"]) == {kind}
    assert is_done(both, want) and probes.run_probes(run, only=want, steps=[1]) == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_corrupt_checkpoint_is_reported_and_skipped(run, tmp_path, jobs):
    corrupt_checkpoint(run, 2)
    messages = []
    done = probes.run_probes(run, log=messages.append, jobs=jobs)
    assert done == [0, 1, 4]
    assert len(messages) == 1 and "step 2" in messages[0] and "sha256" in messages[0]
    assert not result_path(run, 2).exists()
    if jobs == 2:  # worker processes compute exactly what one process does
        serial = Path(shutil.copytree(run, tmp_path / "serial"))
        shutil.rmtree(serial / "probes")
        probes.run_probes(serial, log=messages.append)
        ours, theirs = read_results(run), read_results(serial)
        for s in (0, 1, 4):
            ours[s].pop("seconds"), theirs[s].pop("seconds")
        assert ours == theirs


def test_forked_workers_start_from_this_process_and_compute_what_one_process_does(run, tmp_path, monkeypatch):
    """`fork=True` (a guest watcher's catch-up): the workers are this process forked, so they run
    what it has loaded (here a wrapper of _probe_one that only this process has, which a spawned
    worker would not see), and their results are those of one process probing alone."""
    from probes.run import runner
    marks = tmp_path / "forked"
    marks.mkdir()
    real = runner._probe_one

    def marked(run_dir, path, *args):
        (marks / f"{os.getpid()}-{path.name}").touch()
        return real(run_dir, path, *args)

    monkeypatch.setattr(runner, "_probe_one", marked)
    assert probes.run_probes(run, jobs=2, threads=1, fork=True) == list(STEPS)
    seen = sorted(p.name for p in marks.iterdir())
    assert sorted(s.split("-", 1)[1] for s in seen) == [f"step_{s:06d}" for s in STEPS]
    assert str(os.getpid()) not in {s.split("-", 1)[0] for s in seen}  # workers, not this process
    monkeypatch.setattr(runner, "_probe_one", real)
    serial = Path(shutil.copytree(run, tmp_path / "serial"))
    shutil.rmtree(serial / "probes")
    probes.run_probes(serial, threads=1)
    ours, theirs = read_results(run), read_results(serial)
    for s in STEPS:
        ours[s].pop("seconds"), theirs[s].pop("seconds")
    assert ours == theirs


def test_bad_input_exits_2_with_one_sentence(run, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nowhere")], "is not a folder"),
        ([str(tmp_path)], "no run.json"),
        ([str(run), "--only", "telepathy"], "unknown probe 'telepathy'"),
        ([str(run), "--steps", "3"], "no complete checkpoint at step 3"),
        ([str(run), "--steps", "two"], "--steps takes"),
        ([str(run), "--poll", "0", "--watch"], "--poll must be"),
        ([str(run), "--bogus"], "Unrecognized arguments"),
        ([str(run), "--threads", "0"], "threads must be a positive integer"),
        ([str(run), "--jobs", "0"], "jobs must be a positive integer"),
        ([str(run), "--device", "tpu"], "device must be auto, cpu or cuda"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    with pytest.raises(ValueError, match="unknown probe"):
        probes.run_probes(run, only=["nope"])
    assert not (run / "probes").exists()


def test_a_killed_runner_leaves_only_whole_result_files_and_the_next_run_does_the_rest(template, tmp_path):
    run = Path(shutil.copytree(template, tmp_path / "run"))
    for step in (8, 16, 32, 64, 128, 256):
        add_checkpoint(run, step)
    all_steps = sorted((*STEPS, 8, 16, 32, 64, 128, 256))
    # two worker processes (the CLI default here); the whole process group is killed, workers too
    proc = subprocess.Popen([sys.executable, "-m", "probes", str(run), "--jobs", "2"], cwd=REPO, env=probe_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((run / "probes").glob("step_*.json"))) < 2:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    names = [p.name for p in (run / "probes").iterdir()]
    written = sorted(read_results(run))
    assert 2 <= len(written) < len(all_steps), names
    for p in (run / "probes").glob("step_*.json"):
        json.loads(p.read_text())  # every visible result is whole
    assert all(n.startswith("step_") or n.startswith(".") for n in names)
    rest = probes.run_probes(run)
    assert rest == [s for s in all_steps if s not in written]
    assert sorted(read_results(run)) == all_steps
    leftovers = [p.name for p in (run / "probes").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # temp files of the killed processes are gone


def test_watch_follows_a_run_in_training_until_it_completes(template, tmp_path):
    run = Path(shutil.copytree(template, tmp_path / "run"))
    set_status(run, "training")
    proc = subprocess.Popen([sys.executable, "-m", "probes", str(run), "--watch", "--poll", "0.2"], cwd=REPO,
                            env=probe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_results(run)) < len(STEPS):
            time.sleep(0.05)
        assert proc.poll() is None  # still watching: training is not over
        add_checkpoint(run, 8)
        set_status(run, "complete")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "computed 5 checkpoint(s)" in out and "Traceback" not in err
    assert sorted(read_results(run)) == [*STEPS, 8]
    assert json.loads((run / "probes" / "summary.json").read_text())["steps"] == [*STEPS, 8]


def test_a_guest_watcher_takes_one_checkpoint_a_pass_then_the_freed_cores_once_training_ends(run, monkeypatch):
    """runner.watch with `widen` (the CLI's --watch on CPU): while the run trains each pass takes the
    oldest checkpoint still to do on the given threads (settling, i.e. lowering its priority, once
    the first has landed); once training has ended, one pass takes the rest on one-thread workers,
    one per core widen() finds free (at most 2)."""
    from store.runrecord import run_status
    from probes.run import runner
    set_status(run, "training")
    real, calls = runner.run_probes, []

    def spy(run_dir, **kwargs):
        status = run_status(run_dir)
        done = real(run_dir, **kwargs)
        calls.append((kwargs["most"], kwargs.get("jobs", 1), kwargs["threads"], kwargs.get("fork", False), status, done))
        if len(calls) == 2:  # training ends after the second pass, with one more checkpoint
            add_checkpoint(run, 8)
            set_status(run, "complete")
        return done

    monkeypatch.setattr(runner, "run_probes", spy)
    asked = []
    done = runner.watch(run, poll=0.01, widen=lambda: asked.append("now") or 3,
                        settle=lambda: asked.append(("settled after pass", len(calls))), threads=1)
    assert calls == [(1, 1, 1, False, "training", [0]), (1, 1, 1, False, "training", [1]),
                     (None, 2, 1, True, "complete", [2, 4, 8])]  # the catch-up's workers forked from the guest
    assert asked == [("settled after pass", 1), "now"] and sorted(done) == [*STEPS, 8]


def test_yield_cpu_lowers_the_session_group_only_of_a_process_that_leads_its_session():
    """The guest runs under SCHED_IDLE at a higher nice value. Autogroup scheduling shares the CPU
    between sessions whatever their nice values: a follower started in a session of its own (as
    the app's supervisor starts it) lowers its group too; a command typed in a shell leaves the
    shell's group alone."""
    # The file reads empty for a process in the machine's default group (CI's containers run
    # everything in one session, so pytest is there), yet a new session gets a group of its own
    # there too: each child reports its group before and after, and is judged against itself.
    def session_group() -> str:
        g = Path("/proc/self/autogroup")
        return (g.read_text().split() or ["none"])[-1] if g.exists() else "none"

    code = ("import os, pathlib; from probes.run.cli import yield_cpu; "
            "g = pathlib.Path('/proc/self/autogroup'); "
            "group = lambda: (g.read_text().split() or ['none'])[-1] if g.exists() else 'none'; "
            "before, mine = os.nice(0), group(); yield_cpu(7); "
            "print(os.nice(0) == min(19, before + 7), os.sched_getscheduler(0) == os.SCHED_IDLE, mine, group())")
    # Where this machine refuses the policy (some sandboxes do), the nice value is what there is.
    idle = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"],
                          capture_output=True, timeout=60).returncode == 0
    before = session_group()
    for leader in (True, False):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=probe_env(), capture_output=True, text=True,
                             start_new_session=leader, timeout=60)
        assert out.returncode == 0, out.stderr
        nice_ok, idle_now, mine, after = out.stdout.split()
        assert (nice_ok, idle_now) == ("True", str(idle)), (leader, out.stdout)
        if leader:  # its own new group, lowered (unless this kernel has no autogroup at all)
            assert after == ("none" if mine == "none" else "7"), out.stdout
        else:  # the shell's (here pytest's) group, left as it was
            assert mine == before and after == before, (before, out.stdout)
    assert session_group() == before


def test_yield_cpu_tries_again_when_the_kernel_rate_limits_the_group_write(monkeypatch):
    """Unprivileged writes to /proc/self/autogroup are taken one per 100 ms system-wide (EAGAIN
    otherwise): two followers starting together must both get their group lowered."""
    import probes.run.cli as cli
    writes, sleeps = [], []

    class Busy:
        def __init__(self, path, mode):
            assert (path, mode) == ("/proc/self/autogroup", "w")
            if len(writes) < 2:
                writes.append("busy")
                raise BlockingIOError(11, "Resource temporarily unavailable")
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def write(self, text): writes.append(text)

    monkeypatch.setattr(cli.os, "nice", lambda n: 0)
    monkeypatch.setattr(cli.os, "getsid", lambda pid: os.getpid())
    monkeypatch.setattr(cli.os, "sched_setscheduler", lambda *a: None)  # this test process stays as it is
    monkeypatch.setattr(cli.time, "sleep", sleeps.append)
    monkeypatch.setattr(cli, "open", Busy, raising=False)
    cli.yield_cpu(10)
    assert writes == ["busy", "busy", "10"] and len(sleeps) == 2 and all(t >= 0.1 for t in sleeps)


# -- summary on synthetic series -------------------------------------------------------------
SYNTH_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def synthetic_result(step: int) -> dict:
    """A result whose phenomena switch on at known steps: repetition at 16, induction at 32
    (ICL improving at the same time), 64-copy canaries extracted at 8 and 8-copy ones at 64,
    heads mattering from 2 and head-importance Gini jumping at 4."""
    i = SYNTH_STEPS.index(step)
    rep = 0.05 if step < 16 else 0.6
    ind = 0.02 + 0.001 * i if step < 32 else 0.85
    gini = 0.1 if step < 4 else 0.6
    return {
        "step": step, "tokens": step * 100,
        "head_ablation": {"clean_loss": 7.0 if step == 0 else 5.0 - 0.1 * i, "zero": [[0.1, 0.2], [0.3, 0.4]] if step >= 2 else [[0.001, 0.0], [0.0, -0.001]],
                          "gini": {"zero": gini, "mean": 0.2, "resample": 0.3},
                          "top_share": {"zero": 0.5, "mean": 0.5, "resample": 0.5}},
        "memorization": {"canaries": [
            {"copies": 1, "extracted_fraction": 0.0, "exposure": 0.1, "items": []},
            {"copies": 8, "extracted_fraction": 0.75 if step >= 64 else 0.25, "exposure": 1.0},
            {"copies": 64, "extracted_fraction": 1.0 if step >= 8 else 0.0, "exposure": 3.0}],
            "seen": {"mean_score": None, "memorized_fraction": None, "n": 0}},
        "repetition": {"greedy": {"seq_rep_4": rep}, "sampled": {"seq_rep_4": 0.01},
                       "continuations": [{"prompt": "x", "decoding": "greedy", "text": "y"}]},
        "induction": {"induction": [[ind, 0.01], [0.0, 0.02]], "in_context_copying": [[0.3, 0.1], [0.2, 0.1]],
                      "icl_score": {"value": -0.1 if step < 32 else -0.9, "early_position": 50,
                                    "late_position": 127}},
    }


def test_summary_finds_each_emergence_step_exactly_on_a_synthetic_series(tmp_path):
    run = tmp_path / "synthetic"
    for s in SYNTH_STEPS:
        write_json_atomic(result_path(run, s), synthetic_result(s))
    summary = write_summary(run)
    assert json.loads((run / "probes" / "summary.json").read_text()) == summary
    em = summary["emergence"]
    assert em["repetition"]["step"] == 16 and em["repetition"]["rise_step"] == 16
    assert em["repetition"]["present_at_init"] is False and em["repetition"]["resolved_step"] is None
    assert em["repetition"]["learning_started_step"] == 1  # loss 7.0 -> 4.9: more than 10% below
    assert em["induction"]["step"] == 32 and em["induction"]["from_step"] == 16 and em["induction"]["detected"]
    assert em["induction"]["icl_change"] == pytest.approx(-0.8)
    assert em["induction"]["best_head"] == {"layer": 0, "head": 0, "score": 0.85}
    assert em["memorization"]["step"] == 8 and em["memorization"]["copies"] == [64]
    assert em["memorization"]["by_copies"] == {"1": None, "8": 64, "64": 8}
    assert em["head_concentration"]["step"] == 4 and em["head_concentration"]["detected"]
    assert em["head_concentration"]["heads_matter_step"] == 2  # steps 0 and 1: heads change < 0.02 nats
    for name in ("repetition", "induction", "memorization", "head_concentration"):
        assert em[name]["rule"] == summary["rules"][name] and len(em[name]["rule"]) > 40
    assert summary["thresholds"]["repetition_seq_rep_4"] == 0.3
    series = summary["series"]
    assert series["repetition.greedy.seq_rep_4"] == [synthetic_result(s)["repetition"]["greedy"]["seq_rep_4"]
                                                     for s in SYNTH_STEPS]
    assert series["memorization.canaries.copies_64.exposure"] == [3.0] * len(SYNTH_STEPS)
    assert series["memorization.seen.mean_score"] == [None] * len(SYNTH_STEPS)
    assert series["induction.induction.max"][-1] == 0.85
    assert summary["heads"]["head_ablation.zero"][2] == [[0.1, 0.2], [0.3, 0.4]]
    assert series["head_ablation.zero.max"][:3] == [0.001, 0.001, 0.4]
    assert summary["tokens"] == [s * 100 for s in SYNTH_STEPS]


def test_summary_of_repetition_present_from_the_first_checkpoint():
    """A random init that echoes its input is not learned repetition: emergence counts only from
    the checkpoint where the loss has begun to fall."""
    results = {s: synthetic_result(s) for s in SYNTH_STEPS}
    for s in SYNTH_STEPS:
        results[s]["repetition"]["greedy"]["seq_rep_4"] = 0.9 if s < 8 or s in (32, 64) else 0.1
        results[s]["head_ablation"]["clean_loss"] = 7.0 if s < 16 else 5.0
    em = summarize(results)["emergence"]["repetition"]
    assert em["learning_started_step"] == 16
    assert em["step"] == 32 and em["present_at_init"] is True and em["rise_step"] == 32
    assert em["resolved_step"] == 128 and em["peak_value"] == 0.9
    for s in SYNTH_STEPS:  # never learning: no emergence, whatever the init does
        results[s]["head_ablation"]["clean_loss"] = 7.0
    assert summarize(results)["emergence"]["repetition"]["step"] is None
