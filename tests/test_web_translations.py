"""The Chinese interface is complete: every string the web app shows (templates and
Python) and every policy explanation template (extracted as `make translations` does,
web/i18n.py) has a zh-CN translation with the same
placeholders, the compiled catalog that ships matches the source catalog, and policy
explanations are shown from their translated templates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

import web

WEB = Path(web.__file__).parent
CATALOG = WEB / "translations" / "zh_Hans_CN" / "LC_MESSAGES"
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{(\w+)\}")


def extracted() -> dict[str, str]:
    """msgid -> where it is used: the web app's strings and the policy templates."""
    from web.i18n import all_messages

    return all_messages()


@pytest.fixture(scope="module")
def catalog():
    with (CATALOG / "messages.po").open("rb") as fh:
        return read_po(fh, locale="zh_Hans_CN")


def test_every_string_of_the_web_app_is_translated(catalog):
    strings = extracted()
    assert len(strings) > 250  # the extraction found the app's strings at all
    from web.i18n import policy_messages

    assert len(policy_messages()) > 10  # and the policy engine's explanation templates
    untranslated = []
    for msgid, where in sorted(strings.items()):
        message = catalog.get(msgid)
        if message is None or not message.string or message.fuzzy:
            untranslated.append(f"{where}: {msgid!r}")
    assert not untranslated, ("untranslated (run `make translations`, then translate):\n"
                              + "\n".join(untranslated))


def test_translations_keep_their_placeholders(catalog):
    wrong = []
    for message in catalog:
        if not message.id or not message.string or isinstance(message.id, tuple):
            continue
        want = {a or b for a, b in PLACEHOLDER.findall(message.id)}
        got = {a or b for a, b in PLACEHOLDER.findall(message.string)}
        if want != got:
            wrong.append(f"{message.id!r}: {sorted(want)} vs {sorted(got)}")
    assert not wrong, "\n".join(wrong)


def test_the_shipped_compiled_catalog_matches_the_source(catalog):
    """The .mo is committed and packaged (never compiled at start-up): it must say what
    the .po says."""
    mo = CATALOG / "messages.mo"
    assert mo.exists(), "web/translations/.../messages.mo is missing: run `make translations`"
    with mo.open("rb") as fh:
        compiled = {m.id: m.string for m in read_mo(fh) if m.id}
    source = {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}
    assert compiled == source, "messages.mo is stale: run `make translations`"


def test_the_package_declares_the_compiled_catalog():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(WEB.parent / "setup.cfg")
    patterns = setup["options.package_data"]["web"]
    assert "translations/*/LC_MESSAGES/*" in patterns


def test_violations_are_shown_from_their_translated_templates(tmp_path):
    from flask import Flask
    from flask_babel import Babel, force_locale

    from web.app import TRANSLATIONS_DIR
    from web.labels import label, translated_violations

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    Babel(app)
    violation = {"rule": "P1", "column": "nick", "sources": [],
                 "message": "English message", "suggestion": "English suggestion",
                 # a template the catalog knows, and one it does not
                 "message_template": "Rows",
                 "suggestion_template": "Group by {column} instead",
                 "params": {"name": "nick", "column": "province"}}
    plain = {**violation, "message_template": "", "suggestion_template": ""}
    p8 = {"rule": "P8", "column": "x", "sources": [], "message": "m", "suggestion": "s",
          "message_template": "The function {function} can fail at run time here ({reason}); "
                              "over consumer data a failure would reveal something about a "
                              "consumer.",
          "params": {"function": "regexp_extract",
                     "reason": "its pattern and group index are not literals the pattern has"}}
    with app.test_request_context(), force_locale("zh_CN"):
        shown, fallback, policy = translated_violations([violation, plain, p8])
        assert label("state", "awaiting_approval") == "待审批"
        assert label("role", "provider") == "服务商"
        assert label("state", "no_such_state") == "no_such_state"
        assert label("error", "PARSE_SYNTAX_ERROR") == "SQL 语法错误"
        assert label("error", "UNRESOLVED_COLUMN.WITH_SUGGESTION") == "未知的表或列"
    assert policy["message"].startswith("函数 regexp_extract 在此处运行时可能失败（其模式与分组序号")
    assert policy["suggestion"] == "s"  # no template: as it came
    assert shown["message"] == "行数"
    # untranslated template: the English template, formatted with the parameters
    assert shown["suggestion"] == "Group by province instead"
    # no template: the English message as it came
    assert fallback["message"] == "English message"
    assert fallback["suggestion"] == "English suggestion"


def test_chinese_pages_show_chinese_labels(any_db_config):
    from web_support import page_login, populate

    from web import create_app

    populate(any_db_config)
    client = create_app(any_db_config).test_client()
    page_login(client, "hanfu_owner")
    html = client.get("/datasets?lang=zh_CN").get_data(as_text=True)
    assert "上传数据集" in html and "Upload dataset" not in html
    html = client.get("/jobs?lang=zh_CN").get_data(as_text=True)
    assert "待审批" in html and ">awaiting_approval<" not in html


def test_chart_titles_are_translated_and_data_left_alone():
    from flask import Flask
    from flask_babel import Babel, force_locale

    from web.app import TRANSLATIONS_DIR
    from web.labels import translate_chart

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    Babel(app)
    spec = {"data": {"values": [{"title": "segment", "members": 60}]},
            "encoding": {"x": {"field": "segment", "title": "segment"},
                         "y": {"field": "members", "title": "members"}}}
    with app.test_request_context(), force_locale("zh_CN"):
        shown = translate_chart(spec)
    assert shown["encoding"]["x"]["title"] == "人群分组"
    assert shown["encoding"]["y"]["title"] == "会员数"
    assert shown["encoding"]["x"]["field"] == "segment"
    assert shown["data"] == spec["data"]


def test_the_engines_own_denials_and_its_phrases_are_shown_translated(spark):
    """Denials of the engine (not only the data-flow rules) carry templates, and the
    phrases it passes as parameters are translated too: no English left in a Chinese
    explanation but names."""
    from flask import Flask
    from flask_babel import Babel, force_locale

    from web.app import TRANSLATIONS_DIR
    from web.labels import translated_violations

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    Babel(app)
    p1 = {"rule": "P1", "column": "n", "sources": [], "message": "m", "suggestion": "s",
          "message_template": "An identifying or private column is used in {clause}; such columns "
                              "may only be joined on (bare, between two datasets), grouped by per "
                              "consumer, or counted with count(DISTINCT ...).",
          "params": {"clause": "an aggregate's argument or FILTER"}}
    # the gate's own refusal, straight from the policy layer
    from policies.sparkplan import PlanRefused, parse_query

    try:
        parse_query(spark, "SELECT 1; SELECT 2")
    except PlanRefused as refused:
        gate = refused.violation.to_dict()
    assert gate["message_template"] and gate["suggestion_template"]
    with app.test_request_context(), force_locale("zh_CN"):
        clause, refusal = translated_violations([p1, gate])
    assert "聚合函数的参数或 FILTER" in clause["message"] and "aggregate's" not in clause["message"]
    assert refusal["message"].startswith("只能提交单个查询") and "statement" not in refusal["message"]
