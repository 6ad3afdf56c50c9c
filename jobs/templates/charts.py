"""Vega-Lite specs for template results, built with Altair (rendered by vega-embed)."""

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
