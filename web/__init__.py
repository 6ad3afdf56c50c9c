"""web: the Flask web app and JSON API (``create_app``)."""

from web.app import create_app

__all__ = ["create_app"]
