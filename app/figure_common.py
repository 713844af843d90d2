"""What every figure builder shares: the figure height, the data shapes, and the step axis (log
scale with step 0 kept visible, and dashed marks at emergence steps). Split from app.figures so
that it and app.figures_induction both build on it without importing each other.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go

Matrix = Sequence[Sequence[float]]  # [layer][head]
Series = tuple[Sequence[int], Sequence[float]]  # (steps, values)

HEIGHT = 380


def _log_x(fig: go.Figure, log_x: bool, steps: Sequence[int] = ()) -> None:
    """Log-x over training steps. Step 0 cannot sit on a log axis, so it is drawn at 0.5 and the
    axis says so; that keeps the untrained checkpoint visible instead of silently dropping it."""
    if not log_x:
        return
    fig.update_xaxes(type="log")
    xs = x_of(steps, log_x)
    if xs:  # fit the data: Plotly's log autorange pads generously on narrow panels
        lo, hi = math.log10(min(xs)), math.log10(max(xs))
        pad = 0.05 * max(hi - lo, 1.0)
        fig.update_xaxes(range=[lo - pad, hi + pad])
    if any(s == 0 for s in steps):
        fig.update_xaxes(title_text="step (step 0 drawn at 0.5)")


def x_of(steps: Sequence[int], log_x: bool) -> list[float]:
    """Step positions as drawn: step 0 moves to 0.5 on a log axis (see _log_x)."""
    return [0.5 if (log_x and s == 0) else s for s in steps]


def _mark_steps(fig: go.Figure, marks: Mapping[str, int | None], log_x: bool) -> None:
    """A dashed vertical line per labelled step (emergence, phase change) in every panel, labelled
    once. Shapes take data coordinates on a log axis but annotations take log10 of them, so the
    label is placed by hand rather than through add_vline's annotation."""
    for label, step in marks.items():
        if step is None:
            continue
        x = x_of([int(step)], log_x)[0]
        colour = "dimgray" if label.startswith("predicted") else "crimson"  # a prediction is not evidence
        fig.add_vline(x=x, line_dash="dot" if colour == "dimgray" else "dash", line_color=colour)
        fig.add_annotation(x=math.log10(x) if log_x else x, xref="x", y=0.92 if colour == "dimgray" else 1.0,
                           yref="y domain", text=f"{label}: step {int(step)}", showarrow=False, xanchor="left",
                           yanchor="top", font={"color": colour}, name="mark")


def _num(v: float | None) -> float | None:
    return None if v is None else float(v)
