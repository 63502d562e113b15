"""The handwriting demo server: a page where a person writes with the mouse or a pen, and a
JSON API that reads the strokes and returns the text and the four rows of lecture 7e.

Endpoints:

- ``GET /``: the page; ``GET /static/<file>``: its script and style.
- ``POST /api/recognize``: body ``{"strokes": [[[x, y, t], ...], ...]}`` in canvas coordinates
  (y down); answers ``{"text": ..., "chars": [...], "char_probs": [...], "cells": [...],
  "points": [...], "gradients": [...]}`` (see :func:`carousel.handwriting.demo.analyse_writing`).
- ``POST /api/export``: the same body plus ``"text"``; answers the carousel-pen JSON document
  (:mod:`carousel.handwriting.pen`) to save.

Every request is bounded (body size, strokes, points) and validated; a bad one gets a 4xx
answer with a JSON ``{"error": message}``, and no request can stop the server.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from carousel.handwriting.pen import FORMAT, validate_strokes

__all__ = ["HandwritingApp", "make_server", "serve"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2_000_000
MAX_POINTS = 20_000
MAX_STROKES = 500
MAX_TEXT = 200

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class RequestError(Exception):
    """A client error: HTTP status and message."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HandwritingApp:
    """The demo's logic, independent of HTTP (and so testable without a socket).

    Args:
        model: a trained :class:`~carousel.models.ctc_recognizer.CTCRecognizer`.
        meta: the checkpoint's metadata (shown on the page).
        beam_width, scorer, lm_weight: how writing is read (greedy with ``beam_width=0``;
            see :func:`carousel.handwriting.demo.analyse_writing`).
    """

    def __init__(
        self,
        model: Any,
        meta: dict[str, Any] | None = None,
        *,
        beam_width: int = 0,
        scorer: Any = None,
        lm_weight: float = 0.5,
    ) -> None:
        self.model = model.eval()
        self.meta = meta or {}
        self.decode = {"beam_width": beam_width, "scorer": scorer, "lm_weight": lm_weight}
        self._lock = threading.Lock()  # one model call at a time

    def _strokes(self, body: Any) -> list:
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "expected a JSON object with 'strokes'")
        if "strokes" not in body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "missing 'strokes'")
        try:
            strokes = validate_strokes(body["strokes"], owner="strokes", max_points=MAX_POINTS,
                                       max_strokes=MAX_STROKES)  # fmt: skip
        except ValueError as err:
            status = (HTTPStatus.REQUEST_ENTITY_TOO_LARGE if "at most" in str(err)
                      else HTTPStatus.BAD_REQUEST)  # fmt: skip
            raise RequestError(status, str(err)) from None
        for s in strokes:  # canvas y points down; carousel's pen data points up
            s[:, 1] = -s[:, 1]
        return strokes

    def recognize(self, body: Any) -> dict[str, Any]:
        """``POST /api/recognize``."""
        from carousel.handwriting.demo import analyse_writing

        strokes = self._strokes(body)
        if not strokes:
            return {"text": "", "chars": [], "char_probs": [], "cells": [], "points": [],
                    "gradients": [], "frames": 0, "stride": 1}  # fmt: skip
        cfg = self.meta.get("config", {}).get("data", {})
        with self._lock:
            return analyse_writing(
                self.model, strokes, spacing=float(cfg.get("spacing", 0.2)), **self.decode
            )

    def export(self, body: Any) -> dict[str, Any]:
        """``POST /api/export``: the carousel-pen document of what was written."""
        strokes = self._strokes(body)
        text = body.get("text", "")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"'text' must be a string of at most {MAX_TEXT} characters"
            )
        out = [[[round(float(v), 3) for v in (p[0], -p[1], *p[2:])] for p in s] for s in strokes]
        return {
            "format": FORMAT,
            "version": 1,
            "y_axis": "down",
            "samples": [{"text": text, "strokes": out, "meta": {"source": "carousel serve"}}],
        }


def _handler_for(app: HandwritingApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "carousel"

        def log_message(self, fmt: str, *args: Any) -> None:  # to logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._json(status, {"error": message})

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            name = "index.html" if path in ("/", "/index.html") else None
            if path.startswith("/static/"):
                name = path[len("/static/") :]
            if name not in _STATIC:
                return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
            if name == "index.html" and path.startswith("/static/"):
                return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
            body = resources.files("carousel.web").joinpath("static").joinpath(name).read_bytes()
            self._send(HTTPStatus.OK, body, _STATIC[name])

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            routes = {"/api/recognize": app.recognize, "/api/export": app.export}
            try:
                if path not in routes:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
                if ctype != "application/json":
                    raise RequestError(
                        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        f"Content-Type must be application/json, got {ctype!r}",
                    )
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    raise RequestError(
                        HTTPStatus.LENGTH_REQUIRED, "Content-Length required"
                    ) from None
                if length < 0 or length > MAX_BODY_BYTES:
                    raise RequestError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"body must be at most {MAX_BODY_BYTES} bytes, got {length}",
                    )
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}") from None
                self._json(HTTPStatus.OK, routes[path](body))
            except RequestError as err:
                self._error(err.status, err.message)
            except Exception:
                log.exception("handwriting demo: request failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server log)")

        def do_PUT(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST")

        do_DELETE = do_PATCH = do_PUT

    return Handler


def make_server(
    app: HandwritingApp, host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` (not yet serving; ``port=0`` picks a free port)."""
    server = ThreadingHTTPServer((host, port), _handler_for(app))
    server.daemon_threads = True
    return server


def serve(app: HandwritingApp, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` until interrupted."""
    server = make_server(app, host, port)
    log.info("handwriting demo on http://%s:%d/", *server.server_address[:2])
    try:
        server.serve_forever()
    finally:
        server.server_close()
