"""Charts of plain SQL results: which results get one (one label column, numeric columns),
dp values drawn with their noise range, and a text alternative in the reader's language
that reads the bars out."""

from __future__ import annotations

from web.charts import MAX_BARS, result_charts, result_shape

ROWS = [{"city": "杭州", "n": 70, "spend": 1234.5}, {"city": "Jinan", "n": 58, "spend": None},
        {"city": None, "n": 3, "spend": 10.0}]


def test_one_label_column_and_numeric_columns_make_a_chart():
    assert result_shape(["city", "n", "spend"], ROWS) == ("city", ["n", "spend"])
    # all numeric: the first column labels the bars (vip_level 0..7)
    assert result_shape(["vip_level", "n"], [{"vip_level": 1, "n": 5}]) == ("vip_level", ["n"])
    # two text columns, a text value in a numeric column, one column, no rows: no chart
    assert result_shape(["segment", "member"], [{"segment": "a", "member": "x"}]) is None
    assert result_shape(["city", "n"], [{"city": "a", "n": 1}, {"city": "b", "n": "many"}]) is None
    assert result_shape(["n"], [{"n": 1}]) is None
    assert result_shape(["city", "n"], []) is None
    assert result_shape(["city", "ok"], [{"city": "a", "ok": True}]) is None  # booleans are no measure


def test_each_numeric_column_is_a_bar_chart_in_the_rows_order():
    charts = result_charts(["city", "n", "spend"], ROWS)
    assert [c["column"] for c in charts] == ["n", "spend"]
    n = charts[0]
    assert n["label"] == "city" and n["ci95"] is None
    assert n["points"] == [("杭州", 70.0), ("Jinan", 58.0), ("—", 3.0)]
    spec = n["spec"]
    assert spec["width"] == "container"  # as wide as its card, on a phone too
    bars = spec["layer"][0]
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["y"]["sort"] is None
    assert spec["data"]["values"][0] == {"label": "杭州", "value": 70.0}
    # a missing value is no bar
    assert [p[0] for p in charts[1]["points"]] == ["杭州", "—"]
    rows = [{"k": f"g{i}", "v": i} for i in range(MAX_BARS + 5)]
    assert len(result_charts(["k", "v"], rows)[0]["points"]) == MAX_BARS


def test_dp_values_carry_their_noise_range():
    chart = result_charts(["city", "n"], ROWS, {"n": {"ci95": 12.5}})[0]
    assert chart["ci95"] == 12.5
    assert chart["spec"]["data"]["values"][0] == {"label": "杭州", "value": 70.0, "low": 57.5, "high": 82.5}
    rule = chart["spec"]["layer"][1]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["x2"]["field"] == "high"
    assert "± 12.50" in chart["spec"]["layer"][0]["encoding"]["x"]["title"]


def test_the_text_alternative_reads_the_bars_in_the_readers_language(make_config):
    from flask_babel import force_locale

    from web import create_app
    from web.pages import chart_views

    app = create_app(make_config())
    rows = [{"city": f"c{i}", "n": i * 1000} for i in range(15)]
    with app.test_request_context():
        en = chart_views(["city", "n"], rows, {"n": {"ci95": 2.0}})[0]
        with force_locale("zh_CN"):
            zh = chart_views(["city", "n"], rows)[0]
    assert en["description"].startswith("Bar chart of n by city, 15 bars. c0: 0 ± 2.00; c1: 1,000 ± 2.00")
    assert en["description"].endswith("; and 3 more.")
    assert "95% noise range (± 2.00)" in en["caption"]
    assert en["spec"]["description"] == en["description"]  # the drawing's own accessible name
    assert zh["description"].startswith("条形图：按 city 显示 n，共 15 条。") and "另有 3 项" in zh["description"]
