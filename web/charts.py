"""Vega-Lite specs of results, built with Altair (rendered by vega-embed): the web app's
charts. Templates are definitions (jobs/templates); how their results are drawn lives here
(:mod:`web.template_charts`)."""

from __future__ import annotations

from typing import Any

import altair as alt

WIDTH = 420
HEIGHT = 260


def spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart as a plain Vega-Lite dict (data inline: the rows already released)."""
    return chart.properties(width=WIDTH, height=HEIGHT).to_dict()


def data(rows: list[dict[str, Any]]) -> alt.Data:
    return alt.Data(values=rows)


def bar(rows: list[dict[str, Any]], x: str, y: str, color: str | None = None, *,
        x_title: str | None = None, y_title: str | None = None) -> dict[str, Any]:
    """A bar chart of ``y`` by ``x`` (stacked by ``color`` when given)."""
    encoding: dict[str, Any] = {
        "x": alt.X(f"{x}:N", title=x_title or x, sort=None),
        "y": alt.Y(f"{y}:Q", title=y_title or y),
        "tooltip": [alt.Tooltip(f"{x}:N"), alt.Tooltip(f"{y}:Q")],
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N", title=color)
        encoding["xOffset"] = alt.XOffset(f"{color}:N")
        encoding["tooltip"].append(alt.Tooltip(f"{color}:N"))
    return spec(alt.Chart(data(rows)).mark_bar().encode(**encoding))


def segment_sizes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Segment outputs are (segment, member): the chart shows each segment's size
    (rows of the segment summary: ``{"segment", "members"}``)."""
    return spec(
        alt.Chart(data(rows)).mark_bar().encode(
            x=alt.X("segment:N", title="segment", sort="-y"),
            y=alt.Y("members:Q", title="members"),
            tooltip=["segment:N", "members:Q"],
        )
    )


# --- a chart for any plain SQL result --------------------------------------------------

MAX_BARS = 50
BAR_STEP = 22


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def result_shape(columns: list[str], rows: list[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """The label column and the numeric columns of a result a bar chart can show, or None.

    The label is the one column that is not numeric (or, when every column is numeric,
    the first, e.g. ``vip_level``); the measures are the other columns, each numeric in
    every row that has a value."""
    if len(columns) < 2 or not rows:
        return None

    def numeric(column: str) -> bool:
        values = [r.get(column) for r in rows if r.get(column) is not None]
        return bool(values) and all(_number(v) for v in values)

    texts = [c for c in columns if not numeric(c)]
    if len(texts) > 1:
        return None
    label = texts[0] if texts else columns[0]
    measures = [c for c in columns if c != label]
    if not measures or not all(numeric(c) for c in measures):
        return None
    return label, measures


def result_charts(columns: list[str], rows: list[dict[str, Any]],
                  accuracy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One horizontal bar chart per numeric column of a plain SQL result (labels down the
    side read well in any script and on a phone), in the rows' order, at most
    ``MAX_BARS`` bars; a dp column's bars carry its 95% noise range (± ci95) as error bars.
    Each item: ``column``, ``label``, ``ci95`` (or None), ``points`` (label, value) and
    ``spec`` (Vega-Lite, as wide as its container). Empty when the result does not fit."""
    shape = result_shape(columns, rows)
    if shape is None:
        return []
    label, measures = shape
    charts = []
    for column in measures:
        raw = ((accuracy or {}).get(column) or {}).get("ci95")
        ci = float(raw) if raw is not None and _number(raw) else None
        points = [("—" if r.get(label) is None else str(r.get(label)), float(r[column]))
                  for r in rows[:MAX_BARS] if r.get(column) is not None]
        values = [{"label": name, "value": value,
                   **({"low": value - ci, "high": value + ci} if ci is not None else {})}
                  for name, value in points]
        bars = alt.Chart().mark_bar(color="#2f6f4f", opacity=0.8).encode(
            y=alt.Y("label:N", title=label, sort=None, axis=alt.Axis(labelLimit=160)),
            x=alt.X("value:Q", title=column + (f" (± {ci:,.2f})" if ci is not None else "")),
            tooltip=[alt.Tooltip("label:N", title=label),
                     alt.Tooltip("value:Q", title=column, format=",.2f")],
        )
        layers = [bars]
        if ci is not None:
            layers.append(alt.Chart().mark_rule(color="#1f2933", strokeWidth=2).encode(
                y=alt.Y("label:N", sort=None), x="low:Q", x2="high:Q"))
        chart = alt.layer(*layers, data=alt.Data(values=values)).properties(
            width="container", height=alt.Step(BAR_STEP))
        charts.append({"column": column, "label": label, "ci95": ci, "points": points,
                       "spec": chart.to_dict()})
    return charts
