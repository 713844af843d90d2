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
    from probes import cli

    seen = {}
    monkeypatch.setattr(cli, "run_probes", lambda run, **kw: seen.update(kw) or [])
    for free, jobs in ((2, 2), (1, 1), (8, 2)):
        monkeypatch.setattr(cli, "free_cores", lambda free=free: free)
        assert cli.main([str(tmp_path)]) == 0
        assert (seen["jobs"], seen["threads"]) == (jobs, 1), (free, seen)
