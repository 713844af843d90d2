"""The Circuits page's figure builders: the role map (every head at every checkpoint, coloured by
what it attends to, beside its OV circuit's copying score), the composition graph of the heads
(nodes by layer, an edge for each Q-, K- or V-composition score above its chance baseline) with one
animation frame per checkpoint, and the rows of the table of the summary's circuit events. Like
app.figures, they take plain numbers (the `head_roles` and `composition` entries as the probes
write them, summary["circuits"]) and return a `go.Figure` or rows; nothing here knows Streamlit.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from probes.measure.composition import KINDS, head_name
from probes.measure.head_roles import ROLES

from .figure_common import HEIGHT, Matrix

# Copying is read off the weights (what a head writes), the others off attention (where it looks):
# an induction head also copies, so one colour per cell would hide every induction head behind its
# copying score. The map colours the attention roles and draws copying in a panel of its own.
WEIGHT_ROLES = ("copying",)
ATTENTION_ROLES = tuple(r for r in ROLES if r not in WEIGHT_ROLES)
ROLE_COLOURS = {"previous_token": "#1f77b4", "duplicate_token": "#9467bd", "induction": "#d62728",
                "sink": "#bcbd22", "local": "#ff7f0e", "copying": "#2ca02c"}
ROLE_LABELS = {"previous_token": "previous token", "duplicate_token": "duplicate token", "induction": "induction",
               "sink": "sink (first token)", "local": "local", "copying": "copying (OV circuit)"}
KIND_COLOURS = {"q": "#17becf", "k": "#e377c2", "v": "#8c564b"}
KIND_LABELS = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}
KIND_OFFSET = {"q": -0.14, "k": 0.0, "v": 0.14}  # the three kinds of one pair side by side
EDGE_WIDTHS = (1.5, 3.0, 4.5, 6.0)  # by how far above its baseline, in quarters of the run's largest excess
NO_ROLE = "rgba(235, 235, 235, 1)"
ROLE_RULE = ("Each cell is a head at a checkpoint, coloured by the attention role whose score stands furthest "
             "above its chance level as a share of the way to a perfect score, strength = (score − chance) / "
             "(1 − chance); its opacity is √strength; blank where no role is above chance. Chance is what a head "
             "attending evenly over its causal prefix scores on the same tokens (head_roles.chance). Copying "
             "(the OV circuit's eigenvalues, from the weights) is drawn below: an induction head also copies, so "
             "one colour per cell would hide it.")


def role_strength(score: float, chance: float) -> float:
    """How far `score` stands above `chance`, as a share of the way to a perfect score of 1: 0 at
    chance, 1 for a perfect score, negative below chance (every role's score is at most 1)."""
    return (float(score) - float(chance)) / (1.0 - float(chance)) if float(chance) < 1.0 else 0.0


def dominant_role(scores: Mapping[str, float], chance: Mapping[str, float],
                  roles: Sequence[str] = ATTENTION_ROLES) -> tuple[str | None, float]:
    """(role, strength) of the role of `roles` with the largest strength (role_strength; the first
    in `roles` on a tie), or (None, 0.0) when none is above chance."""
    have = [r for r in roles if r in scores]
    if not have:
        return None, 0.0
    best = max(have, key=lambda r: role_strength(scores[r], chance.get(r, 0.0)))
    strength = role_strength(scores[best], chance.get(best, 0.0))
    return (best, min(1.0, strength)) if strength > 0 else (None, 0.0)


def role_cells(scores: Mapping[str, Matrix], chance: Mapping[str, float]) -> list[list[tuple[str | None, float]]]:
    """[layer][head] dominant_role of one checkpoint: `scores[role]` its [L][H] matrix."""
    first = next(iter(scores.values()))
    return [[dominant_role({r: m[l][h] for r, m in scores.items()}, chance) for h in range(len(first[l]))]
            for l in range(len(first))]


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha:.3f})"


def role_colour(role: str | None, strength: float) -> str:
    """A cell's or node's colour: the role's, with opacity √strength; light grey for no role."""
    return NO_ROLE if role is None else _rgba(ROLE_COLOURS[role], math.sqrt(max(0.0, min(1.0, strength))))


def _ramp(colour: str) -> list[list]:
    """A colorscale over strength 0..1 whose opacity is √strength (stops at squares, so the linear
    interpolation between them stays close)."""
    return [[(i / 10) ** 2, _rgba(colour, i / 10)] for i in range(11)]


def role_map(steps: Sequence[int], scores: Sequence[Mapping[str, Matrix]], chance: Sequence[Mapping[str, float]],
             mark_step: int | None = None, title: str = "Head roles over training") -> go.Figure:
    """Heads (rows, L0H0 on top) x checkpoints (columns, one each, in order). Top: each cell
    coloured by dominant_role of the attention roles (one Heatmap per role; z the strength where
    that role wins, None elsewhere; the colour's opacity √strength). Bottom: the copying score of
    each head's OV circuit in [-1, 1]. `scores[i][role]` is the [L][H] matrix at `steps[i]`,
    `chance[i]` its chance levels; `mark_step` outlines that checkpoint's column."""
    x = [str(int(s)) for s in steps]
    shape = next(iter(scores[0].values())) if scores else []
    heads = [(l, h) for l in range(len(shape)) for h in range(len(shape[l]))]
    names = [head_name(l, h) for l, h in heads]
    cells = [role_cells({r: m for r, m in s.items() if r in ATTENTION_ROLES}, c) for s, c in zip(scores, chance)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                        subplot_titles=("", "copying: what each head's OV circuit writes"))
    for role in ATTENTION_ROLES:
        z = [[cells[i][l][h][1] if cells[i][l][h][0] == role else None for i in range(len(steps))] for l, h in heads]
        text = [[f"{ROLE_LABELS[role]}: score {float(scores[i][role][l][h]):.3f}, chance {chance[i].get(role, 0):.3f}"
                 if cells[i][l][h][0] == role else None for i in range(len(steps))] for l, h in heads]
        fig.add_trace(go.Heatmap(z=z, x=x, y=names, text=text, zmin=0.0, zmax=1.0, colorscale=_ramp(ROLE_COLOURS[role]),
                                 showscale=False, xgap=1, ygap=1, hoverongaps=False, name=ROLE_LABELS[role],
                                 meta={"role": role},
                                 hovertemplate="%{y} · step %{x}<br>%{text}<br>strength %{z:.3f}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=ROLE_LABELS[role], legendgroup=role,
                                 marker={"color": ROLE_COLOURS[role], "size": 12, "symbol": "square"},
                                 meta={"legend": role}), row=1, col=1)
    if all("copying" in s for s in scores):
        copying = [[float(scores[i]["copying"][l][h]) for i in range(len(steps))] for l, h in heads]
        fig.add_trace(go.Heatmap(z=copying, x=x, y=names, zmin=-1.0, zmax=1.0, zmid=0.0, colorscale="PRGn",
                                 xgap=1, ygap=1, name=ROLE_LABELS["copying"], meta={"role": "copying"},
                                 colorbar={"title": "copying", "len": 0.38, "y": 0.19},
                                 hovertemplate="%{y} · step %{x}<br>copying %{z:.3f}<extra></extra>"), row=2, col=1)
    n_head = len(shape[0]) if len(shape) else 0
    for row in (1, 2):
        for layer in range(1, len(shape)):  # a line between layers
            fig.add_hline(y=layer * n_head - 0.5, line={"color": "black", "width": 1}, row=row, col=1)
    if mark_step is not None and str(int(mark_step)) in x:
        i = x.index(str(int(mark_step)))
        for row in (1, 2):
            fig.add_shape(type="rect", x0=i - 0.5, x1=i + 0.5, y0=-0.5, y1=len(names) - 0.5, row=row, col=1,
                          line={"color": "black", "width": 2}, name=f"step {int(mark_step)}")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_xaxes(title_text="checkpoint step", row=2, col=1)
    per_head = max(14, min(40, 1200 // max(1, len(names))))  # pixels: 40 up to 30 heads, GPT-2 small's 144 at 14
    fig.update_layout(title=title, height=max(HEIGHT, per_head * len(names) + 220), plot_bgcolor="white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0,
                              "title": {"text": "what each head attends to:"}})
    return fig


def edges_above(composition: Mapping[str, Any]) -> list[dict]:
    """Every pair of a head and a later head whose score exceeds the pair's baseline threshold in
    one `composition` result: {kind, writer, reader ((layer, head) each), score, threshold,
    excess = score - threshold}, by kind and heads."""
    out = []
    thresholds = composition["baseline"]["threshold"]
    for kind in KINDS:
        scores, limit = composition[kind], thresholds[kind]
        for l1, rows in enumerate(scores):
            for h1, readers in enumerate(rows):
                for l2 in range(l1 + 1, len(readers)):
                    for h2, score in enumerate(readers[l2]):
                        if float(score) > float(limit[l1][h1][l2][h2]):
                            out.append({"kind": kind, "writer": (l1, h1), "reader": (l2, h2), "score": float(score),
                                        "threshold": float(limit[l1][h1][l2][h2]),
                                        "excess": float(score) - float(limit[l1][h1][l2][h2])})
    return out


def edge_width(excess: float, largest: float) -> float:
    """An edge's line width: EDGE_WIDTHS by its excess over its baseline in quarters of `largest`
    (the largest excess of the run, so widths compare across checkpoints)."""
    if largest <= 0:
        return EDGE_WIDTHS[0]
    level = math.ceil(len(EDGE_WIDTHS) * min(1.0, excess / largest)) - 1
    return EDGE_WIDTHS[max(0, level)]


def _edge_points(edge: Mapping) -> tuple[list[float | None], list[float | None]]:
    """writer -> (a bend for edges that skip layers) -> reader, then a gap, as x and y lists."""
    (l1, h1), (l2, h2) = edge["writer"], edge["reader"]
    dy = KIND_OFFSET[edge["kind"]]
    bend = 0.35 * (l2 - l1 - 1)  # around the layers in between rather than through their heads
    return [l1, (l1 + l2) / 2, l2, None], [h1 + dy, (h1 + h2) / 2 + dy + bend, h2 + dy, None]


def _graph_traces(composition: Mapping[str, Any], roles: list[list[tuple[str | None, float]]] | None,
                  copying: Matrix | None, largest: float) -> list[go.Scatter]:
    """The traces of one checkpoint, always the same number in the same order (animation frames
    replace traces by position): per kind one line trace per width, then its midpoints (hover and
    legend); then the heads."""
    L = len(composition["k"])
    H = len(composition["k"][0]) if L else 0
    edges = edges_above(composition)
    traces = []
    for kind in KINDS:
        mine = [e for e in edges if e["kind"] == kind]
        for width in EDGE_WIDTHS:
            xs, ys = [], []
            for e in mine:
                if edge_width(e["excess"], largest) == width:
                    ex, ey = _edge_points(e)
                    xs += ex
                    ys += ey
            traces.append(go.Scatter(x=xs, y=ys, mode="lines", line={"color": KIND_COLOURS[kind], "width": width},
                                     hoverinfo="skip", showlegend=False, legendgroup=kind,
                                     meta={"kind": kind, "width": width}))
        mid = [_edge_points(e) for e in mine]
        traces.append(go.Scatter(
            x=[p[0][1] for p in mid], y=[p[1][1] for p in mid], mode="markers", name=KIND_LABELS[kind],
            legendgroup=kind, marker={"color": KIND_COLOURS[kind], "size": 7},
            meta={"kind": kind, "edges": [[head_name(*e["writer"]), head_name(*e["reader"])] for e in mine]},
            text=[f"{KIND_LABELS[kind]} {head_name(*e['writer'])} → {head_name(*e['reader'])}: {e['score']:.3f} "
                  f"(baseline {e['threshold']:.3f})" for e in mine],
            hovertemplate="%{text}<extra></extra>"))
    heads = [(l, h) for l in range(L) for h in range(H)]
    colours = [role_colour(*roles[l][h]) if roles else NO_ROLE for l, h in heads]
    text = [head_name(l, h) + (f"<br>{ROLE_LABELS[roles[l][h][0]]}, strength {roles[l][h][1]:.2f}"
                               if roles and roles[l][h][0] else "<br>no attention role above chance" if roles else "")
            + (f"<br>copying {float(copying[l][h]):.2f}" if copying else "") for l, h in heads]
    traces.append(go.Scatter(x=[l for l, _ in heads], y=[h for _, h in heads], mode="markers+text",
                             text=[head_name(l, h) for l, h in heads], textposition="middle center",
                             textfont={"size": 10}, customdata=text, hovertemplate="%{customdata}<extra></extra>",
                             marker={"size": 38, "color": colours, "line": {"color": "black", "width": 1}},
                             name="heads", showlegend=False, meta={"heads": [head_name(l, h) for l, h in heads]}))
    return traces


def composition_graph(steps: Sequence[int], compositions: Sequence[Mapping[str, Any]],
                      roles: Sequence[list[list[tuple[str | None, float]]] | None] | None = None,
                      copying: Sequence[Matrix | None] | None = None, start_step: int | None = None,
                      title: str = "Composition between heads") -> go.Figure:
    """The heads as nodes (x: layer, y: head) and an edge from a head to a later one for each kind
    (q, k, v) whose score exceeds the pair's baseline threshold (edges_above), wider the further
    above (edge_width, on the run's largest excess); nodes coloured by their attention role
    (`roles[i]`: role_cells at `steps[i]`) when given. One animation frame per checkpoint, named by
    its step, with a slider and Play; the figure opens at `start_step` (the last by default)."""
    if not steps:
        return go.Figure(layout={"title": title})
    largest = max((e["excess"] for c in compositions for e in edges_above(c)), default=0.0)
    per_step = [_graph_traces(c, roles[i] if roles else None, copying[i] if copying else None, largest)
                for i, c in enumerate(compositions)]
    order = [int(s) for s in steps]
    start = order.index(int(start_step)) if start_step is not None and int(start_step) in order else len(order) - 1
    fig = go.Figure(data=per_step[start], frames=[go.Frame(data=t, name=str(int(s))) for s, t in zip(steps, per_step)])
    L = len(compositions[0]["k"])
    H = len(compositions[0]["k"][0]) if L else 0
    still = {"mode": "immediate", "frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0}}
    fig.update_layout(
        sliders=[{"active": start, "currentvalue": {"prefix": "step "}, "pad": {"t": 50, "b": 10}, "x": 0.12,
                  "len": 0.88, "y": 0, "yanchor": "top",
                  "steps": [{"label": str(int(s)), "method": "animate", "args": [[str(int(s))], still]}
                            for s in steps]}],
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0.12, "y": 0, "xanchor": "right", "yanchor": "top",
                      "pad": {"t": 87, "r": 10}, "buttons": [
                          {"label": "Play", "method": "animate",
                           "args": [None, {**still, "frame": {"duration": 500, "redraw": False}, "fromcurrent": True}]},
                          {"label": "Pause", "method": "animate", "args": [[None], still]}]}],
        title=f"{title} · step {int(steps[start])}", height=max(HEIGHT + 120, 50 * H + 260), plot_bgcolor="white",
        legend={"orientation": "h", "y": 1.08, "x": 0}, hovermode="closest")
    fig.update_xaxes(tickvals=list(range(L)), ticktext=[f"layer {l}" for l in range(L)], range=[-0.5, L - 0.5],
                     title_text="layer (what a head writes flows left to right)", showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=list(range(H)), ticktext=[f"head {h}" for h in range(H)], range=[H - 0.4, -0.6],
                     showgrid=False, zeroline=False)
    return fig


EVENTS = ("role appears", "handover", "edge rises")


def _number(v: Any) -> str:
    return f"{float(v):.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"


def event_rows(circuits: Mapping[str, Any] | None) -> list[dict]:
    """summary["circuits"]'s events as table rows, by step: {step, from step, event, what, heads,
    detail} for each role that appears (in its head; detail: its score there), handover (from head
    → to head; the new head's lead and the margin it had to beat) and composition edge that rises
    above its baseline (writer → reader; its score and the pair's threshold)."""
    if not isinstance(circuits, Mapping):
        return []
    rows = []
    for e in circuits.get("roles") or []:
        rows.append({"step": e["step"], "from step": e.get("from_step"), "event": "role appears",
                     "what": ROLE_LABELS.get(e["role"], e["role"]), "heads": e["head"],
                     "detail": f"score {_number(e.get('score'))}"})
    for e in circuits.get("handovers") or []:
        rows.append({"step": e["step"], "from step": e.get("from_step"), "event": "handover",
                     "what": ROLE_LABELS.get(e["role"], e["role"]), "heads": f"{e['from_head']} → {e['to_head']}",
                     "detail": f"lead {_number(e.get('lead'))} over the margin {_number(e.get('margin'))}"})
    for e in circuits.get("edges") or []:
        rows.append({"step": e["step"], "from step": e.get("from_step"), "event": "edge rises",
                     "what": KIND_LABELS.get(e["kind"], e["kind"]), "heads": f"{e['from_head']} → {e['to_head']}",
                     "detail": f"score {_number(e.get('score'))} over the baseline {_number(e.get('threshold'))}"})
    return sorted(rows, key=lambda r: (r["step"], EVENTS.index(r["event"]), r["what"], r["heads"]))


def appearances_caption(circuits: Mapping[str, Any] | None) -> str | None:
    """The roles that appear (role in head at step, from the checkpoint before) and, for those that
    do not, the reason summary["circuits"]["role_rises"] gives; None without a summary entry."""
    if not isinstance(circuits, Mapping):
        return None
    found = [f"{ROLE_LABELS.get(e['role'], e['role'])} in {e['head']} at step {e['step']} (from {e.get('from_step')})"
             for e in sorted(circuits.get("roles") or [], key=lambda e: e["step"])]
    appeared = {e["role"] for e in circuits.get("roles") or []}
    rises = circuits.get("role_rises") or {}
    absent = [f"{ROLE_LABELS.get(r, r)} ({rises[r].get('reason') or 'not detected'})" for r in ROLES
              if r not in appeared and isinstance(rises.get(r), Mapping)]
    text = ("Roles appear: " + "; ".join(found) + ".") if found else "No role appears."
    return text + (" Not appearing: " + "; ".join(absent) + "." if absent else "")


def k_edge_caption(entry: Mapping[str, Any] | None) -> str | None:
    """summary["circuits"]["induction_k_edge"] in words: the K-composition edge from the best
    previous-token head to the induction head, when it crosses its baseline and when its score
    rises, each against the induction change (within the share or not); or why there is none."""
    if not isinstance(entry, Mapping):
        return None
    if not entry.get("from_head"):
        return f"Induction K-edge: {entry.get('reason') or 'none'}." if entry.get("reason") else None
    change, share = entry.get("induction_step"), entry.get("within_share")
    within = (lambda ok: f"{'within' if ok else 'not within'} {float(share):.0%} of the induction change at step "
              f"{change}") if isinstance(share, (int, float)) else (lambda ok: f"induction change at step {change}")
    text = (f"Induction K-edge {entry['from_head']} → {entry['to_head']} (the best previous-token head of an earlier "
            "layer into the induction head): ")
    if entry.get("crossing_step") is not None:
        text += (f"crosses its baseline at step {entry['crossing_step']} (from {entry.get('crossing_from_step')}), "
                 f"{within(entry.get('crossing_lines_up'))}")
    else:
        text += "never crosses its baseline"
    rise = entry.get("rise") if isinstance(entry.get("rise"), Mapping) else {}
    if rise.get("detected"):
        text += (f"; its score rises at step {rise.get('step')} (from {rise.get('from_step')}, "
                 f"{_number(rise.get('before'))} → {_number(rise.get('after'))}), "
                 f"{within(entry.get('rise_lines_up'))}")
    elif rise:
        text += f"; no rise of its score clear of noise ({rise.get('reason') or 'not detected'})"
    return text + "."
