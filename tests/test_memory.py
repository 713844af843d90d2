"""Memory estimates (model.memory) and the refusals built on them: an absurd but valid size is
refused at once, with one sentence naming the estimate and what the machine has, by training,
the probes runner, generation and the app, before anything is allocated or loaded."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import store.generate as generate_cli
import probes.run.cli as probes_cli
import probes.run.runner as probes_runner
import train.cli as train_cli
from model import memory
from model.config import GPTConfig
from model.gpt import GPT
from store.runlayout import checkpoint_dir
from model.memory import (TRAIN_OVERHEAD, TooLarge, check_fits, format_bytes, forward_bytes, generate_bytes,
                          kv_cache_bytes, model_bytes, param_count, train_bytes)
from probes.measure.inputs import ProbeSizes
from train.args import BadInput, TrainArgs


ROOT = Path(__file__).resolve().parents[1]
GiB = 2 ** 30


def one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].rstrip().endswith("."), lines[0]
    return lines[0]


def assert_names_estimate_and_available(line: str) -> None:
    assert "needs about" in line and "(estimate)" in line and "available" in line, line


# -- the formulas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=61),
    dict(n_layer=3, n_head=4, n_embd=48, n_ctx=20, vocab_size=100, attention="gated"),
    dict(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=37, attention="linear", bias=False),
    dict(n_layer=2, n_head=1, n_embd=8, n_ctx=5, vocab_size=11, tie_embeddings=False),
])
def test_param_count_is_the_models_exact_count(overrides):
    cfg = GPTConfig(**overrides)
    assert param_count(cfg) == sum(p.numel() for p in GPT(cfg).parameters())
    assert model_bytes(cfg) == 4 * param_count(cfg)


def test_gpt2_small_parameter_count():
    assert param_count(GPTConfig()) == 124_439_808  # the published figure, tied unembedding counted once


def test_train_and_forward_bytes_by_hand():
    # L=1, C=2, T=3, V=5, H=1: embeddings 5*2 + 3*2 = 16; block: LayerNorms 2*4, qkv 3*4+6, proj 4+2,
    # MLP 16+8 + 16+2 -> 74; final LayerNorm 4; total 94 parameters.
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=2, n_ctx=3, vocab_size=5)
    assert param_count(cfg) == 94
    # 4 bytes * (4 * 94 states + B*P*(24*L*C + 4*V)) with B=2, P=3: 4 * (376 + 6 * 68) = 3136.
    assert train_bytes(cfg, 2) == 3136 + TRAIN_OVERHEAD
    # explicit attention adds 3 copies of the [B,H,P,P] scores per layer: 4 * 3 * 2*1*3*3 = 216
    assert train_bytes(cfg, 2, explicit_attention=True) == 3136 + 216 + TRAIN_OVERHEAD
    # forward: 4 * B*P*(14*C + 3*V) = 4 * 6 * 43 = 1032 (+ the fixed 16 MiB)
    assert forward_bytes(cfg, 2, 3) == 1032 + memory.FORWARD_OVERHEAD
    assert kv_cache_bytes(cfg, 2, 3) == 4 * 2 * 1 * 2 * 3 * 2
    # generation's window never exceeds n_ctx, however many tokens are asked for
    assert generate_bytes(cfg, 1, 2, 10 ** 9) == generate_bytes(cfg, 1, 2, 1) > generate_bytes(cfg, 1, 2, 0)


def test_estimates_grow_with_every_size_and_never_overflow():
    cfg = GPTConfig.preset("nano")
    assert train_bytes(cfg, 32) > train_bytes(cfg, 16) > train_bytes(cfg, 16, seq_len=64)
    assert train_bytes(GPTConfig.preset("nano", n_embd=256), 16) > train_bytes(cfg, 16)
    huge = train_bytes(cfg, 2 ** 62)  # Python ints: no wrap-around to a small or negative number
    assert huge > 2 ** 62 * cfg.n_ctx


_MEASURE = r"""
import json, os, sys
import torch
from model.config import GPTConfig
from model.gpt import GPT
from model import memory

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def case(kind, preset, B):
    torch.set_num_threads(1)
    cfg = GPTConfig.preset(preset)
    x = torch.randint(0, cfg.vocab_size, (B, cfg.n_ctx + 1), generator=torch.Generator().manual_seed(0))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets this process's peak RSS (VmHWM) to its current RSS
    base = status("VmRSS")
    model = GPT(cfg)
    if kind == "train":  # two full steps, as the loop does them: AdamW's states exist from the first
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        est = memory.train_bytes(cfg, B)
    else:  # a probe's forward: logits and their log-softmax
        model.eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(x[:, :-1]), -1)
        est = memory.model_bytes(cfg) + memory.forward_bytes(cfg, B, cfg.n_ctx)
    return {"measured": status("VmHWM") - base, "estimate": est}

out = {}
for spec in sys.argv[1:]:  # each case in a forked child: imported once, measured alone
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(case(*spec.split(",")[:2], int(spec.split(",")[2]))).encode())
        os._exit(0)
    os.close(w)
    out[spec] = json.loads(os.read(r, 65536))
    os.waitpid(pid, 0)
print(json.dumps(out))
"""
CASES = ["train,nano,4", "train,nano,16", "forward,tiny,2"]


@pytest.fixture(scope="module")
def measured() -> dict:
    """Peak RSS of real training steps / forwards, each in a fresh forked process (so that nothing
    else's peak counts), above its RSS just before the model is built, with the estimate."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *CASES], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is reset and read via /proc (Linux)")
@pytest.mark.parametrize("case", CASES)
def test_estimate_is_within_2x_of_the_measured_peak(measured, case):
    got = measured[case]
    ratio = got["estimate"] / got["measured"]
    print(f"{case}: measured {format_bytes(got['measured'])}, estimate {format_bytes(got['estimate'])}, "
          f"ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, (case, got, ratio)


# -- what the machine has, and the refusal --------------------------------------------------------
def test_available_bytes_is_meminfo_capped_by_the_cgroup(monkeypatch, tmp_path):
    have = memory.available_bytes()
    assert 0 < have <= int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024 + 2 ** 28
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10 * GiB)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 3 * GiB)
    assert memory.available_bytes() == 3 * GiB
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    assert memory.available_bytes() == 10 * GiB


def test_cgroup_limits_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("100\n")
    assert memory._cgroup_room(v2) is None
    (v2 / "memory.max").write_text("1000\n")
    assert memory._cgroup_room(v2) == 900
    (v2 / "memory.current").write_text("5000\n")
    assert memory._cgroup_room(v2) == 0
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("100\n")
    assert memory._cgroup_room(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("4096\n")
    assert memory._cgroup_room(v1) == 3996
    assert memory._cgroup_room(tmp_path / "none") is None


def test_check_fits_margin_and_sentence():
    check_fits("x", 9 * GiB, 10 * GiB)  # 90% of what is available still fits
    with pytest.raises(TooLarge) as e:
        check_fits("training with --batch-size 7", 9 * GiB + 1024, 10 * GiB, advice="use a smaller --batch-size")
    assert isinstance(e.value, ValueError)
    assert str(e.value) == ("training with --batch-size 7 needs about 9.0 GiB of memory (estimate), but this "
                            "machine has 10.0 GiB available; use a smaller --batch-size.")


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 2 ** 20, "3.0 MiB"),
                                    (812.4 * GiB, "812.4 GiB"), (2 ** 50 * 1.3, "1.3 PiB"), (10 ** 40, "8.88e+24 PiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# -- training ------------------------------------------------------------------------------------
def test_the_issues_command_exits_2_at_once_with_one_sentence(tmp_path):
    out = tmp_path / "tmp"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "train", "--preset", "nano", "--data", "stories", "--batch-size",
                          "100000000", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert res.returncode == 2, res.stderr
    assert elapsed < 20, elapsed
    line = one_line(res.stderr)
    assert_names_estimate_and_available(line)
    assert "--batch-size 100000000" in line and "PiB" in line, line  # 1e8 x 128 positions: petabytes
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


@pytest.mark.parametrize("extra", [["--n-ctx", "100000000"], ["--n-embd", "1000000", "--n-head", "1"],
                                   ["--n-layer", "100000", "--n-embd", "4096"], ["--batch-size", str(2 ** 62)]])
def test_huge_shapes_are_refused_before_any_data_is_made(tmp_path, monkeypatch, capsys, extra):
    def no_data(*args, **kwargs):
        raise AssertionError("the corpus was prepared before the memory check")

    monkeypatch.setattr(train_cli, "check_source", no_data)
    monkeypatch.setattr(train_cli, "setup_run", no_data)
    out = tmp_path / "run"
    assert train_cli.main(["--preset", "nano", "--out", str(out)] + extra) == 2
    line = one_line(capsys.readouterr().err)
    assert_names_estimate_and_available(line)
    assert not out.exists()


def test_a_normal_run_fits_and_a_small_machine_refuses_it(monkeypatch):
    args = TrainArgs(preset="nano", out="x")
    d = train_cli.Dist(rank=0, world=1, local_rank=0)
    # nano's default vocabulary holds every token of the corpus, known only once it is tokenized:
    # the check sizes the largest it can be (GPT-2's ids and the two specials)
    assert args.largest_model.vocab_size == 50258
    need = train_bytes(args.largest_model, args.batch_size)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(need / 0.9) + 1)
    train_cli.check_memory(args, d, torch.device("cpu"))  # fits
    monkeypatch.setattr(memory, "available_bytes", lambda: need)  # within the 10% margin: refused
    with pytest.raises(BadInput, match="needs about .* but this machine has"):
        train_cli.check_memory(args, d, torch.device("cpu"))


def test_local_ddp_ranks_share_the_machine(monkeypatch):
    args = TrainArgs(preset="nano", out="x")
    need = train_bytes(args.largest_model, args.batch_size)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * need)
    d = train_cli.Dist(rank=0, world=4, local_rank=0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(BadInput, match="4 processes"):
        train_cli.check_memory(args, d, torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # the other ranks live on other machines
    train_cli.check_memory(args, d, torch.device("cpu"))


def test_on_cuda_the_gpus_free_memory_decides(monkeypatch):
    """No GPU in CI: the branch is exercised with torch.cuda.mem_get_info replaced."""
    args = TrainArgs(preset="tiny", out="x")
    seen = []

    def mem_get_info(device):
        seen.append(device)
        return (GiB // 4, 80 * GiB)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    d = train_cli.Dist(rank=0, world=1, local_rank=0)
    with pytest.raises(BadInput, match="this GPU has 256.0 MiB available"):
        train_cli.check_memory(args, d, torch.device("cuda", 0))
    assert seen == [torch.device("cuda", 0)]


# -- probes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(fake_run) -> Path:
    """The session's fake run with steps 0 and 2 (conftest.py), read only here."""
    return fake_run(steps=(0, 2))


def test_probes_refuse_a_checkpoint_that_would_not_fit(tiny_run, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the memory check")

    monkeypatch.setattr(memory, "available_bytes", lambda: 2 ** 20)
    monkeypatch.setattr(probes_runner, "load_checkpoint", no_load)
    assert probes_cli.main([str(tiny_run), "--jobs", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("probes: probing ") and "step_000000" in line
    assert_names_estimate_and_available(line)
    assert not list(tiny_run.glob("probes/step_*.json")), "no result may be written"


def test_probe_workers_are_limited_to_what_fits(tiny_run, monkeypatch):
    todo = [checkpoint_dir(tiny_run, 0), checkpoint_dir(tiny_run, 2)]
    cfg = GPTConfig.from_dict(json.loads((tiny_run / "run.json").read_text())["model"])
    need = probes_runner.probe_bytes(cfg, None)
    assert need > model_bytes(cfg)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(2.5 * need / 0.9))
    assert probes_runner.jobs_that_fit(todo, None, "cpu", 8) == 2
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * need)
    assert probes_runner.jobs_that_fit(todo, None, "cpu", 3) == 3


def test_probe_rows_follow_the_sizes_and_the_logit_budget():
    small = GPTConfig(n_layer=2, n_head=4, n_embd=32, n_ctx=32, vocab_size=400)
    big_sizes = ProbeSizes(n_attention=100)
    assert probes_runner.probe_bytes(small, big_sizes) > probes_runner.probe_bytes(small, ProbeSizes())
    # with GPT-2's vocabulary the memorization forwards are chunked: 64 rows are not all in memory
    tiny = GPTConfig.preset("tiny")
    unchunked = model_bytes(tiny) + forward_bytes(tiny, 64, tiny.n_ctx, explicit_attention=True)
    assert probes_runner.probe_bytes(tiny, None) < unchunked / 2


# -- generation -----------------------------------------------------------------------------------
def test_generate_refuses_before_loading(tiny_run, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the check")

    monkeypatch.setattr(generate_cli, "load_checkpoint", no_load)
    assert generate_cli.main(["--run", str(tiny_run), "--prompt", "Once", "--max-new-tokens", str(10 ** 9),
                              "--device", "cpu"]) == 2
    assert "--max-new-tokens must be at most" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 ** 20)
    assert generate_cli.main(["--run", str(tiny_run), "--prompt", "Once", "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: generating from ") and "step_000002" in line
    assert_names_estimate_and_available(line)


def test_generate_still_runs_when_it_fits(tiny_run, capsys):
    assert generate_cli.main(["--run", str(tiny_run), "--prompt", "Once", "--max-new-tokens", "3",
                              "--temperature", "0", "--device", "cpu"]) == 0


# -- the app ---------------------------------------------------------------------------------------
def test_app_shows_the_sentence_instead_of_loading(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_fixtures import write_fake_run

    write_fake_run(tmp_path, "big", steps=(0, 1), with_probes=False)
    threads = torch.get_num_threads()
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 ** 20)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    try:
        at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=120)
        at.run()
        at.switch_page("views/attention.py").run()
    finally:
        torch.set_num_threads(threads)
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    hits = [e for e in errors if "needs about" in e]
    assert len(hits) == 1, errors
    assert_names_estimate_and_available(hits[0])
    assert "this server has 1.0 MiB available" in hits[0] and "\n" not in hits[0]


def test_a_huge_stories_corpus_is_refused_before_it_is_generated(tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the corpus was prepared before the memory check")

    monkeypatch.setattr(train_cli, "setup_run", no_data)
    out = tmp_path / "run"
    assert train_cli.main(["--preset", "nano", "--out", str(out), "--corpus-mb", "900000"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: preparing the stories corpus with --corpus-mb 900000 needs about "), line
    assert_names_estimate_and_available(line)
    assert memory.corpus_bytes(10 ** 6) == 8 * 10 ** 6 + memory.CORPUS_OVERHEAD
    assert not out.exists()
