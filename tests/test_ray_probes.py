"""Probes on Ray (probes/run/ray_runner.py, `python -m probes RUN --ray ADDRESS`): the same numbers as
the local runner at the same thread count, every result written once by the driver, whole files
after a worker or a node dies mid-task or Ctrl-C, a corrupt checkpoint skipped, --watch, --ship,
and bad input or a missing Ray refused with one sentence.

One small local cluster on 127.0.0.1 serves the module (ray.cluster_utils.Cluster: a head and one
worker node of 1 CPU each, no dashboard); the node test removes the worker node, so it runs last.
The Ctrl-C test starts `--ray local` in a child process, a private instance of its own. The kill
test's seed is drawn from the clock and printed; replay with RAY_KILL_SEED=<seed>.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import probes
import probes.run.ray_runner as ray_runner
from model.memory import MARGIN, TooLarge
from model.config import GPTConfig
from probes.run.cli import main
from probes.measure.inputs import ProbeSizes
from probes.run.ray_runner import RayCluster, gpu_fraction, tasks_per_gpu
from probes.measure.results import read_results
from probes.run.runner import probe_bytes

import _faults as faults
from _ray import check_results, no_stale_kits, run_template, session_processes, without_timing
from _runs import add_checkpoint, corrupt_checkpoint
from store.runrecord import set_status

ray = pytest.importorskip("ray")

STEPS = (0, 1, 2, 4, 8, 16)


def test_ray_client_address_without_ray_client_installed_says_how_to_get_it(template, tmp_path, capsys):
    """First in the module: it needs this process not yet connected to Ray."""
    from ray._private.utils import get_ray_client_dependency_error
    if get_ray_client_dependency_error() is None:
        pytest.skip("ray[client] is installed here, so ray:// would try to connect")
    assert not ray.is_initialized()
    run = Path(shutil.copytree(template, tmp_path / "run"))
    assert main([str(run), "--ray", "ray://127.0.0.1:10001"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ray[client]'" in err and "Traceback" not in err, err
    assert not ray.is_initialized() and not (run / "probes").exists()


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node on 127.0.0.1 (1 CPU each), this process connected as the driver."""
    from ray.cluster_utils import Cluster
    import ray._private.ray_constants as constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node and worker on the loopback address
    constants.ENABLE_RAY_CLUSTER = False                    # (this process read the variable at import)
    assert not ray.is_initialized()
    quick = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "_system_config": quick})
    worker = c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    session = c.head_node.session_name
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    deadline = time.time() + 10
    while session_processes(session) and time.time() < deadline:
        time.sleep(0.2)
    assert session_processes(session) == [], "the test cluster left processes running"
    no_stale_kits()


template = run_template(STEPS)


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> dict:
    """The local runner's results (in this process, one torch thread) and summary."""
    run = Path(shutil.copytree(template, tmp_path_factory.mktemp("reference") / "run"))
    assert probes.run_probes(run, threads=1, jobs=1) == list(STEPS)
    results = read_results(run)
    return {"results": {s: without_timing(r) for s, r in results.items()},
            "summary": json.loads((run / "probes" / "summary.json").read_text()),
            # the shortest checkpoint's probe time: a kill drawn within it lands inside a task
            "task_s": min(sum(r["seconds"].values()) for r in results.values())}


@pytest.fixture
def run(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


@pytest.fixture
def writes(monkeypatch) -> Counter:
    """How often the driver wrote each step's result."""
    counts: Counter = Counter()
    real = ray_runner.write_result

    def counting(run_dir, step, result):
        counts[step] += 1
        real(run_dir, step, result)

    monkeypatch.setattr(ray_runner, "write_result", counting)
    return counts


def test_results_equal_the_local_runners_and_each_lands_once(cluster, run, reference, writes):
    with RayCluster("auto", threads=1) as c:
        assert probes.run_probes(run, threads=1, cluster=c) == list(STEPS)
        check_results(run, reference)
        assert json.loads((run / "probes" / "summary.json").read_text()) == reference["summary"]
        assert writes == Counter({s: 1 for s in STEPS})
        assert probes.run_probes(run, threads=1, cluster=c) == []  # incremental: nothing left to do
        # one checkpoint on two task slots is split into one task per probe, merged before it is written
        assert probes.run_probes(run, steps=[4], only=["induction", "repetition"], force=True, threads=1,
                                 cluster=c) == [4]
    assert writes[4] == 2
    check_results(run, reference)
    assert ray.is_initialized()  # an existing connection is used and left up


@pytest.mark.parametrize("ship", [False, True], ids=["shared", "ship"])
def test_a_corrupt_checkpoint_is_reported_and_skipped(cluster, run, reference, writes, ship):
    corrupt_checkpoint(run, 2)
    logged, skip = [], set()
    with RayCluster("auto", ship=ship) as c:
        done = probes.run_probes(run, threads=1, cluster=c, log=logged.append, skip=skip)
    good = [s for s in STEPS if s != 2]
    assert done == good and skip == {2}
    assert len(logged) == 1 and "step 2" in logged[0] and "step_000002/model.safetensors" in logged[0]
    assert str(run) in logged[0]  # the driver's file is named, also when the bytes were shipped
    check_results(run, reference, good)
    assert writes == Counter({s: 1 for s in good})


def probe_workers(raylets: set[int]) -> list[int]:
    """Worker processes of these raylets that are running a probe task now (Ray titles a busy
    worker `ray::<function>`)."""
    busy = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            if ppid in raylets and (proc / "cmdline").read_bytes().startswith(b"ray::probe_task"):
                busy.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return busy


def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def kill_when_busy(raylets: set[int], delay: float, rng: random.Random, out: dict, kill) -> None:
    """Wait until a probe task runs on one of `raylets`, then `delay` seconds more, then `kill`
    (the busy worker chosen by rng, or the node). Records what it hit in `out`."""
    deadline = time.time() + 60
    while not probe_workers(raylets) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    busy = probe_workers(raylets)
    while not busy and "done" not in out and time.time() < deadline:  # between two tasks: the next one
        time.sleep(0.01)
        busy = probe_workers(raylets)
    if busy:
        out["pid"] = rng.choice(sorted(busy))
        out["busy_at_kill"] = (Path(f"/proc/{out['pid']}/cmdline").read_bytes().startswith(b"ray::probe_task"))
        kill(out["pid"])


def run_with_killer(run: Path, raylets: set[int], delay: float, rng: random.Random, kill) -> dict:
    out: dict = {}
    killer = threading.Thread(target=kill_when_busy, args=(raylets, delay, rng, out, kill), daemon=True)
    killer.start()
    with RayCluster("auto") as c:
        out["done"] = probes.run_probes(run, threads=1, cluster=c)
    killer.join(timeout=60)
    return out


def test_a_worker_killed_mid_task_is_retried_and_every_result_lands_once(cluster, run, reference, writes):
    c, worker = cluster
    seed = faults.draw_seed("RAY_KILL_SEED")
    with faults.replayable("RAY_KILL_SEED", seed):
        rng = random.Random(seed)
        delay = rng.uniform(0.0, 0.8) * reference["task_s"]  # a random moment inside a task, on any machine
        raylets = {raylet_pid(c.head_node), raylet_pid(worker)}
        out = run_with_killer(run, raylets, delay, rng, lambda pid: os.kill(pid, signal.SIGKILL))
        print(f"killed worker {out.get('pid')} {delay:.2f} s after the first task started")
        assert out.get("busy_at_kill"), f"no probe task was running to kill {out}"
        assert out["done"] == list(STEPS)
        check_results(run, reference)
        assert writes == Counter({s: 1 for s in STEPS})


def test_without_ray_the_cli_says_how_to_install_it(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert main([str(run), "--ray", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[ray]'" in err and "Traceback" not in err, err
    assert not (run / "probes").exists()


def test_bad_ray_input_exits_2_with_one_sentence(cluster, run, capsys):
    cases = [
        (["--ray", "tcp://host:1"], "--ray takes local, auto or ray://HOST:PORT"),
        (["--ray", "ray://host:0"], "--ray takes local, auto or ray://HOST:PORT"),
        (["--ray", "ray://:10001"], "--ray takes local, auto or ray://HOST:PORT"),
        (["--ray", "auto", "--jobs", "2"], "--jobs sizes a private instance"),
        (["--ship"], "it needs --ray ADDRESS"),
        (["--ray", "local", "--threads", "0"], "threads must be a positive integer"),
        (["--ray", "auto", "--device", "tpu"], "with --ray, --device takes auto, cpu or cuda"),
        (["--ray", "auto", "--device", "cuda"], "the Ray cluster has no GPU"),
        (["--ray", "auto", "--threads", "64"], "each task asks for --threads 64"),
    ]
    for argv, message in cases:
        assert main([str(run), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not (run / "probes").exists()
    assert ray.is_initialized()


def test_a_node_that_cannot_see_the_run_stops_it_with_one_sentence(cluster, tmp_path):
    """A task on a node without the shared filesystem answers "fatal" (the driver raises it as a
    ValueError: exit 2), instead of reporting every checkpoint as corrupt."""
    missing = tmp_path / "elsewhere" / "run"
    kind, message = ray_runner.probe_task(str(missing), str(missing / "checkpoints" / "step_000000"),
                                          ("induction",), "cpu", 1, None, None)
    assert kind == "fatal" and str(missing) in message and "--ship" in message


def test_gpu_sharing_follows_the_memory_estimate():
    nano = GPTConfig(n_layer=4, n_head=4, n_embd=128, n_ctx=128, vocab_size=4096)
    for cfg in (nano, GPTConfig.preset("small")):
        need = probe_bytes(cfg, ProbeSizes())
        for gpu in (16 * 2 ** 30, 80 * 2 ** 30):
            k = tasks_per_gpu(need, gpu)
            assert 1 <= k <= ray_runner.MAX_TASKS_PER_GPU
            assert k * need <= MARGIN * gpu  # the tasks sharing a GPU fit in it by the estimate
            assert k == ray_runner.MAX_TASKS_PER_GPU or (k + 1) * need > MARGIN * gpu  # and no more would
            assert k * gpu_fraction(k) <= 1.0 and gpu_fraction(k) > 1 / (k + 1)
    small = probe_bytes(GPTConfig.preset("small"), ProbeSizes())
    assert tasks_per_gpu(small, 80 * 2 ** 30) > 1 and tasks_per_gpu(small, int(small / MARGIN) + 1) == 1
    with pytest.raises(TooLarge, match="a GPU of the Ray cluster"):
        tasks_per_gpu(small, small)


def test_watch_follows_a_run_in_training(cluster, template, tmp_path, reference):
    run = Path(shutil.copytree(template, tmp_path / "run"))
    shutil.rmtree(run / "checkpoints" / "step_000016")
    set_status(run, "training")
    out: dict = {}
    with RayCluster("auto") as c:
        watcher = threading.Thread(target=lambda: out.update(done=probes.watch(run, poll=0.2, threads=1, cluster=c)))
        watcher.start()
        deadline = time.time() + 60
        while len(read_results(run)) < len(STEPS) - 1 and time.time() < deadline:
            time.sleep(0.05)
        assert watcher.is_alive()  # still watching: training is not over
        add_checkpoint(run, 16)
        set_status(run, "complete")
        watcher.join(timeout=60)
    assert sorted(out["done"]) == list(STEPS)
    check_results(run, reference)


def test_ctrl_c_on_the_driver_leaves_whole_files_and_the_next_run_resumes(template, tmp_path, reference):
    """`--ray local` in a child process (its own private instance); SIGINT to its process group as a
    terminal's Ctrl-C sends it, once the first result is written."""
    run = Path(shutil.copytree(template, tmp_path / "run"))
    p = faults.launch(tmp_path, "none", 0, "probes", [str(run), "--ray", "local", "--jobs", "1"])
    deadline = time.time() + 120
    while not list((run / "probes").glob("step_*.json")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    err = faults.finish(p, timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.count("probes: interrupted") == 1, err[-2000:]
    assert err.rstrip().endswith("probes: interrupted; results written so far are complete."), err[-2000:]
    deadline = time.time() + 20
    while faults.stragglers(p.token) and time.time() < deadline:
        time.sleep(0.2)
    assert faults.stragglers(p.token) == [], "the private Ray instance outlived its driver"
    have = sorted(read_results(run))
    assert 1 <= len(have) < len(STEPS) or have == list(STEPS)
    for s in have:
        assert without_timing(read_results(run)[s]) == reference["results"][s]
    assert [p.name for p in (run / "probes").iterdir() if p.name.startswith(".")] == []
    assert probes.run_probes(run, threads=1, jobs=1) == [s for s in STEPS if s not in have]
    check_results(run, reference)


def test_a_node_that_disappears_mid_task_is_retried_elsewhere(cluster, run, reference, writes):
    """Last in the module: the worker node is removed for good (the head's CPU finishes the run)."""
    c, worker = cluster
    rng = random.Random(0)
    out = run_with_killer(run, {raylet_pid(worker)}, 0.2 * reference["task_s"], rng,
                          lambda pid: c.remove_node(worker, allow_graceful=False))
    assert out.get("busy_at_kill"), f"no probe task was running on the removed node {out}"
    assert out["done"] == list(STEPS)
    check_results(run, reference)
    assert writes == Counter({s: 1 for s in STEPS})
