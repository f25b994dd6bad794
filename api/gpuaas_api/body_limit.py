"""The request body cap (GPUAAS_MAX_BODY_BYTES, as Flask's MAX_CONTENT_LENGTH): 413 in the error shape.

A body whose Content-Length is over the cap is refused when a route first reads it, unread (werkzeug).
A chunked body has no length: werkzeug stops reading it at the cap, but then hands the route the
cap's worth as if it were the whole body (a login answered 400 "Invalid JSON body", not 413). So a
body without a length is read through CappedBody, which raises the same 413 as soon as the body is
known to be longer: the cap's worth read, and a byte more to come. Either way at most the cap's worth
is ever held, and gunicorn discards the rest (bounded in time and bytes) or closes the connection.
"""
from __future__ import annotations

import logging

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors

LOG = logging.getLogger(__name__)


class CappedBody:
    """A WSGI input of unknown length that raises RequestEntityTooLarge once it passes ``max_bytes``."""

    def __init__(self, stream, max_bytes: int):
        self._stream = stream
        self._left = max_bytes

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._stream.read(wanted)
        self._left -= len(data)
        # werkzeug never asks past the cap: at the cap, one more byte tells a longer body from one that ends there.
        if self._left < 0 or (self._left == 0 and data and self._stream.read(1)):
            raise RequestEntityTooLarge()
        return data


class CapChunkedBodies:
    """WSGI middleware: a body without a Content-Length (chunked) is read through CappedBody."""

    def __init__(self, wsgi_app, max_bytes: int):
        self.wsgi_app = wsgi_app
        self.max_bytes = max_bytes

    def __call__(self, environ, start_response):
        if not environ.get("CONTENT_LENGTH") and "wsgi.input" in environ:
            environ["wsgi.input"] = CappedBody(environ["wsgi.input"], self.max_bytes)
        return self.wsgi_app(environ, start_response)


def _too_large(_error: RequestEntityTooLarge):
    """413 in the error shape, logged (never with the body)."""
    limit = request.max_content_length
    LOG.warning("refused %s %s from %s: body over %s bytes", request.method, request.path, request.remote_addr, limit)
    return errors.body(413, f"the request body is larger than {limit} bytes (GPUAAS_MAX_BODY_BYTES)")


def init_app(app: Flask) -> None:
    """After errors.init_app: this 413 handler is more specific than its HTTPException one."""
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.wsgi_app = CapChunkedBodies(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
