"""The headers every reply carries: a Content-Security-Policy, X-Content-Type-Options and Referrer-Policy.

Every reply but the docs page gets a policy that allows nothing (API_POLICY): a JSON reply, an error
or the OpenAPI document that a browser is made to open can then run no script, load nothing and be
framed by no site. The docs page (docs_page/) sets its own, DOCS_PAGE_POLICY: Swagger UI's files from
this service only, and no inline script. Both forbid framing (clickjacking).
"""
from __future__ import annotations

from flask import Flask

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
HEADER_ITEMS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"))


def init_app(app: Flask) -> None:
    """Add the headers to every reply the app sends: views', errors' (404, 405, 401 from auth's hook) and
    500s. As WSGI middleware appending to the header list: werkzeug's Headers methods, which scan and
    compare every header each time, took about 10 of the 24 us the #29 hooks first added to a cached read
    (docs/api.md, "The docs page and security headers")."""
    app.wsgi_app = SecurityHeaders(app.wsgi_app)


class SecurityHeaders:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            # A view that set its own policy keeps it (the docs page); every other reply gets the strict one.
            if not any(name.lower() == "content-security-policy" for name, _value in headers):
                headers.append(("Content-Security-Policy", API_POLICY))
            headers.extend(HEADER_ITEMS)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_with_headers)
