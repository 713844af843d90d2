"""The induction page's figure builders: one panel per head with its scores over training, the
per-token loss trajectory, and held-out loss by position. Split from app.figures, which re-exports
them; like it, they take plain numbers and return a `go.Figure`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from .figure_common import HEIGHT, Matrix, _log_x, _mark_steps, _num, x_of

INDUCTION_COLOURS = {"induction": "#d62728", "previous token": "#1f77b4", "in-context copying": "#2ca02c"}


def _axis_suffix(row: int, col: int, cols: int) -> str:
    """Plotly's name suffix of a subplot's axes ("" for the first, then "2", "3", ...)."""
    index = (row - 1) * cols + col
    return "" if index == 1 else str(index)


def induction_head_panels(series: Mapping[str, tuple[Sequence[int], Sequence[Matrix]]],
                          control: tuple[Sequence[int], Sequence[Matrix]] | None, title: str,
                          log_x: bool = True, marks: Mapping[str, int | None] | None = None,
                          highlight: Mapping[str, tuple[int, int] | Sequence[int] | None] | None = None) -> go.Figure:
    """One panel per head (layers as rows, heads as columns), each with that head's scores over
    training: `series[name]` is (steps, [layer][head] matrix per step), drawn in the colour of
    INDUCTION_COLOURS; `control` (the induction attention on fresh tokens) is dashed in the
    induction colour beside it, so a positional head shows as two lines that rise together.
    `highlight[role] = (layer, head)` boxes that head's panel and names its role in the title."""
    shape = next((m[0] for _, m in series.values() if len(m)), None)
    n_layer = len(shape) if shape else 0
    n_head = len(shape[0]) if n_layer else 0
    roles: dict[tuple[int, int], list[str]] = {}
    for role, head in (highlight or {}).items():
        if head is not None:
            roles.setdefault((int(head[0]), int(head[1])), []).append(role)
    titles = [f"L{l}H{h}" + (f" · {', '.join(roles[(l, h)])}" if (l, h) in roles else "")
              for l in range(n_layer) for h in range(n_head)]
    fig = make_subplots(rows=max(1, n_layer), cols=max(1, n_head), shared_yaxes=True, shared_xaxes=True,
                        subplot_titles=titles or None, vertical_spacing=0.12 / max(1, n_layer) + 0.04)
    all_steps: list[int] = []
    lines = list(series.items()) + ([("induction control (fresh tokens)", control)] if control else [])
    for name, (steps, mats) in lines:
        all_steps += list(steps)
        is_control = control is not None and name == "induction control (fresh tokens)"
        colour = INDUCTION_COLOURS["induction" if is_control else name] if (is_control or name in INDUCTION_COLOURS) \
            else None
        for layer in range(n_layer):
            for head in range(n_head):
                fig.add_trace(go.Scatter(
                    x=x_of(steps, log_x), y=[float(m[layer][head]) for m in mats], mode="lines+markers",
                    marker={"size": 3}, line={"color": colour, "width": 1.5, "dash": "dash" if is_control else "solid"},
                    name=name, legendgroup=name, showlegend=layer == 0 and head == 0,
                    meta={"layer": layer, "head": head, "score": name, "control": is_control},
                    hovertemplate=f"L{layer}H{head} {name}, step %{{x}}: %{{y:.3f}}<extra></extra>"),
                    row=layer + 1, col=head + 1)
    for (layer, head), names in roles.items():
        if layer < n_layer and head < n_head:
            suffix = _axis_suffix(layer + 1, head + 1, n_head)
            fig.add_shape(type="rect", xref=f"x{suffix} domain", yref=f"y{suffix} domain", x0=0, x1=1, y0=0, y1=1,
                          line={"color": "black", "width": 3}, name=" & ".join(names))
    fig.update_layout(title=title, height=max(HEIGHT, 200 * n_layer + 120), hovermode="closest")
    fig.update_yaxes(range=[-0.05, 1.05])
    _log_x(fig, log_x, all_steps)
    _mark_steps(fig, marks or {}, log_x)
    return fig


def loss_trajectory(steps: Sequence[int], pc1: Sequence[float], pc2: Sequence[float],
                    explained: Sequence[float], mark_step: int | None = None,
                    mark_label: str = "induction phase change") -> go.Figure:
    """The checkpoints' path through per-token-loss space (probes.analyse.summary's trajectory): PC1 vs PC2
    as a line through the checkpoints in training order, each labelled with its step, the
    checkpoint at `mark_step` drawn as a star."""
    share = [f" ({100 * float(e):.0f}% of variance)" if i < len(explained) else "" for i, e in
             enumerate(list(explained) + [None] * (2 - len(explained)))]
    fig = go.Figure(go.Scatter(
        x=[float(v) for v in pc1], y=[float(v) for v in pc2], mode="lines+markers+text",
        text=[str(int(s)) for s in steps], textposition="top center", customdata=[int(s) for s in steps],
        marker={"size": 7}, name="checkpoints", meta={"role": "trajectory"},
        hovertemplate="step %{customdata}<br>PC1 %{x:.3f}<br>PC2 %{y:.3f}<extra></extra>"))
    if mark_step is not None and int(mark_step) in [int(s) for s in steps]:
        i = [int(s) for s in steps].index(int(mark_step))
        fig.add_trace(go.Scatter(x=[float(pc1[i])], y=[float(pc2[i])], mode="markers",
                                 marker={"symbol": "star", "size": 18, "color": "crimson"},
                                 name=f"{mark_label}: step {int(mark_step)}", meta={"role": "mark"}))
    fig.update_layout(title="Per-token loss trajectory (PCA over checkpoints)", height=HEIGHT + 40,
                      xaxis_title=f"PC1{share[0]}", yaxis_title=f"PC2{share[1]}")
    return fig


def position_loss_curves(steps: Sequence[int], curves: Sequence[Sequence[float]]) -> go.Figure:
    """Held-out loss by token position, one line per checkpoint, coloured by step (log scale:
    dark early, bright late), so the late positions pulling below the early ones is visible."""
    logs = [math.log1p(int(s)) for s in steps]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    colours = sample_colorscale("Viridis", [(v - lo) / (hi - lo) if hi > lo else 1.0 for v in logs])
    fig = go.Figure()
    for step, curve, colour in zip(steps, curves, colours):
        fig.add_trace(go.Scatter(x=list(range(len(curve))), y=[_num(v) for v in curve], mode="lines",
                                 line={"color": colour, "width": 1.5}, name=f"step {int(step)}",
                                 meta={"step": int(step)}))
    fig.update_layout(title="Held-out loss by token position, one line per checkpoint", height=HEIGHT + 40,
                      xaxis_title="token position (predicting the next token)", yaxis_title="loss (nats)")
    return fig
