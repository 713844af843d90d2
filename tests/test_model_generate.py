"""GPT.generate (KV cache vs recomputation, sampling, truncation, hooks) and the
`python -m store.generate` command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from store.checkpoint import checkpoint_dir, save_checkpoint
from store.generate import main
from model.gpt import sample_next
from model.tokenizer import build_compact_vocab
from store.vocab import load_tokenizer, save_vocab

CFG = dict(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=61)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).eval()
    with torch.no_grad():  # larger weights than init, so logits are far from uniform
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else p.add_(0.2 * torch.randn_like(p))
    return model


def prompt(n: int, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, CFG["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


def recompute_greedy(model: GPT, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: argmax of a full forward over the last n_ctx tokens, one token at a time."""
    out = tokens
    with torch.no_grad():
        for _ in range(n):
            nxt = model(out[:, -model.cfg.n_ctx:])[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
    return out


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 23])
def test_cached_greedy_equals_recomputation_also_past_n_ctx(gpt, prompt_len):
    tokens = prompt(prompt_len)
    cached = gpt.generate(tokens, 30, temperature=0)
    assert cached.shape == (2, prompt_len + 30)
    assert torch.equal(cached, recompute_greedy(gpt, tokens, 30))
    assert torch.equal(cached, gpt.generate(tokens, 30, temperature=0, use_cache=False))


def test_generation_keeps_the_whole_prompt_and_left_truncates_the_input(gpt):
    long = prompt(40)
    out = gpt.generate(long, 6, temperature=0)
    assert torch.equal(out[:, :40], long)
    assert torch.equal(out[:, 40:], gpt.generate(long[:, -CFG["n_ctx"]:], 6, temperature=0)[:, CFG["n_ctx"]:])


def test_seeded_sampling_is_reproducible(gpt):
    tokens = prompt(4)
    a = gpt.generate(tokens, 25, temperature=1.0, seed=7)
    b = gpt.generate(tokens, 25, temperature=1.0, seed=7)
    c = gpt.generate(tokens, 25, temperature=1.0, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, gpt.generate(tokens, 25, temperature=1.0, seed=7, use_cache=False))


def test_top_k_one_is_greedy(gpt):
    tokens = prompt(3)
    assert torch.equal(gpt.generate(tokens, 12, temperature=1.5, top_k=1, seed=0), gpt.generate(tokens, 12, temperature=0))


def allowed_top_p(logits: torch.Tensor, p: float) -> set[int]:
    """The smallest set of most likely tokens whose probability reaches p (Holtzman et al.)."""
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True).tolist()
    chosen, mass = set(), 0.0
    for i in order:
        chosen.add(i)
        mass += probs[i].item()
        if mass >= p:
            break
    return chosen


def test_generate_each_gives_every_row_what_generate_gives_it_alone(gpt):
    """Prompts of four lengths, greedy and sampled rows with their own seeds, generated past n_ctx
    (16): each row's tokens equal generate() on that prompt alone (float64, so a batched product's
    rounding cannot flip a choice)."""
    model = GPT(GPTConfig(**CFG)).double().eval()
    model.load_state_dict({k: v.double() for k, v in gpt.state_dict().items()})
    prompts = [prompt(n, batch=1, seed=n)[0].tolist() for n in (3, 7, 1, 5)]
    temperatures, seeds = [0.0, 1.0, 0.0, 0.8], [None, 11, None, 12]
    got = model.generate_each(prompts, 20, temperatures, top_p=0.9, seeds=seeds)
    for p, t, seed, tokens in zip(prompts, temperatures, seeds, got):
        alone = model.generate(torch.tensor([p]), 20, temperature=t, top_p=0.9, seed=seed)[0, len(p):]
        assert torch.equal(tokens, alone), (p, t, seed)
    assert not torch.equal(got[1], model.generate_each(prompts, 20, temperatures, top_p=0.9, seeds=[None, 13, None, 12])[1])


@pytest.mark.parametrize("args, message", [
    (([[1, 2], [3]], 4, [0.0]), "one temperature and one seed per prompt"),
    (([[1, 2], []], 4, [0.0, 0.0]), "each of at least one token"),
    (([[1, 2]], -1, [0.0]), "max_new_tokens"),
    (([[1, 2]], 4, [-1.0]), "temperature"),
])
def test_generate_each_refuses_what_generate_refuses(gpt, args, message):
    with pytest.raises(ValueError, match=message):
        gpt.generate_each(*args)


def test_sample_next_never_leaves_top_k_or_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    topk_sets = [set(torch.topk(row, 5).indices.tolist()) for row in logits]
    topp_sets = [allowed_top_p(row, 0.6) for row in logits]
    both_sets = [allowed_top_p(row.masked_fill(~torch.isin(torch.arange(50), torch.topk(row, 5).indices), -1e9), 0.6)
                 for row in logits]
    assert all(1 < len(s) < 50 for s in topp_sets) and all(len(s) > 1 for s in both_sets)
    seen_k, seen_p = [set() for _ in range(4)], [set() for _ in range(4)]
    for _ in range(300):
        k = sample_next(logits, 1.0, 5, None, g)[:, 0].tolist()
        p = sample_next(logits, 1.0, None, 0.6, g)[:, 0].tolist()
        kp = sample_next(logits, 1.0, 5, 0.6, g)[:, 0].tolist()
        for r in range(4):
            assert k[r] in topk_sets[r] and p[r] in topp_sets[r] and kp[r] in both_sets[r]
            seen_k[r].add(k[r])
            seen_p[r].add(p[r])
    assert all(len(s) > 1 for s in seen_k + seen_p)  # it does sample, not just take the argmax


def test_generate_top_k_tokens_lie_in_the_models_top_k(gpt):
    tokens = prompt(3, batch=1)
    out = gpt.generate(tokens, 20, temperature=1.0, top_k=3, seed=1)
    with torch.no_grad():
        for i in range(3, out.shape[1]):
            logits = gpt(out[:, max(0, i - CFG["n_ctx"]):i])[0, -1]
            assert out[0, i].item() in torch.topk(logits, 3).indices.tolist()


def test_hooks_fire_during_generation(gpt):
    calls = []
    with gpt.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: calls.append(tuple(x.shape)))]):
        out = gpt.generate(prompt(4, batch=1), 3, temperature=0)
    assert calls == [(1, 2, 4, 4), (1, 2, 1, 5), (1, 2, 1, 6)]  # new queries x all keys so far
    assert torch.equal(out, gpt.generate(prompt(4, batch=1), 3, temperature=0))


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=-0.5), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"), (dict(top_p=0.0), "top_p"),
])
def test_bad_sampling_arguments_name_the_field(gpt, kwargs, field):
    args = dict(max_new_tokens=3, temperature=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        gpt.generate(prompt(2), **args)


# -- command line --------------------------------------------------------------------------------
TEXT = "Once upon a time there was a little cat. The cat liked to play. " * 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run with a compact vocab and two checkpoints whose weights differ."""
    run = tmp_path_factory.mktemp("gen") / "run"
    run.mkdir()
    base = load_tokenizer()
    counts: dict[int, int] = {}
    for t in base.encode(TEXT):
        counts[t] = counts.get(t, 0) + 1
    vocab = build_compact_vocab(counts, 40)
    save_vocab(vocab, run / "vocab.json")
    for step, seed in ((0, 0), (5, 1)):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**{**CFG, "vocab_size": vocab.size}))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(10.0)
        save_checkpoint(run, step, model, {"tokens": step * 100})
    return run


def expected_continuation(run: Path, step: int, prompt_text: str, n: int) -> str:
    from store.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint_dir(run, step))
    tok = load_tokenizer(run)
    ids = tok.encode(prompt_text)
    out = model.generate(torch.tensor([ids]), n, temperature=0)
    return tok.decode(out[0, len(ids):].tolist())


def test_cli_uses_latest_checkpoint_by_default(run_dir, capsys):
    assert main(["--run", str(run_dir), "--prompt", "The cat", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed == expected_continuation(run_dir, 5, "The cat", 12) + "\n"
    assert printed != expected_continuation(run_dir, 0, "The cat", 12) + "\n"


def test_cli_step_and_seeded_sampling(run_dir, capsys):
    assert main(["--run", str(run_dir), "--step", "0", "--prompt", "The cat", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == expected_continuation(run_dir, 0, "The cat", 8) + "\n"
    argv = ["--run", str(run_dir), "--prompt", "Once", "--max-new-tokens", "10", "--top-k", "5", "--top-p", "0.9", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("extra, message", [
    (["--step", "3"], "no checkpoint at step 3; available steps: 0, 5"),
    (["--top-k", "abc"], "--top-k"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "2"], "top_p"),
    (["--max-new-tokens", "-4"], "max_new_tokens"),
    (["--device", "warp-drive"], "device must be auto, cpu or cuda"),
])
def test_cli_bad_numbers_exit_2_with_one_sentence(run_dir, capsys, extra, message):
    assert main(["--run", str(run_dir), "--prompt", "The"] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_run_no_checkpoints_and_corrupt_checkpoint(tmp_path, run_dir, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--run", str(tmp_path / "empty"), "--prompt", "x"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert main(["--prompt", "x"]) == 2
    assert "--run" in capsys.readouterr().err
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    weights = checkpoint_dir(broken, 5) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["--run", str(broken), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "model.safetensors" in err and len(err.strip().splitlines()) == 1


def test_cli_runs_as_a_module(run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "store.generate", "--run", str(run_dir), "--prompt", "The cat",
                         "--max-new-tokens", "5", "--temperature", "0"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == expected_continuation(run_dir, 5, "The cat", 5) + "\n"
    bad = subprocess.run([sys.executable, "-m", "store.generate", "--run", str(run_dir), "--prompt", "x", "--step", "9"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
