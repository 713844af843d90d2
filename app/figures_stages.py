"""The Stages page's figure builders: the local learning coefficient over training beside the
held-out loss, with stage boundaries and the other emergence steps on the same step axis, and one
checkpoint's SGLD loss traces. Like app.figures, they take plain numbers and return a `go.Figure`.
Beside them, the page's estimate of what computing the LLC costs (`llc_seconds`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure_common import HEIGHT, _log_x, _mark_steps, _num, x_of

LLC_COLOUR, LOSS_COLOUR, BOUNDARY_COLOUR = "#6a3d9a", "#7f7f7f", "#ff7f0e"

# The llc probe's measured cost (bench/llc.py's row): one checkpoint of a nano model of the induction
# recipe's shape (2 layers, width 128, context 128, a compact vocabulary of about 1,400 ids) takes
# 42-46 s on a 2-core CPU, one worker on one thread.
LLC_SECONDS_NANO = 45.0
NANO_SHAPE = {"n_layer": 2, "n_embd": 128, "n_ctx": 128, "vocab_size": 1400}
LLC_COST_SENTENCE = "about 45 s per nano checkpoint on a 2-core CPU, one worker on one thread"


def _row_cost(n_layer: int, n_embd: int, n_ctx: int, vocab_size: int, attn_only: bool = False) -> float:
    """Multiply-adds of one row of `n_ctx` tokens through the model: the blocks' weights (12 d^2 a
    layer, 4 d^2 attention-only), attention over the row (2 n_ctx d a layer) and the unembedding."""
    per_token = n_layer * ((4 if attn_only else 12) * n_embd ** 2 + 2 * n_ctx * n_embd) + n_embd * vocab_size
    return float(n_ctx * per_token)


def llc_seconds(model: Mapping | None) -> float:
    """Estimated seconds of the llc probe on one checkpoint of `model` (run.json["model"]): the
    measured nano cost scaled by the compute of one row, since the SGLD settings (chains, steps,
    rows per step) are the same for every model size (probes/measure/llc_settings.py). The nano cost when
    the config is missing or unreadable."""
    try:
        shape = {k: int(model[k]) for k in NANO_SHAPE}  # type: ignore[index]
        attn_only = bool(model.get("attn_only"))  # type: ignore[union-attr]
    except (TypeError, KeyError, ValueError):
        return LLC_SECONDS_NANO
    return LLC_SECONDS_NANO * _row_cost(**shape, attn_only=attn_only) / _row_cost(**NANO_SHAPE)


def duration(seconds: float) -> str:
    """`seconds` as a person reads an estimate: 40 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def llc_over_training(steps: Sequence[int], llc: Sequence[float | None], std: Sequence[float | None],
                      loss: tuple[Sequence[int], Sequence[float]] | None = None,
                      boundaries: Sequence[Mapping] = (), marks: Mapping[str, int | None] | None = None,
                      untrusted: Sequence[int] = (), log_x: bool = True,
                      title: str = "Local learning coefficient over training") -> go.Figure:
    """LLC per checkpoint (None: not computed, left out) with a band of +-1 std over chains on the
    left axis, the held-out loss `loss` = (steps, values) on the right; each stage boundary as a
    dotted orange line with its kind, every `marks` step (the emergence steps, the trajectory's
    turn) as a dashed line; estimates whose diagnostics failed (`untrusted` steps) as hollow points."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    known = [(int(s), float(v), float(e) if _num(e) is not None else 0.0)
             for s, v, e in zip(steps, llc, std) if v is not None and math.isfinite(float(v))]
    xs = x_of([s for s, _, _ in known], log_x)
    hi = [v + e for _, v, e in known]
    lo = [v - e for _, v, e in known]
    fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor="rgba(106,61,154,0.18)",
                             line={"width": 0}, hoverinfo="skip", name="± 1 std over chains",
                             meta={"role": "band"}), secondary_y=False)
    bad = {int(s) for s in untrusted}
    fig.add_trace(go.Scatter(
        x=xs, y=[v for _, v, _ in known], mode="lines+markers", name="LLC (mean over chains)",
        line={"color": LLC_COLOUR, "width": 2}, customdata=[s for s, _, _ in known],
        marker={"size": 7, "color": ["white" if s in bad else LLC_COLOUR for s, _, _ in known],
                "line": {"color": LLC_COLOUR, "width": 1.5}},
        meta={"role": "llc"}, hovertemplate="step %{customdata}: LLC %{y:.2f}<extra></extra>"), secondary_y=False)
    if loss is not None and len(loss[0]):
        fig.add_trace(go.Scatter(x=x_of([int(s) for s in loss[0]], log_x), y=[_num(v) for v in loss[1]],
                                 mode="lines", name="held-out loss", line={"color": LOSS_COLOUR, "dash": "dot"},
                                 meta={"role": "loss"}), secondary_y=True)
    for b in boundaries:
        x = x_of([int(b["step"])], log_x)[0]
        fig.add_vline(x=x, line_dash="dot", line_color=BOUNDARY_COLOUR, line_width=2)
        fig.add_annotation(x=math.log10(x) if log_x else x, xref="x", y=0.06, yref="y domain", showarrow=False,
                           text=f"stage boundary ({b.get('kind', '')}): step {int(b['step'])}", xanchor="left",
                           textangle=-90, yanchor="bottom", font={"color": BOUNDARY_COLOUR}, name="boundary")
    fig.update_layout(title=title, height=HEIGHT + 80, hovermode="closest", legend={"orientation": "h", "y": -0.2})
    fig.update_yaxes(title_text="LLC", secondary_y=False)
    fig.update_yaxes(title_text="held-out loss (nats)", secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="step")
    _log_x(fig, log_x, [s for s, _, _ in known] + [int(s) for s in (loss[0] if loss else [])])
    _mark_steps(fig, marks or {}, log_x)
    return fig


def llc_traces(steps: Sequence[int], losses: Sequence[Sequence[float | None]], burnin: int, init_loss: float,
               title: str) -> go.Figure:
    """One checkpoint's SGLD chains: each chain's loss (downsampled, at SGLD step `steps`) above the
    checkpoint's own loss (a flat line), the burn-in shaded: a trustworthy estimate comes from
    traces that rise and then stay flat."""
    fig = go.Figure()
    for c, trace in enumerate(losses):
        fig.add_trace(go.Scatter(x=list(steps), y=[_num(v) for v in trace], mode="lines", name=f"chain {c}",
                                 meta={"role": "chain", "chain": c}))
    if steps:
        fig.add_trace(go.Scatter(x=[steps[0], steps[-1]], y=[init_loss, init_loss], mode="lines",
                                 line={"color": "black", "dash": "dash"}, name="checkpoint's loss", meta={"role": "init"}))
    if burnin > 0:
        fig.add_vrect(x0=0, x1=burnin, fillcolor="lightgray", opacity=0.3, line_width=0, annotation_text="burn-in",
                      annotation_position="top left")
    fig.update_layout(title=title, height=HEIGHT, xaxis_title="SGLD step", yaxis_title="loss on the SGLD batch (nats)")
    return fig
