"""Browser demos served by the standard library's ``http.server`` (no web framework needed)."""

from carousel.web.server import HandwritingApp, make_server, serve

__all__ = ["HandwritingApp", "make_server", "serve"]
