"""The Prompt page's builders: one prompt's timelapse (probes.prompt's JSON, docs/prompt.md) drawn.

Plain data in, a `go.Figure` (or, for the continuations and the prompt's tokens, an HTML string)
out; nothing here knows about Streamlit or runs on disk, so each builder is tested by handing it
numbers and reading them back. The per-head maps (direct logit attribution, patched heads) are
app.figures.head_heatmap's, as on the Heads page.
"""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from .figure_common import HEIGHT
from .figures import unique_labels
from .plot_data import highlight_html

UNK = "<|unk|>"
LOOP_COLOUR = "#d62728"


def _num(v: Any) -> float:
    """A JSON number for a heatmap cell: NaN (an empty cell) where the JSON holds null."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def grid(rows: Sequence[Sequence[Any]]) -> list[list[float]]:
    """A [row][column] matrix of JSON numbers for a heatmap, null cells as NaN."""
    return [[_num(v) for v in row] for row in rows]


def visible(token: str) -> str:
    """A token's text with its whitespace made visible, as the axis labels show it."""
    return token.replace(" ", "␣").replace("\n", "⏎")


# -- HTML: the prompt's tokens and the continuations ------------------------------------------------
def token_chips_html(tokens: Sequence[str]) -> str:
    """The prompt's tokens as boxes, whitespace visible and <|unk|> (text the run's vocabulary does
    not have) in red, so the user sees what the model is really given. Every token is escaped."""
    chips = []
    for i, tok in enumerate(tokens):
        unknown = tok == UNK
        style = ("border:1px solid #bbb;border-radius:3px;padding:0 3px;margin:0 2px;font-family:monospace;"
                 + ("background:#fde2e1;color:#b00020;" if unknown else ""))
        chips.append(f'<span title="position {i}" style="{style}">{html.escape(visible(tok))}</span>')
    return "".join(chips)


def loop_words(loop: Mapping[str, Any] | None) -> str:
    """The loop a continuation ends in, in words (probes.measure.metrics.longest_loop's: a tail that repeats
    with one period at least twice)."""
    if not isinstance(loop, Mapping) or not loop.get("length"):
        return "no loop"
    share = loop.get("share")
    share_text = f" ({share:.0%})" if isinstance(share, (int, float)) else ""
    return f"from token {loop.get('start')}, period {loop.get('period')}: {loop['length']} tokens{share_text}"


def continuation_html(pieces: Sequence[str], mask: Sequence[bool], loop_start: int | None = None) -> str:
    """One continuation: its tokens with the repeated n-grams highlighted (plot_data.highlight_html)
    and, when it ends in a loop, a ⟳ where the loop starts and the loop underlined."""
    if loop_start is None or not 0 <= loop_start < len(pieces):
        return highlight_html(pieces, mask)
    before = highlight_html(pieces[:loop_start], mask[:loop_start])
    loop = highlight_html(pieces[loop_start:], mask[loop_start:])
    return (f'{before}<b title="the loop starts here" style="color:{LOOP_COLOUR}">⟳</b>'
            f'<span class="loop" style="border-bottom:2px solid {LOOP_COLOUR}">{loop}</span>')


def continuations_table_html(rows: Sequence[Mapping[str, Any]], seed: int) -> str:
    """One table row per checkpoint: its step, the greedy continuation (continuation_html, the loop
    marked), the loop in words and the sampled continuation. Each row holds "step", "greedy" and
    "sampled" as (token texts, repeated-n-gram mask), and "loop" (the entry's loop)."""
    cell = 'style="border-bottom:1px solid #ddd;padding:3px 6px;vertical-align:top"'
    head = "".join(f'<th style="text-align:left;white-space:nowrap;width:{w}">{h}</th>' for h, w in (
        ("step", "4em"), ("greedy continuation", "46%"), ("loop", "10em"), (f"sampled (seed {int(seed)})", "auto")))
    body = []
    for row in rows:
        loop = row.get("loop") or {}
        greedy = continuation_html(*row["greedy"], loop.get("start") if loop.get("length") else None)
        sampled = highlight_html(*row["sampled"])
        body.append(f'<tr data-step="{int(row["step"])}"><td {cell}>{int(row["step"])}</td>'
                    f'<td {cell}>{greedy}</td><td {cell}>{html.escape(loop_words(loop))}</td>'
                    f"<td {cell}>{sampled}</td></tr>")
    return ('<table style="border-collapse:collapse;table-layout:fixed;width:100%;font-family:monospace;'
            'white-space:pre-wrap;overflow-wrap:anywhere">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


# -- figures ------------------------------------------------------------------------------------------
def token_loss_heatmap(steps: Sequence[int], tokens: Sequence[str], losses: Sequence[Sequence[Any]],
                       title: str = "Loss of each prompt token over training") -> go.Figure:
    """Checkpoints (rows, the first at the top) x prompt tokens after the first (columns): the
    cross-entropy of token i+1 given the tokens before it, `losses[checkpoint][i]`, so one sees
    which tokens became predictable when. Columns are labelled by the token scored."""
    labels = unique_labels(tokens)[1:]
    fig = go.Figure(go.Heatmap(
        z=grid(losses), x=labels, y=[f"step {int(s)}" for s in steps], colorscale="Viridis",
        colorbar={"title": "loss (nats)"}, hovertemplate="%{y}, token %{x}: %{z:.3f} nats<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="prompt token (predicted from the ones before it)",
                      yaxis_title="checkpoint", height=max(HEIGHT, 22 * len(steps) + 160))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-45)
    return fig


def logit_lens_heatmap(lens: Mapping[str, Any], tokens: Sequence[str], title: str) -> go.Figure:
    """The logit lens at one checkpoint (the entry's `logit_lens`): residual streams (rows, the
    embeddings at the top) x prompt positions; the colour is the top token's probability, the text
    the top token, and the hover adds the rank and probability of the prompt's actual next token."""
    labels = unique_labels(tokens)
    layers = list(lens["layers"])
    nxt = list(tokens[1:]) + [None]
    custom = [[[visible(nxt[p]) if nxt[p] is not None else "(end of the prompt)",
                "—" if rank is None else int(rank), "—" if prob is None else f"{prob:.3f}"]
               for p, (rank, prob) in enumerate(zip(ranks, probs))]
              for ranks, probs in zip(lens["next_rank"], lens["next_prob"])]
    fig = go.Figure(go.Heatmap(
        z=grid(lens["prob"]), x=labels, y=layers, text=[[visible(t) for t in row] for row in lens["top_token"]],
        texttemplate="%{text}", customdata=custom, colorscale="Blues", zmin=0.0, zmax=1.0,
        colorbar={"title": "top-token prob."},
        hovertemplate=("%{y} at %{x}<br>top token %{text}: %{z:.3f}<br>actual next token %{customdata[0]}: "
                       "rank %{customdata[1]}, prob. %{customdata[2]}<extra></extra>")))
    fig.update_layout(title=title, xaxis_title="prompt position (its token)", yaxis_title="residual stream",
                      height=max(HEIGHT, 34 * len(layers) + 180))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-45)
    return fig


def patching_resid_heatmap(resid: Sequence[Sequence[Any]], tokens: Sequence[str], title: str) -> go.Figure:
    """Activation patching of the residual stream (the entry's `patching.resid`): the restored
    fraction when block l's input at one position is taken from the clean run, [layer][position],
    layer 0 at the top, diverging around 0 (1 restores the clean answer's lead, 0 changes nothing)."""
    fig = go.Figure(go.Heatmap(
        z=grid(resid), x=unique_labels(tokens), y=[f"resid_pre {l}" for l in range(len(resid))],
        colorscale="RdBu_r", zmid=0.0, colorbar={"title": "restored"},
        hovertemplate="%{y} at %{x}: %{z:.3f} restored<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="position (clean prompt's token)", yaxis_title="block input",
                      height=max(HEIGHT, 34 * len(resid) + 180))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-45)
    return fig


def best_head(heads: Sequence[Sequence[Any]]) -> tuple[int, int] | None:
    """(layer, head) of the largest restored fraction in a patching map; None when it holds none."""
    cells = [(_num(v), l, h) for l, row in enumerate(heads) for h, v in enumerate(row) if not math.isnan(_num(v))]
    if not cells:
        return None
    _, layer, head = max(cells)
    return layer, head


def head_over_steps(steps: Sequence[int], maps: Sequence[Sequence[Sequence[Any]] | None],
                    head: tuple[int, int]) -> tuple[list[int], list[float]]:
    """(steps, value) of one head across checkpoints' [layer][head] maps, leaving out the steps
    without a map (patching where both prompts agree) or without a number there."""
    xs, ys = [], []
    for step, m in zip(steps, maps):
        if m is None:
            continue
        v = _num(m[head[0]][head[1]])
        if not math.isnan(v):
            xs.append(int(step))
            ys.append(v)
    return xs, ys
