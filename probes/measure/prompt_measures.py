"""What one checkpoint does with one prompt: its continuations, the loss of each prompt token, the
logit lens, the heads' direct logit attribution and, given a corrupted prompt of the same length,
activation patching. `checkpoint_entry` gathers them for `probes.prompt` (the command line, the
cache and the loop over checkpoints); each piece is a function of a `model.GPT` and token ids.

Conventions, as TransformerLens':
- The logit lens (nostalgebraist 2020) reads each layer's residual stream, `blocks.{l}.hook_resid_pre`
  for l = 0 .. L-1 and the last block's `hook_resid_post`, through ln_final with its statistics
  recomputed for that stream and the unembedding: `ActivationCache.accumulated_resid(apply_ln=True)`
  followed by W_U, labelled as there ("0_pre" .. "final_post").
- Direct logit attribution divides each head's output (`hook_result`) and each other component,
  centred, by ln_final's scale as cached for the prompt (`ln_final.hook_scale`), and dots it with the
  target token's unembedding row times ln_final's gain: `cache.logit_attrs(cache.stack_head_results(
  apply_ln=True), token)` on a model whose ln_final gain is folded into W_U (TransformerLens'
  fold_ln). What the components leave over (the attention output biases and ln_final's bias) is
  `bias`, so the parts add up to the logit.
- Activation patching (Wang et al. 2022) copies an activation of the clean run into the corrupted
  run and measures the restored fraction of the logit difference, clean answer minus corrupted
  answer at the last position: (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted); 1 restores
  the clean run, 0 changes nothing. Heads are patched at `hook_z` over every position (as
  `transformer_lens.patching.get_act_patch_attn_head_out_all_pos`), the residual stream at
  `hook_resid_pre` per layer and position (as `get_act_patch_resid_pre`). All patched runs of a
  checkpoint go through the model as the rows of a few batched forwards.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from model.gpt import GPT
from model.tokenizer import Tokenizer

from probes.measure.forward import final_resid_name, final_residual, readout, resid_pre_name, token_losses, z_name
from probes.measure.inputs import ProbeSizes
from probes.measure.metrics import longest_loop

# Sampled continuations: nucleus sampling as the repetition probe samples (its defaults).
SAMPLE_TEMPERATURE = ProbeSizes.temperature
SAMPLE_TOP_P = ProbeSizes.top_p
PATCH_ROWS = 64  # patched runs per batched forward: bounds the activations of a wide model
SCALE_NAME = "ln_final.hook_scale"
PATCHING_METRIC = ("restored fraction of the logit difference at the last prompt position, clean answer minus "
                   "corrupted answer (each run's top next token): (LD_patched - LD_corrupted) / (LD_clean - "
                   "LD_corrupted), with the clean activation patched into the corrupted run; heads: hook_z over "
                   "every position, resid: hook_resid_pre at one position (Wang et al. 2022)")


def result_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_result"


def mlp_out_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def lens_labels(n_layers: int) -> list[str]:
    """The residual streams the lens reads, named as TransformerLens' accumulated_resid names them."""
    return [f"{layer}_pre" for layer in range(n_layers)] + ["final_post"]


def finite(x: float) -> float | None:
    """A float for JSON (which has no NaN or infinity): None where the number is not finite."""
    x = float(x)
    return x if math.isfinite(x) else None


def floats(t: torch.Tensor) -> list:
    """A tensor as nested lists of JSON floats."""
    if t.dim() == 0:
        return finite(t)  # type: ignore[return-value]
    return [floats(row) for row in t] if t.dim() > 1 else [finite(v) for v in t.tolist()]


# -- continuations --------------------------------------------------------------------------------
def loop_entry(tokens: Sequence[int]) -> dict:
    """The longest repeated loop a continuation ends in, by the repetition probe's definition
    (`probes.measure.metrics.longest_loop`: the longest tail periodic with some period p that holds the
    pattern at least twice): its period and length in tokens, the index of the continuation token
    where it starts (None when there is no loop) and the share of the continuation it takes."""
    period, length = longest_loop(tokens)
    return {"period": period if length else None, "length": length,
            "start": len(tokens) - length if length else None, "share": length / max(1, len(tokens))}


@torch.no_grad()
def continuations(model: GPT, ids: Sequence[int], tokens: int, seed: int) -> tuple[list[int], list[int]]:
    """(greedy, sampled) continuations of `tokens` new tokens, both in one batched generation with
    the model's KV cache (`GPT.generate_each`): the greedy row at temperature 0, the sampled one at
    SAMPLE_TEMPERATURE with top-p SAMPLE_TOP_P and its own generator seeded `seed`."""
    greedy, sampled = model.generate_each([list(ids), list(ids)], tokens, [0.0, SAMPLE_TEMPERATURE],
                                          top_p=SAMPLE_TOP_P, seeds=[None, seed])
    return greedy.tolist(), sampled.tolist()


# -- one forward over the prompt --------------------------------------------------------------------
@torch.no_grad()
def capture(model: Any, ids: Sequence[int], names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits [P, V], {hook name: activation without its batch axis}) of one forward over `ids`."""
    wanted = set(names)
    logits, cache = model.run_with_cache(torch.tensor([list(ids)], device=model.device),
                                         names_filter=lambda name: name in wanted, return_cache_object=False)
    return logits[0].float(), {name: act[0] for name, act in cache.items()}


def lens_names(model: GPT) -> list[str]:
    """The hooks of the residual streams the lens reads, in lens_labels' order."""
    return [resid_pre_name(layer) for layer in range(model.cfg.n_layer)] + [final_resid_name(model)]


def logit_lens(model: GPT, ids: Sequence[int], acts: dict[str, torch.Tensor]) -> dict:
    """For each residual stream (lens_labels) and each prompt position: the top token, its
    probability, and the rank (0 = the top token) and probability of the prompt token that comes
    next (None at the last position, where the prompt says nothing)."""
    n_layers = model.cfg.n_layer
    stack = torch.stack([acts[name] for name in lens_names(model)])  # [L+1, P, M]
    logits = readout(model)(stack).float()  # ln_final recomputed per stream, then W_U
    probs = torch.softmax(logits, dim=-1)
    top_p, top = probs.max(dim=-1)
    nxt = torch.tensor(list(ids[1:]), dtype=torch.long, device=logits.device)
    P = len(ids)
    if P > 1:
        nxt_logit = logits[:, :-1].gather(-1, nxt.expand(n_layers + 1, -1)[..., None])
        ranks = (logits[:, :-1] > nxt_logit).sum(-1).tolist()
        nxt_prob = probs[:, :-1].gather(-1, nxt.expand(n_layers + 1, -1)[..., None])[..., 0]
        next_prob = [row + [None] for row in floats(nxt_prob)]
    else:
        ranks, next_prob = [[] for _ in range(n_layers + 1)], [[None] for _ in range(n_layers + 1)]
    return {"layers": lens_labels(n_layers), "top": top.tolist(), "prob": floats(top_p),
            "next_rank": [row + [None] for row in ranks], "next_prob": next_prob}


def unembedding(model: GPT) -> torch.Tensor:
    """W_U as rows [V, M]: the tied token embedding, or the separate head."""
    return model.wte.weight if model.lm_head is None else model.lm_head.weight


def dla_names(model: GPT) -> list[str]:
    n_layers = model.cfg.n_layer
    mlps = [] if model.cfg.attn_only else [mlp_out_name(layer) for layer in range(n_layers)]
    return [result_name(layer) for layer in range(n_layers)] + mlps + ["hook_embed", "hook_pos_embed", SCALE_NAME]


def direct_logit_attribution(model: GPT, ids: Sequence[int], logits: torch.Tensor,
                             acts: dict[str, torch.Tensor]) -> list[dict]:
    """Per prompt position p, the direct contribution of each head (and each MLP, the embeddings
    and the biases left over) to the logit of the token after p: the prompt's next token, or at the
    last position the model's top prediction (the first greedy token). Each component is centred,
    divided by ln_final's cached scale at p and dotted with W_U[target] * ln_final.weight."""
    n_layers, P = model.cfg.n_layer, len(ids)
    targets = list(ids[1:]) + [int(logits[-1].argmax())]
    tgt = torch.tensor(targets, dtype=torch.long, device=logits.device)
    direction = unembedding(model)[tgt].float() * model.ln_final.weight.float()  # [P, M]
    scale = acts[SCALE_NAME].float()  # [P, 1]

    def attribute(x: torch.Tensor) -> torch.Tensor:  # [..., P, M] -> [..., P]
        x = x.float()
        return ((x - x.mean(-1, keepdim=True)) / scale * direction).sum(-1)

    heads = attribute(torch.stack([acts[result_name(layer)] for layer in range(n_layers)]).transpose(1, 2))  # [L,H,P]
    mlp = (attribute(torch.stack([acts[mlp_out_name(layer)] for layer in range(n_layers)]))
           if not model.cfg.attn_only else torch.zeros(0, P, device=logits.device))
    embed = attribute(acts["hook_embed"] + acts["hook_pos_embed"])
    logit = logits.gather(-1, tgt[:, None])[:, 0]
    rest = logit - heads.sum((0, 1)) - mlp.sum(0) - embed
    return [{"position": p, "target": targets[p], "logit": finite(logit[p]), "heads": floats(heads[:, :, p]),
             "mlp": floats(mlp[:, p]), "embed": finite(embed[p]), "bias": finite(rest[p])} for p in range(P)]


# -- activation patching ---------------------------------------------------------------------------
@torch.no_grad()
def last_logits(model: GPT, rows: torch.Tensor, hooks: Sequence = ()) -> torch.Tensor:
    """Logits [B, V] at the last position of each row, with `hooks`: the forward stops after the last
    block and only the last position is read out."""
    return readout(model)(final_residual(model, rows, hooks)[:, -1:])[:, 0].float()


def patch_hooks(plan: Sequence[tuple[str, int, int]], clean: dict[str, torch.Tensor]) -> list:
    """Hooks that patch row i of a batch as plan[i] says: ("z", layer, head) copies the clean
    hook_z of that head at every position, ("resid", layer, pos) the clean hook_resid_pre at pos."""
    by_hook: dict[str, list[tuple[int, int]]] = {}
    for row, (kind, layer, index) in enumerate(plan):
        name = z_name(layer) if kind == "z" else resid_pre_name(layer)
        by_hook.setdefault(name, []).append((row, index))

    def hook_for(name: str, cells: list[tuple[int, int]]):
        rows = torch.tensor([r for r, _ in cells])
        index = torch.tensor([i for _, i in cells])
        source = clean[name]

        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            if name.endswith("hook_z"):  # act [B, P, H, D]; source [P, H, D]
                act[rows, :, index] = source[:, index].transpose(0, 1).to(act.dtype)
            else:  # act [B, P, M]; source [P, M]
                act[rows, index] = source[index].to(act.dtype)
            return act
        return hook
    return [(name, hook_for(name, cells)) for name, cells in by_hook.items()]


def activation_patching(model: GPT, clean_ids: Sequence[int], corrupted_ids: Sequence[int],
                        clean_logits: torch.Tensor, clean: dict[str, torch.Tensor]) -> dict:
    """The `patching` entry: the restored fraction (PATCHING_METRIC) for every head [layer][head]
    and every residual stream position [layer][position]; None for both, with the reason, when the
    clean and corrupted runs have the same top next token (there is no difference to restore)."""
    n_layers, n_heads = model.cfg.n_layer, model.cfg.n_head
    corrupted = torch.tensor([list(corrupted_ids)], device=model.device)
    corrupted_logits = last_logits(model, corrupted)[0]
    answer, wrong = int(clean_logits[-1].argmax()), int(corrupted_logits.argmax())
    out: dict[str, Any] = {"metric": PATCHING_METRIC, "clean_answer": answer, "corrupted_answer": wrong,
                           "clean_diff": finite(clean_logits[-1, answer] - clean_logits[-1, wrong]),
                           "corrupted_diff": finite(corrupted_logits[answer] - corrupted_logits[wrong]),
                           "heads": None, "resid": None, "reason": None}
    if answer == wrong:
        out["reason"] = "the clean and the corrupted prompt have the same top next token here: no difference to restore"
        return out
    plan = [("z", layer, h) for layer in range(n_layers) for h in range(n_heads)] + \
           [("resid", layer, p) for layer in range(n_layers) for p in range(len(clean_ids))]
    diffs = []
    for start in range(0, len(plan), PATCH_ROWS):
        part = plan[start:start + PATCH_ROWS]
        logits = last_logits(model, corrupted.expand(len(part), -1), patch_hooks(part, clean))
        diffs.append(logits[:, answer] - logits[:, wrong])
    restored = (torch.cat(diffs) - out["corrupted_diff"]) / (out["clean_diff"] - out["corrupted_diff"])
    out["heads"] = floats(restored[:n_layers * n_heads].view(n_layers, n_heads))
    out["resid"] = floats(restored[n_layers * n_heads:].view(n_layers, len(clean_ids)))
    return out


# -- everything for one checkpoint -----------------------------------------------------------------
@torch.no_grad()
def checkpoint_entry(model: GPT, tokenizer: Tokenizer, ids: Sequence[int], tokens: int, seed: int,
                     corrupted_ids: Sequence[int] | None = None) -> dict:
    """One checkpoint's entry of the prompt timelapse (all but its step). The model's hooks are
    attached to a private copy (`GPT.private_copy`), so a model shared between threads is safe."""
    model = model.private_copy()
    model.eval()
    n_layers = model.cfg.n_layer
    greedy, sampled = continuations(model, ids, tokens, seed)
    names = [*lens_names(model), *dla_names(model), *([z_name(layer) for layer in range(n_layers)]
                                                        if corrupted_ids is not None else [])]
    logits, acts = capture(model, ids, names)
    losses = token_losses(logits[None, :-1], torch.tensor([list(ids[1:])], dtype=torch.long, device=logits.device))[0]
    lens = logit_lens(model, ids, acts)
    lens["top_token"] = [tokenizer.token_strings(row) for row in lens["top"]]
    positions = direct_logit_attribution(model, ids, logits, acts)
    for at in positions:
        at["target_token"] = tokenizer.decode([at["target"]])
    entry = {"greedy": tokenizer.decode(greedy), "greedy_ids": greedy, "sampled": tokenizer.decode(sampled),
             "sampled_ids": sampled, "token_losses": floats(losses), "loop": loop_entry(greedy), "logit_lens": lens,
             "dla": {**positions[-1], "positions": positions}}
    if corrupted_ids is not None:
        patching = activation_patching(model, ids, corrupted_ids, logits, acts)
        patching["clean_answer_token"] = tokenizer.decode([patching["clean_answer"]])
        patching["corrupted_answer_token"] = tokenizer.decode([patching["corrupted_answer"]])
        entry["patching"] = patching
    return entry
