"""The thread rule: cores minus the cores busy *now* (CPU use over half a second), not minus the
1-minute load average, which still reads ~1 on an idle 2-core machine right after `make test`."""
import os

import pytest
import torch

from model import device


def test_busy_cores_reads_cpu_use_over_the_sample(monkeypatch):
    samples = iter([(100, 1000), (150, 1100)])  # half the jiffies busy over the sample
    monkeypatch.setattr(device, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(device.time, "sleep", lambda s: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 1.0, 0.5))  # a stale average must not count
    assert device.busy_cores(2) == 1.0
    samples = iter([(100, 1000), (102, 1100)])  # idle now, whatever the load average says
    monkeypatch.setattr(device, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(device, "_BUSY_AT_START", {})
    assert device.free_cores(cores=2) == 2
    assert device.free_cores(cores=2) == 2  # sampled once: no second reading (samples is exhausted)


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(device, "_cpu_times", lambda: None)
    monkeypatch.setattr(device, "_BUSY_AT_START", {})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 0.5))
    assert device.busy_cores(2) == 1.2 and device.free_cores(cores=2) == 1


def test_proc_stat_is_read_where_it_exists():
    times = device._cpu_times()
    if os.path.exists("/proc/stat"):
        busy, total = times
        assert 0 <= busy <= total
        assert 0.0 <= device.busy_cores(2, seconds=0.05) <= 2.0 + 1e-9
    else:
        assert times is None


def test_torch_threads_sets_the_count_for_a_block_and_restores_it():
    before = torch.get_num_threads()
    with device.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError):
        with device.torch_threads(None):  # None leaves the count; what the block sets is undone
            assert torch.get_num_threads() == before
            torch.set_num_threads(1)
            raise KeyError("the block failed")
    assert torch.get_num_threads() == before


def test_the_probes_cli_runs_one_thread_per_process_whatever_the_load(monkeypatch, tmp_path):
    """The CLI's default layout: one-thread workers on a free machine, one in-process thread on a
    busy one, so its results are the same bits either way (a 2-thread process rounds differently).
    The device is told by its type (a torch.device never equals "cpu"); otherwise the CLI would run
    in-process on every free core and give results that depend on the load."""
    from probes.run import cli

    seen = {}
    (tmp_path / "run.json").write_text("{}")  # a run (with no checkpoints) for the CLI's argument checks
    monkeypatch.setattr(cli, "run_probes", lambda run, **kw: seen.update(kw) or [])
    for free, jobs in ((2, 2), (1, 1), (8, 2)):
        monkeypatch.setattr(cli, "free_cores", lambda free=free: free)
        assert cli.main([str(tmp_path)]) == 0
        assert (seen["jobs"], seen["threads"]) == (jobs, 1), (free, seen)


GUEST = ("import os, sys; from model import device; "
         "device.busy_cores = lambda cores, seconds=0.5: float(cores)  # every core busy, as a sample taken while the trainer exits reads\n"
         "if sys.argv[1] == 'idle': os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
         "print(device.idle_class(), device.guest_cores(), device.cpu_cores())")


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="no scheduling policies on this platform")
def test_a_guest_under_sched_idle_takes_every_core_whatever_a_sample_reads():
    """The probes' catch-up after training: under SCHED_IDLE (the --watch guest) its one-thread
    workers get only cycles other work leaves, so it takes every core rather than trust a sample
    (taken as the trainer exits, one read a core busy and the demo's catch-up ran on one worker);
    a process of the normal policy keeps free_cores_now's answer."""
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    allowed = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"],
                             capture_output=True, timeout=60).returncode == 0
    for policy in ("idle", "normal") if allowed else ("normal",):
        out = subprocess.run([sys.executable, "-c", GUEST, policy], cwd=repo, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        idle, guest, cores = out.stdout.split()
        assert idle == str(policy == "idle"), out.stdout
        assert int(guest) == (int(cores) if policy == "idle" else 1), out.stdout


def test_the_probes_cli_watcher_widens_to_the_guest_cores(monkeypatch, tmp_path):
    """--watch on CPU with no --threads or --jobs follows as a guest whose catch-up asks guest_cores."""
    from probes.run import cli

    seen = {}
    (tmp_path / "run.json").write_text("{}")  # a run (with no checkpoints) for the CLI's argument checks
    monkeypatch.setattr(cli, "watch", lambda run, **kw: seen.update(kw) or [])
    assert cli.main([str(tmp_path), "--watch"]) == 0
    assert seen["widen"] is device.guest_cores
    assert cli.main([str(tmp_path), "--watch", "--jobs", "2"]) == 0
    assert seen["widen"] is None  # the user's own count: no guest


def test_training_takes_every_core_whatever_is_busy_when_it_starts(monkeypatch):
    """A training run keeps its thread count for life (bit-exact resume), so a sample of the
    machine at its start must not decide it: with every core read busy, a new run still takes
    every core; a --threads and a resumed run's recorded count win; DDP ranks share the cores."""
    monkeypatch.setattr(device, "busy_cores", lambda cores, seconds=0.5: float(cores))
    monkeypatch.setattr(device, "_BUSY_AT_START", {})
    monkeypatch.setattr(device, "cpu_cores", lambda: 4)
    cpu = torch.device("cpu")
    assert device.free_cores() == 1  # what the old rule gave this run, for its whole life
    assert device.settle_threads(0, None, cpu) == 4 and torch.get_num_threads() == 4
    assert device.settle_threads(0, None, cpu, sharing=2) == 2
    assert device.settle_threads(0, 3, cpu) == 3
    assert device.settle_threads(1, 3, cpu) == 1 and torch.get_num_threads() == 1
