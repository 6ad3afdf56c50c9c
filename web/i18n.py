"""What the catalog must translate: the web app's marked strings, and the policy engine's
explanation templates (the message and suggestion of each ``deny(...)`` and
``_refuse(...)`` call in ``policies/``, and each ``message_template=`` /
``suggestion_template=`` there and in the budget's D5), which violations carry so that
pages can show them translated.

``python -m web.i18n OUT.pot`` writes them as one template for ``pybabel update``
(``make translations``); the translation test uses the same lists.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

WEB = Path(__file__).parent
POLICIES = WEB.parent / "policies"
# Modules outside policies/ that explain a refusal with a violation of their own.
EXPLAINERS = (WEB.parent / "jobs" / "budget.py",)
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None}
METHOD_MAP = [("**.py", "python"), ("templates/**.html", "jinja2")]
# Where the templates are: deny(rule, where, sources, message, suggestion, **params),
# _refuse(message, suggestion, ...) and any call's message_template= / suggestion_template=.
TEMPLATE_ARGS = {"deny": (3, 4), "_refuse": (0, 1)}
TEMPLATE_KEYWORDS = ("message_template", "suggestion_template")


def web_messages() -> dict[str, str]:
    """msgid -> where it is used, for every marked string under web/."""
    from babel.messages.extract import extract_from_dir

    found: dict[str, str] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            str(WEB), METHOD_MAP, keywords=KEYWORDS):
        for msgid in message if isinstance(message, tuple) else (message,):
            if msgid:
                found.setdefault(msgid, f"web/{filename}:{lineno}")
    return found


def _strings(node: ast.AST, tuples: dict[str, list[ast.AST]]) -> Iterator[str]:
    """The literal strings an argument can be: a constant, either branch of ``a if c else
    b``, or the items of a tuple named by ``*name``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body, tuples)
        yield from _strings(node.orelse, tuples)
    elif isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values):
        yield "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))


def _deny_templates(tree: ast.AST) -> Iterator[tuple[str, int]]:
    tuples: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Tuple)):
            tuples[node.targets[0].id] = list(node.value.elts)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for keyword in node.keywords:
            if keyword.arg in TEMPLATE_KEYWORDS:
                for text in _strings(keyword.value, tuples):
                    yield text, node.lineno
        if name not in TEMPLATE_ARGS:
            continue
        args: list[ast.AST] = []
        for arg in node.args:
            if isinstance(arg, ast.Starred) and isinstance(arg.value, ast.Name):
                args.extend(tuples.get(arg.value.id, []))
            else:
                args.append(arg)
        for index in TEMPLATE_ARGS[name]:
            if index < len(args):
                for text in _strings(args[index], tuples):
                    yield text, node.lineno


def policy_messages() -> dict[str, str]:
    """msgid -> where, for the explanation templates of the policy engine."""
    found: dict[str, str] = {}
    for path in [*sorted(POLICIES.glob("*.py")), *EXPLAINERS]:
        for text, lineno in _deny_templates(ast.parse(path.read_text(encoding="utf-8"))):
            if text.strip():
                found.setdefault(text, f"{path.parent.name}/{path.name}:{lineno}")
    return found


def all_messages() -> dict[str, str]:
    return {**web_messages(), **policy_messages()}


def write_template(out: Path) -> None:
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    catalog = Catalog(project="yushan")
    for msgid, where in all_messages().items():
        path, _, line = where.rpartition(":")
        catalog.add(msgid, locations=[(path, int(line))])
    with out.open("wb") as fh:
        write_po(fh, catalog, width=100)


if __name__ == "__main__":
    write_template(Path(sys.argv[1]))
