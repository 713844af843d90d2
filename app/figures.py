"""Plotly figure builders: plain data in, a `go.Figure` out.

Nothing here knows about Streamlit, runs on disk or probe files, so each builder can be tested by
handing it numbers and reading them back out of the figure. The pages decide what to plot; these
functions only decide how.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figure_common import HEIGHT, Matrix, Series, _log_x, _mark_steps, _num, x_of
from .figures_induction import (INDUCTION_COLOURS, _axis_suffix, induction_head_panels, loss_trajectory,
                                position_loss_curves)  # re-exported: every page's builders in one place


def loss_curves(runs: Mapping[str, Mapping[str, Series]], checkpoints: Mapping[str, Sequence[int]],
                log_x: bool = False, marks: Mapping[str, int | None] | None = None) -> go.Figure:
    """Train and held-out loss per run, with the steps that have a checkpoint marked on the train
    curve, so one sees where along training each saved model sits, and `marks` (e.g. the
    loss-generation mismatch and the overfitting onset) as dashed lines.

    `runs[name]` holds "train" and optionally "val" as (steps, losses); `checkpoints[name]` lists
    checkpoint steps."""
    fig = go.Figure()
    all_steps: list[int] = []
    for name, curves in runs.items():
        steps, loss = curves.get("train", ((), ()))
        all_steps += list(steps)
        fig.add_trace(go.Scatter(x=x_of(steps, log_x), y=list(loss), mode="lines",
                                 name=f"{name} train", meta={"run": name, "kind": "train"}))
        vsteps, vloss = curves.get("val", ((), ()))
        if len(vsteps):
            all_steps += list(vsteps)
            fig.add_trace(go.Scatter(x=x_of(vsteps, log_x), y=list(vloss), mode="lines+markers",
                                     name=f"{name} held-out", meta={"run": name, "kind": "val"}))
        ck = [s for s in checkpoints.get(name, ()) if len(steps)]
        if ck:
            fig.add_trace(go.Scatter(
                x=x_of(ck, log_x), y=[interpolate(steps, loss, s) for s in ck], mode="markers",
                marker={"symbol": "diamond-open", "size": 9}, name=f"{name} checkpoints",
                meta={"run": name, "kind": "checkpoints"}, customdata=list(ck),
                hovertemplate="checkpoint step %{customdata}<extra></extra>"))
    fig.update_layout(title="Loss over training", xaxis_title="step", yaxis_title="cross-entropy (nats)",
                      height=HEIGHT + 40, hovermode="x unified")
    _log_x(fig, log_x, all_steps)
    _mark_steps(fig, marks or {}, log_x)
    return fig


def interpolate(steps: Sequence[int], values: Sequence[float], at: int) -> float:
    """Linear interpolation of a logged curve at a step (clamped to its ends)."""
    if not len(steps):
        return math.nan
    if at <= steps[0]:
        return float(values[0])
    for (s0, v0), (s1, v1) in zip(zip(steps, values), zip(steps[1:], values[1:])):
        if s0 <= at <= s1:
            return float(v0) if s1 == s0 else float(v0 + (v1 - v0) * (at - s0) / (s1 - s0))
    return float(values[-1])


def head_heatmap(matrix: Matrix, title: str, colorbar: str, zmid: float | None = None,
                 selected: Sequence[tuple[int, int]] = (), clickable: bool = False,
                 errors: Matrix | None = None) -> go.Figure:
    """[layer x head] values as a heatmap, layer 0 at the top as in circuit diagrams; `selected`
    heads get a box drawn around them (the heads being ablated). With `errors` (a standard error
    per cell, same shape) the hover reads "value ± SE"."""
    n_layer = len(matrix)
    n_head = len(matrix[0]) if n_layer else 0
    if errors is not None and (len(errors) != n_layer or any(len(r) != n_head for r in errors)):
        raise ValueError(f"errors must have the matrix's shape {n_layer} x {n_head}.")
    se = None if errors is None else [[_num(v) for v in row] for row in errors]
    hover = "layer %{y}, head %{x}: %{z:.4f}" + ("" if se is None else " ± %{customdata:.4f} (SE)")
    fig = go.Figure(go.Heatmap(
        z=[list(map(float, row)) for row in matrix], x=list(range(n_head)), y=list(range(n_layer)),
        colorscale="RdBu_r" if zmid is not None else "Viridis", zmid=zmid, customdata=se,
        colorbar={"title": colorbar}, hovertemplate=hover + "<extra></extra>"))
    if clickable:
        # Heatmap cells do not emit selection events in Streamlit; an invisible marker on each
        # cell does, so clicking a cell selects (layer, head).
        cells = [(l, h) for l in range(n_layer) for h in range(n_head)]
        value = "%{customdata[0]:.4f}" + ("" if se is None else " ± %{customdata[1]:.4f} (SE)")
        fig.add_trace(go.Scatter(
            x=[h for _, h in cells], y=[l for l, _ in cells], mode="markers", showlegend=False,
            marker={"size": 28, "opacity": 0, "color": "black"}, name="cells", meta={"role": "click-target"},
            customdata=[[float(matrix[l][h])] + ([] if se is None else [se[l][h]]) for l, h in cells],
            hovertemplate=f"layer %{{y}}, head %{{x}}: {value}<extra></extra>"))
    for layer, head in selected:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line={"color": "black", "width": 3})
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=HEIGHT)
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1)
    return fig


def ablation_precision_note(precision: Mapping | None) -> str | None:
    """One sentence on how precise a checkpoint's ablation deltas are (the result's `precision`),
    or None for results computed before standard errors were recorded."""
    if not isinstance(precision, Mapping) or not isinstance(precision.get("achieved_se"), (int, float)):
        return None
    n, tokens, achieved = precision.get("n_sequences"), precision.get("tokens"), float(precision["achieved_se"])
    target = precision.get("target_se")
    goal = "" if not isinstance(target, (int, float)) else (
        f" (target ≤ {target:.4f}: {'met' if achieved <= target else 'not met, the sequence cap was reached'})")
    return (f"± is one standard error over {n} held-out sequences ({tokens:,} tokens), the sequences taken as "
            f"independent units; the largest SE of any head and kind is {achieved:.4f} nats{goal}.")


def head_small_multiples(steps: Sequence[int], matrices: Sequence[Matrix], title: str,
                         y_title: str, log_x: bool = True,
                         marks: Mapping[str, int | None] | None = None,
                         errors: Sequence[Matrix | None] | None = None) -> go.Figure:
    """How every head's value evolves: one panel per layer, one line per head, over steps.
    `matrices[i]` is the [layer][head] matrix at `steps[i]`; `errors[i]`, when given, its standard
    errors, drawn as error bars (a step without them, None, gets none)."""
    n_layer = len(matrices[0]) if matrices else 0
    n_head = len(matrices[0][0]) if n_layer else 0
    cols = min(n_layer, 4) or 1
    rows = max(1, math.ceil(n_layer / cols))
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True,
                        subplot_titles=[f"layer {l}" for l in range(n_layer)])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    for layer in range(n_layer):
        for head in range(n_head):
            bars = None
            if errors is not None:
                bars = {"type": "data", "visible": True, "thickness": 1,
                        "array": [None if e is None else _num(e[layer][head]) for e in errors]}
            fig.add_trace(go.Scatter(
                x=x_of(steps, log_x), y=[float(m[layer][head]) for m in matrices], mode="lines+markers",
                error_y=bars,
                marker={"size": 4}, line={"color": palette[head % len(palette)]},
                name=f"head {head}", legendgroup=f"head {head}", showlegend=layer == 0,
                meta={"layer": layer, "head": head},
                hovertemplate=f"L{layer}H{head} step %{{x}}: %{{y:.4f}}<extra></extra>"),
                row=layer // cols + 1, col=layer % cols + 1)
    fig.update_layout(title=title, height=max(HEIGHT, 260 * rows + 80))
    fig.update_yaxes(title_text=y_title, col=1)
    _log_x(fig, log_x, steps)
    _mark_steps(fig, marks or {}, log_x)
    return fig


def scalar_series(series: Mapping[str, Series], title: str, y_title: str, log_x: bool = True,
                  marks: Mapping[str, int | None] | None = None,
                  secondary: Mapping[str, Series] | None = None, secondary_title: str = "",
                  log_y: bool = False) -> go.Figure:
    """Scalars over training, one line each, with emergence steps marked. `secondary` curves go on
    a right-hand axis (held-out loss beside a generation metric: the loss-generation mismatch)."""
    fig = make_subplots(specs=[[{"secondary_y": bool(secondary)}]])
    all_steps: list[int] = []
    for name, (steps, values) in series.items():
        all_steps += list(steps)
        fig.add_trace(go.Scatter(x=x_of(steps, log_x), y=[_num(v) for v in values], mode="lines+markers",
                                 name=name, meta={"series": name}), secondary_y=False)
    for name, (steps, values) in (secondary or {}).items():
        all_steps += list(steps)
        fig.add_trace(go.Scatter(x=x_of(steps, log_x), y=[_num(v) for v in values], mode="lines",
                                 line={"dash": "dot", "color": "gray"}, name=name,
                                 meta={"series": name, "secondary": True}), secondary_y=True)
    fig.update_layout(title=title, height=HEIGHT, hovermode="x unified")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=y_title, secondary_y=False, type="log" if log_y else None)
    if secondary:
        fig.update_yaxes(title_text=secondary_title, secondary_y=True)
    _log_x(fig, log_x, all_steps)
    _mark_steps(fig, marks or {}, log_x)
    return fig


def unique_labels(tokens: Sequence[str]) -> list[str]:
    """Axis labels for tokens: a categorical Plotly axis merges equal labels, so each token is
    prefixed with its position; whitespace is made visible."""
    return [f"{i}:{t.replace(' ', '␣').replace(chr(10), '⏎')}" for i, t in enumerate(tokens)]


def attention_pattern(pattern: Matrix, tokens: Sequence[str], title: str) -> go.Figure:
    """One head's attention pattern [query][key] with the prompt's tokens on both axes."""
    labels = unique_labels(tokens)
    fig = go.Figure(go.Heatmap(z=[list(map(float, row)) for row in pattern], x=labels, y=labels,
                               colorscale="Blues", zmin=0.0, zmax=1.0, colorbar={"title": "attention"},
                               hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="key (attended to)", yaxis_title="query (attending)",
                      height=max(HEIGHT, 18 * len(tokens) + 160))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60)
    return fig


def exposure_label(canaries: Sequence[Mapping]) -> tuple[str, str]:
    """(axis title, short note for the figure title) saying how the canaries' exposure was measured
    and |R|. Results written before the method was recorded held the rank exposure among
    n_candidates candidates, which saturates at log2 n_candidates; the label says that too."""
    def first(key: str):
        return next((c.get(key) for c in canaries if c.get(key) is not None), None)
    n = max((int(c["n_candidates"]) for c in canaries if c.get("n_candidates")), default=None)
    if first("exposure_method") is None:
        if n is None or n < 2:
            return "exposure (bits)", ""
        return (f"exposure (bits, rank among {n}; max log2 {n} = {math.log2(n):.1f})",
                f"exposure = rank among {n} candidates, saturating at {math.log2(n):.1f} bits")
    log2_r = first("randomness_space_log2")
    space = f"log2|R| = {log2_r:.1f}" if log2_r is not None else "|R| unknown"
    fitted = "draws from R" if log2_r is not None else "listed alternatives"
    note = f"exposure extrapolated, {space}" + (f", fitted to {n - 1} {fitted}" if n else "")
    return f"exposure (bits, extrapolated; {space})", note


def canaries_vs_copies(canaries: Sequence[Mapping[str, float]], title: str) -> go.Figure:
    """Canary extraction rate and exposure against how many copies were planted (log x): the
    duplication-memorization curve at one checkpoint. The exposure axis, the title and the hover
    say how exposure was measured and |R|; the rank exposure, when present, is drawn with its cap
    (log2 of the candidates), which it cannot pass however well the canary is memorized."""
    rows = sorted(canaries, key=lambda c: c["copies"])
    copies = [int(c["copies"]) for c in rows]
    axis, note = exposure_label(rows)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=copies, y=[_num(c["extracted_fraction"]) for c in rows],
                             mode="lines+markers", name="extracted fraction", meta={"series": "extracted"}),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=copies, y=[_num(c.get("exposure")) for c in rows], mode="lines+markers",
                             line={"dash": "dot"}, name=axis, meta={"series": "exposure"},
                             hovertemplate="%{x} copies<br>" + axis.replace("(bits, ", "%{y:.1f} bits (")
                             + "<extra></extra>"), secondary_y=True)
    caps = [_num(c.get("exposure_rank_cap")) for c in rows]
    if any(c.get("exposure_rank") is not None for c in rows) and any(v is not None for v in caps):
        cap = max(v for v in caps if v is not None)
        fig.add_trace(go.Scatter(x=copies, y=[_num(c.get("exposure_rank")) for c in rows], mode="lines+markers",
                                 line={"dash": "dash"}, name=f"rank exposure (max log2 n = {cap:.1f})",
                                 meta={"series": "exposure_rank"}, customdata=[[v] for v in caps],
                                 hovertemplate="%{x} copies<br>rank exposure %{y:.2f} bits "
                                 "(max %{customdata[0]:.1f})<extra></extra>"), secondary_y=True)
        fig.add_trace(go.Scatter(x=[min(copies), max(copies)], y=[cap, cap], mode="lines",
                                 line={"dash": "dot", "width": 1, "color": "grey"},
                                 name=f"rank exposure cap (log2 n = {cap:.1f})", meta={"series": "rank_cap"},
                                 hoverinfo="skip"), secondary_y=True)
    fig.update_layout(title=f"{title} ({note})" if note else title, height=HEIGHT)
    fig.update_xaxes(type="log", title_text="copies in training data")
    fig.update_yaxes(title_text="extracted fraction", range=[-0.05, 1.05], secondary_y=False)
    fig.update_yaxes(title_text=axis, secondary_y=True)
    return fig


def canaries_over_training(steps: Sequence[int], per_step: Sequence[Sequence[Mapping[str, float]]],
                           field: str, title: str, log_x: bool = True,
                           marks: Mapping[str, int | None] | None = None) -> go.Figure:
    """One line per duplication count: `field` (extracted_fraction or exposure) over training."""
    groups = sorted({int(c["copies"]) for canaries in per_step for c in canaries})
    series: dict[str, Series] = {}
    for copies in groups:
        xs, ys = [], []
        for step, canaries in zip(steps, per_step):
            match = [c for c in canaries if int(c["copies"]) == copies]
            if match:
                xs.append(step)
                ys.append(match[0].get(field))
        series[f"{copies} copies"] = (xs, ys)
    return scalar_series(series, title, field.replace("_", " "), log_x=log_x, marks=marks)


RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]


def run_overlay(runs: Mapping[str, Mapping[str, Series]], title: str, y_title: str, log_x: bool = False,
                log_y: bool = False, markers: Mapping[str, Series] | None = None,
                marker_name: str = "loss spikes") -> go.Figure:
    """Several runs over training steps: one colour per run, one dash per quantity (train and
    held-out, greedy and sampled), so runs compare across a figure and quantities within it.

    `runs[label][quantity]` is (steps, values); empty series are left out. `markers[label]` are
    points drawn as crosses in the run's colour (loss spikes), named with their count."""
    fig = go.Figure()
    all_steps: list[int] = []
    for i, (label, quantities) in enumerate(runs.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        for j, (quantity, (steps, values)) in enumerate(quantities.items()):
            if not len(steps):
                continue
            all_steps += list(steps)
            fig.add_trace(go.Scatter(
                x=x_of(steps, log_x), y=[_num(v) for v in values], mode="lines+markers" if len(steps) <= 60 else "lines",
                opacity=1.0 if len(steps) <= 60 else 0.6,  # a per-step curve must not hide sparse ones
                name=f"{label} · {quantity}" if quantity else label, legendgroup=label,
                line={"color": colour, "dash": DASHES[j % len(DASHES)], "width": 1.5}, marker={"size": 5},
                meta={"run": label, "series": quantity}))
        if markers and label in markers:
            steps, values = markers[label]
            fig.add_trace(go.Scatter(
                x=x_of(steps, log_x), y=[_num(v) for v in values], mode="markers", legendgroup=label,
                name=f"{label} · {len(steps)} {marker_name}", marker={"symbol": "x", "size": 10, "color": colour},
                meta={"run": label, "series": marker_name}))
    fig.update_layout(title=title, height=HEIGHT + 40, hovermode="x unified", legend={"groupclick": "toggleitem"})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=y_title, type="log" if log_y else None)
    _log_x(fig, log_x, all_steps)
    return fig
