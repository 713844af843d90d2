"""Attention-only models (GPTConfig.attn_only, `python -m train --attn-only`; Olsson et al. 2022):
the hook names of TransformerLens' attn-only models, a forward equal to a hand-written one, the
same logits and activations through Hugging Face and the TransformerLens bridge, a real training
run whose checkpoints load back and probe, and the config's validation."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import probes
from model import GPT, GPTConfig
from store.checkpoint import list_checkpoints, load_checkpoint, step_of
from model.interop import from_hf, to_hf, to_transformer_lens
from model.memory import param_count, train_bytes
from store.runio import read_json
from probes.measure.results import read_results
from _small_run import small_run_argv

from test_interop import max_diff, max_diff_masked, perturb
from test_memory import _MEASURE as MEASURE
from test_model import GLOBAL_SHAPES, PER_BLOCK_SHAPES
from test_probes import REQUIRED_KEYS, SMALL, get

V, N_CTX = 211, 32
CFG = dict(n_layer=2, n_head=4, n_embd=64, n_ctx=N_CTX, vocab_size=V)
MLP_PARTS = ("mlp.", "ln2.", "hook_resid_mid", "hook_mlp_out")
# A block of TransformerLens' attn-only HookedTransformer: no ln2, no mlp, no hook_resid_mid /
# hook_mlp_out (attn.hook_result is computed only when asked for, as TransformerLens' use_attn_result).
ATTN_ONLY_BLOCK = {name for name in PER_BLOCK_SHAPES if not any(part in name for part in MLP_PARTS)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(5)
    g = GPT(GPTConfig(**CFG, attn_only=True)).eval()
    perturb(g)
    return g


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(6))


def expected_hooks(n_layer: int) -> set[str]:
    return set(GLOBAL_SHAPES) | {f"blocks.{l}.{name}" for l in range(n_layer) for name in ATTN_ONLY_BLOCK}


# -- (1) hook names and weights ------------------------------------------------------------------
def test_hook_names_are_transformer_lens_attn_only_ones_and_no_mlp_weights_exist(gpt, tokens):
    assert ATTN_ONLY_BLOCK == {"hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q",
                               "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern",
                               "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_post"}
    assert set(gpt.hook_dict) == expected_hooks(2)
    assert not [n for n in gpt.hook_dict if any(part in n for part in MLP_PARTS)]
    assert not [k for k in gpt.state_dict() if ".mlp." in k or ".ln2." in k]
    assert not hasattr(gpt.blocks[0], "mlp") and not hasattr(gpt.blocks[0], "ln2")
    # every hook fires; resid_post = resid_pre + attn_out
    _, cache = gpt.run_with_cache(tokens)
    assert set(cache.keys()) == set(gpt.hook_dict)
    for l in range(2):
        pre, out, post = (cache[f"blocks.{l}.{h}"] for h in ("hook_resid_pre", "hook_attn_out", "hook_resid_post"))
        assert torch.equal(post, pre + out)
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    # the default keeps its MLPs, their hooks and their state_dict keys
    full = GPT(GPTConfig(**CFG))
    assert "blocks.0.mlp.c_fc.weight" in full.state_dict() and "blocks.0.ln2.weight" in full.state_dict()
    assert {"blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.mlp.hook_post"} <= set(full.hook_dict)
    assert "attn_only" not in full.cfg.to_dict() and gpt.cfg.to_dict()["attn_only"] is True
    assert GPTConfig.from_dict(gpt.cfg.to_dict()) == gpt.cfg


def test_hook_names_equal_those_of_a_transformer_lens_attn_only_model():
    """TransformerLens 4.x has no HookedTransformer; its TL-native model with attn_only=True, in
    compatibility mode, is the reference: the HookedTransformer names its forward fills (bridge
    wrapper hooks `*.hook_in` / `*.hook_out` / `hook_unembed` aside) are exactly ours."""
    try:
        from transformer_lens.model_bridge.sources.native import boot
    except ImportError:
        pytest.skip("this TransformerLens has no TL-native model")
    bridge = boot(dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, attn_only=True,
                       act_fn="gelu_new", normalization_type="LN"))
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    _, cache = bridge.run_with_cache(torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0)))
    theirs = {n for n in cache.keys() if not n.endswith((".hook_in", ".hook_out")) and n != "hook_unembed"}
    ours = {n for n in expected_hooks(2) if not n.endswith("attn.hook_result")}
    assert theirs == ours
    assert {"blocks.0.attn.hook_result", "blocks.1.attn.hook_result"} <= set(bridge.hook_dict)


# -- (2) the forward -----------------------------------------------------------------------------
def naive_forward(g: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """Embeddings, plus each layer's attention of its LayerNorm'd input, final LayerNorm, unembed:
    written out from the weights, sharing no code with the model."""
    cfg = g.cfg
    H, D = cfg.n_head, cfg.d_head
    B, P = tokens.shape
    x = g.wte.weight[tokens] + g.wpe.weight[:P]
    mask = torch.ones(P, P).tril().bool()
    for block in g.blocks:
        h = F.layer_norm(x, (cfg.n_embd,), block.ln1.weight, block.ln1.bias, cfg.ln_eps)
        qkv = h @ block.attn.c_attn.weight.T + block.attn.c_attn.bias
        q, k, v = (t.reshape(B, P, H, D).transpose(1, 2) for t in qkv.split(cfg.n_embd, dim=-1))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, P, cfg.n_embd)
        x = x + z @ block.attn.c_proj.weight.T + block.attn.c_proj.bias
    x = F.layer_norm(x, (cfg.n_embd,), g.ln_final.weight, g.ln_final.bias, cfg.ln_eps)
    return x @ g.wte.weight.T


@torch.no_grad()
def test_forward_equals_a_hand_written_attention_only_forward(gpt, tokens):
    want = naive_forward(gpt, tokens)
    assert max_diff(gpt(tokens), want) <= 1e-5
    logits, _ = gpt.run_with_cache(tokens)  # the explicit (hooked) attention and LayerNorm paths
    assert max_diff(logits, want) <= 1e-5
    # generation with a KV cache continues as without
    out = gpt.generate(tokens[:1, :8], 6, temperature=0)
    assert torch.equal(out, gpt.generate(tokens[:1, :8], 6, temperature=0, use_cache=False))


def test_parameter_count_and_memory_estimates_count_no_mlp(gpt):
    assert param_count(gpt.cfg) == gpt.num_params() == sum(p.numel() for p in gpt.parameters())
    full = GPTConfig(**CFG)
    C = full.n_embd
    per_block_mlp = 2 * C + 4 * C * C + 4 * C + 4 * C * C + C  # ln2, c_fc, c_proj
    assert param_count(full) - param_count(gpt.cfg) == full.n_layer * per_block_mlp
    assert train_bytes(gpt.cfg, 8) < train_bytes(full, 8)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is reset and read via /proc (Linux)")
def test_the_training_memory_estimate_is_within_2x_of_the_measured_peak():
    """tests/test_memory.py's measurement (a fresh forked process, two real AdamW steps), on an
    attention-only nano model."""
    script = MEASURE.replace("GPTConfig.preset(preset)", "GPTConfig.preset(preset, attn_only=True)")
    assert script != MEASURE
    out = subprocess.run([sys.executable, "-c", script, "train,nano,8"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])["train,nano,8"]
    assert 0.5 <= got["estimate"] / got["measured"] <= 2.0, got


def test_a_checkpoint_config_must_agree_on_the_mlps(gpt):
    shapes = {k: tuple(v.shape) for k, v in gpt.state_dict().items()}
    assert gpt.cfg.misfit(shapes) is None
    assert "no MLP weights" in GPTConfig(**CFG).misfit(shapes)
    full = {k: tuple(v.shape) for k, v in GPT(GPTConfig(**CFG)).state_dict().items()}
    assert "MLP weights" in gpt.cfg.misfit(full) and GPTConfig(**CFG).misfit(full) is None


# -- (3) Hugging Face and the TransformerLens bridge ---------------------------------------------
@torch.no_grad()
def test_to_hf_has_zero_mlps_and_the_same_logits(gpt, tokens):
    hf = to_hf(gpt)
    assert max_diff(hf(tokens).logits, gpt(tokens)) <= 1e-4
    for block in hf.transformer.h:
        for p in (*block.mlp.parameters(), block.ln_2.bias):
            assert not p.any()
        assert torch.equal(block.ln_2.weight, torch.ones_like(block.ln_2.weight))
    back = from_hf(hf)  # from_hf never makes an attention-only model: MLPs that add zero
    assert not back.cfg.attn_only and max_diff(back(tokens), gpt(tokens)) <= 1e-4


@torch.no_grad()
def test_every_hook_we_share_with_the_bridge_holds_the_same_values(gpt, tokens):
    bridge = to_transformer_lens(gpt)
    bridge.set_use_attn_result(True)
    ours_logits, ours = gpt.run_with_cache(tokens)
    tl_logits, theirs = bridge.run_with_cache(tokens)
    assert max_diff(tl_logits, ours_logits) <= 1e-4
    shared = sorted(set(ours.keys()) & set(theirs.keys()))
    assert set(gpt.hook_dict) <= set(shared), sorted(set(gpt.hook_dict) - set(shared))
    assert len(shared) == 4 + 12 * gpt.cfg.n_layer
    bad = {}
    for name in shared:
        if ours[name].shape != theirs[name].shape:
            bad[name] = f"shape {tuple(ours[name].shape)} vs {tuple(theirs[name].shape)}"
        elif not (d := max_diff_masked(ours[name], theirs[name])) <= 1e-4:
            bad[name] = f"max abs diff {d:.3g}"
    assert not bad, f"hooks that differ from TransformerBridge's: {bad}"
    # the bridge's zero MLPs: they add exactly nothing
    for l in range(gpt.cfg.n_layer):
        assert not theirs[f"blocks.{l}.hook_mlp_out"].any()
        assert torch.equal(theirs[f"blocks.{l}.hook_resid_mid"], theirs[f"blocks.{l}.hook_resid_post"])


# -- (4) training, loading and probing -----------------------------------------------------------
@pytest.fixture(scope="module")
def attn_only_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("attn_only") / "run"
    argv = small_run_argv(out, steps=20, attn_only=True)
    assert "--attn-only" in argv and argv[argv.index("--preset") + 1] == "nano"
    assert argv[argv.index("--n-layer") + 1] == "2"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "train", *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_an_attention_only_run_trains_loads_back_and_probes(attn_only_run):
    run = read_json(attn_only_run / "run.json")
    assert run["status"] == "complete"
    assert run["model"]["attn_only"] is True and run["train"]["attn_only"] is True
    ckpts = list_checkpoints(attn_only_run)
    assert step_of(ckpts[-1]) == 20
    model, meta = load_checkpoint(ckpts[-1])
    assert model.cfg.attn_only and meta["config"]["attn_only"] is True and model.cfg.n_layer == 2
    assert not [k for k in model.state_dict() if ".mlp." in k or ".ln2." in k]
    first, _ = load_checkpoint(ckpts[0])
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_diff(first(tokens), model(tokens)) > 1e-3  # it trained
    steps = [step_of(p) for p in ckpts]
    problems: list[str] = []
    assert probes.run_probes(attn_only_run, sizes=SMALL, log=problems.append) == steps  # every probe, every step
    assert not problems
    results = read_results(attn_only_run)
    for step in steps:
        for key in REQUIRED_KEYS:
            get(results[step], key)
        for key in ("head_ablation.zero", "attention_entropy.normalized", "induction.induction"):
            m = np.asarray(get(results[step], key))
            assert m.shape == (2, model.cfg.n_head) and np.isfinite(m).all()


# -- (5) validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_attn_only_must_be_a_bool(value):
    with pytest.raises(ValueError) as e:
        GPTConfig(attn_only=value)
    message = str(e.value)
    assert message == f"GPTConfig.attn_only must be true or false, got {value!r}."
    assert "\n" not in message and message.count(". ") == 0


def test_every_app_page_works_on_an_attention_only_run(attn_only_run, monkeypatch):
    """The app on the probed attention-only run: each page draws its charts and shows no error
    (probes ran in the test above; run_probes is idempotent, so this holds in either order)."""
    from streamlit.testing.v1 import AppTest
    probes.run_probes(attn_only_run, sizes=SMALL)
    monkeypatch.setenv("WORKBENCH_RUNS", str(attn_only_run.parent))
    app = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.query_params["run"] = attn_only_run.name
    at.run()
    for page in ("runs", "heads", "attention", "memorization", "repetition", "induction"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
        assert not at.error, f"{page}: {[e.value for e in at.error]}"
        assert at.get("plotly_chart"), f"{page}: no chart drawn"
