"""How each template's result is drawn (Vega-Lite via Altair). The templates themselves
(jobs/templates) are definitions: parameters, SQL, preparation; drawing is the web app's.
Segment templates show their segments' sizes; an aggregate template without a chart of
its own gets the bar charts of any plain result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt

from jobs.templates.base import Template
from jobs.templates.membership_health import HORIZONS
from web import charts
from yushan.models import JobKind


def omnichannel(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Online and offline spend side by side for each tier."""
    return charts.spec(
        alt.Chart(charts.data(rows))
        .transform_fold(["online_spend", "offline_spend"], as_=["channel", "spend"])
        .mark_bar().encode(
            x=alt.X("tier:N", title="tier"),
            y=alt.Y("spend:Q", title="spend"),
            color=alt.Color("channel:N", title="channel"),
            xOffset=alt.XOffset("channel:N"),
            tooltip=["tier:N", "channel:N", "spend:Q"],
        )
    )


def membership_health(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Points expiring per store, one bar group per horizon, faceted by tier colour."""
    long = [
        {"store": r["store"], "tier": r["tier"], "horizon": f"{days} days",
         "points": r.get(f"expiring_{days}d") or 0}
        for r in rows for days in HORIZONS
    ]
    return charts.spec(
        alt.Chart(charts.data(long)).mark_bar().encode(
            x=alt.X("store:N", title="store"),
            y=alt.Y("sum(points):Q", title="points expiring"),
            color=alt.Color("horizon:N", title="within", sort=[f"{d} days" for d in HORIZONS]),
            xOffset=alt.XOffset("horizon:N", sort=[f"{d} days" for d in HORIZONS]),
            tooltip=["store:N", "horizon:N", "sum(points):Q"],
        )
    )


def store_overlap(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A heat map: the share of store a's members who also bought at store b."""
    return charts.spec(
        alt.Chart(charts.data(rows)).mark_rect().encode(
            x=alt.X("store_b:N", title="also bought at"),
            y=alt.Y("store_a:N", title="members of"),
            color=alt.Color("share_of_a:Q", title="share", scale=alt.Scale(scheme="blues")),
            tooltip=["store_a:N", "store_b:N", "shared_members:Q", "share_of_a:Q"],
        )
    )


CHARTS: dict[str, Callable[[list[str], list[dict[str, Any]]], dict[str, Any]]] = {
    "omnichannel": omnichannel,
    "membership_health": membership_health,
    "store_overlap": store_overlap,
}


def template_chart(template: Template, columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Vega-Lite spec of a template job's result. For segment templates ``rows`` are
    the segment summary (``{"segment", "members"}``)."""
    if template.kind is JobKind.SEGMENT:
        return charts.segment_sizes(rows)
    draw = CHARTS.get(template.name)
    if draw is not None:
        return draw(columns, rows)
    found = charts.result_charts(columns, rows)
    return found[0]["spec"] if found else charts.bar(rows, columns[0], columns[-1])
