"""Training's thread count, chosen once for a run's whole life (model.device.settle_threads): a
nano run started while another process keeps a core busy for its first seconds, against the same
run started alone, measured by the tokens/s of the steps after that work has ended. The old rule
(the cores not busy at the start, model.device.free_cores) is run beside it as `--threads` of what
it would have read, so the figure says what the rule change gains."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.device import cpu_cores
from store.runlayout import metrics_jsonl
from store.runrecord import read_record

from .common import Goal, Report

STEPS = 240
ROUNDS = 1  # each round: the three runs, about a minute each on 2 cores
BUSY_S = 10.0
TRAIN = ["--preset", "nano", "--data", "stories", "--corpus-mb", "0.3", "--steps", str(STEPS), "--eval-every", "1000",
         "--ckpt-every", "1000", "--sample-tokens", "0", "--canary-copies", "none", "--keep-states", "latest"]


def busy(seconds: float) -> subprocess.Popen:
    """One core kept busy for `seconds` by another process (a plain Python loop)."""
    return subprocess.Popen([sys.executable, "-c", f"import time\nt = time.time() + {seconds}\nwhile time.time() < t: pass"])


def late_speed(out: Path) -> float:
    """Median tokens/s of the run's second half (long after the busy work has ended)."""
    rows = [json.loads(line) for line in metrics_jsonl(out).read_text().splitlines() if line.strip()]
    speeds = [r["tok_per_s"] for r in rows if "tok_per_s" in r and r["step"] > STEPS // 2]
    return statistics.median(speeds)


def train_run(out: Path, extra: list[str], busy_first: bool) -> tuple[float, int]:
    """(late tokens/s, threads recorded) of one run, with a busy neighbour for its first BUSY_S."""
    neighbour = busy(BUSY_S) if busy_first else None
    if neighbour is not None:
        time.sleep(1.0)  # the neighbour is running when the run starts, as in the case
    subprocess.run([sys.executable, "-m", "train", *TRAIN, "--out", str(out), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if neighbour is not None:
        neighbour.wait()
    record = read_record(out)
    return late_speed(out), int(record.get("cpu_threads") or 0)


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results: dict[str, list[tuple[float, int]]] = {"alone": [], "busy": [], "old": []}
        for i in range(ROUNDS):  # interleaved, so a drift of the machine falls on all three alike
            results["alone"].append(train_run(root / f"alone{i}", [], False))
            results["busy"].append(train_run(root / f"busy{i}", [], True))
            old = max(1, cpu_cores() - 1)  # what free_cores read with one core busy
            results["old"].append(train_run(root / f"old{i}", ["--threads", str(old)], True))
    speed = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    threads = {k: v[0][1] for k, v in results.items()}
    report.add(Goal(
        "training tokens/s after other work kept a core busy for its first 10 s, vs the same run alone (nano)",
        speed["busy"] / speed["alone"], 0.9,
        detail=f"every core ({threads['busy']} threads): {speed['busy']:,.0f} tok/s against {speed['alone']:,.0f} alone "
               f"({threads['alone']} threads); the old rule's count ({threads['old']} thread(s), the cores not busy at "
               f"the start): {speed['old']:,.0f} tok/s = {speed['old'] / speed['alone']:.2f}x; second half of "
               f"{STEPS} steps, median of {ROUNDS} interleaved round(s)"))
