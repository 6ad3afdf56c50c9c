"""The app's shared extensions and request helpers, apart from the factory that wires them
(:mod:`web.app`), so that blueprints can use them without importing the factory."""

from __future__ import annotations

from flask import request
from flask_wtf.csrf import CSRFProtect

LOCALES = ("en", "zh_CN")
LOCALE_COOKIE = "yushan_lang"

csrf = CSRFProtect()


def select_locale() -> str:
    """Query ``?lang=`` first, then the cookie, then the browser's Accept-Language."""
    chosen = request.args.get("lang") or request.cookies.get(LOCALE_COOKIE)
    if chosen in LOCALES:
        return chosen
    return request.accept_languages.best_match(LOCALES, default="en") or "en"
