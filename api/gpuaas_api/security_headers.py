"""The headers every reply carries: a Content-Security-Policy, X-Content-Type-Options and Referrer-Policy.

Every reply but the docs page gets a policy that allows nothing (API_POLICY): a JSON reply, an error
or the OpenAPI document that a browser is made to open can then run no script, load nothing and be
framed by no site. The docs page (docs_page/) sets its own, DOCS_PAGE_POLICY: Swagger UI's files from
this service only, and no inline script. Both forbid framing (clickjacking).
"""
from __future__ import annotations

from flask import Flask, Response

API_POLICY = "default-src 'none'; frame-ancestors 'none'"

DOCS_PAGE_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",   # swagger-ui-bundle.js and the page's own page.js: no inline script, no eval
    "style-src 'self'",
    "img-src 'self' data:",  # Swagger UI's stylesheet draws its icons as data: URLs
    "connect-src 'self'",    # the OpenAPI document, and "Try it out" requests to this service only
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))

# nosniff: a reply is only ever what its Content-Type says (no JSON or text run as a script);
# same-origin: no URL of the service (ids, query strings) leaks to another site. Not no-referrer: under
# it a browser sends `Origin: null` on the service's own pages' POSTs (the Fetch standard's "append a
# request Origin header"), which the cross-site check (auth.py) refuses where no Sec-Fetch-Site is sent.
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


def init_app(app: Flask) -> None:
    """Add the headers to every reply Flask sends: views', errors' (404, 405, 401 from auth's hook) and 500s."""
    app.after_request(add_headers)


def add_headers(response: Response) -> Response:
    # A view that set its own policy keeps it (the docs page); every other reply gets the strict one.
    response.headers.setdefault("Content-Security-Policy", API_POLICY)
    response.headers.update(HEADERS)
    return response
