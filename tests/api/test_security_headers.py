"""The headers every reply carries (security_headers.py), and the docs page that loads nothing from
another origin (docs_page/).

The expected policies are written out here, not imported: a weakened constant must fail a test.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gpuaas_api import create_app, credentials
from gpuaas_api.config import Config

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "runtime.in"
# What each asset the page references must be served as (nosniff: a browser trusts this alone).
CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def assert_common_headers(response) -> None:
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Referrer-Policy") == "same-origin"
    assert policy_directives(response).get("frame-ancestors") == ["'none'"]


def policy_directives(response) -> dict[str, list[str]]:
    """The reply's Content-Security-Policy as {directive: [sources]}; exactly one policy header."""
    policies = response.headers.getlist("Content-Security-Policy")
    assert len(policies) == 1, policies
    directives = {}
    for part in filter(None, (part.strip() for part in policies[0].split(";"))):
        name, *sources = part.split()
        directives[name] = sources
    return directives


class AssetRefs(HTMLParser):
    """The URLs a page loads (scripts, stylesheets, icons, images) and anything inline it runs or styles."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self.data: dict[str, str] = {}
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in attributes
            if "src" in attributes:
                self.urls.append(attributes["src"])
        if tag in ("link", "img", "iframe", "object", "embed", "source") and ("href" in attributes or "src" in attributes):
            self.urls.append(attributes.get("href") or attributes.get("src"))
        if tag == "style" or "style" in attributes or any(name.startswith("on") for name in attributes):
            self.inline.append(f"<{tag} {attributes}>")
        self.data.update({name: value for name, value in attributes.items() if name.startswith("data-")})

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data.strip()[:60]}")


def page_refs(client) -> AssetRefs:
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    refs = AssetRefs()
    refs.feed(response.get_data(as_text=True))
    return refs


# Every kind of reply: (what, method, path, authenticated, status).
REPLIES = [
    ("JSON read", "GET", "/api/regions", True, 200),
    ("public JSON", "GET", "/api/health", False, 200),
    ("OpenAPI document", "GET", "/api/openapi.json", False, 200),
    ("metrics", "GET", "/metrics", True, 200),
    ("metrics under /api", "GET", "/api/metrics", True, 200),
    ("aliased path", "GET", "/regions", True, 200),
    ("no token", "GET", "/api/regions", False, 401),
    ("no token for metrics", "GET", "/metrics", False, 401),
    ("unknown route", "GET", "/api/no/such/route", False, 404),
    ("wrong method", "DELETE", "/api/health", False, 405),
    ("Flask's OPTIONS", "OPTIONS", "/api/regions", False, 200),
    ("invalid body", "POST", "/api/regions", True, 422),
    ("docs asset", "GET", "/api/docs/page.js", False, 200),
    ("Swagger UI asset", "GET", "/api/docs/swagger-ui/swagger-ui.css", False, 200),
    ("Swagger UI file not served", "GET", "/api/docs/swagger-ui/oauth2-redirect.html", False, 404),
]


@pytest.mark.parametrize(("method", "path", "authenticated", "status"), [reply[1:] for reply in REPLIES],
                         ids=[reply[0] for reply in REPLIES])
def test_every_reply_carries_the_strict_policy_and_headers(anonymous, client, method, path, authenticated, status):
    body = {"json": {"region_name": ""}} if method == "POST" else {}
    response = (client if authenticated else anonymous).open(path, method=method, **body)
    assert response.status_code == status
    assert_common_headers(response)
    assert response.headers["Content-Security-Policy"] == API_POLICY


def test_a_server_error_carries_the_headers(app):
    from gpuaas_api.access import public

    @public
    def fail():
        raise RuntimeError("boom")

    app.add_url_rule("/api/test-server-error", view_func=fail)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # TESTING would raise it into the test instead of answering 500
    response = app.test_client().get("/api/test-server-error")
    assert response.status_code == 500
    assert_common_headers(response)
    assert response.headers["Content-Security-Policy"] == API_POLICY


def test_public_metrics_carry_the_headers(tmp_path, migrated_database_url):
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "data"), "GPUAAS_DATABASE_URL": migrated_database_url,
                     "GPUAAS_METRICS_PUBLIC": "true"})
    config.TESTING = True
    credentials.forget_cached_tokens()
    application = create_app(config)
    try:
        response = application.test_client().get("/metrics")
        assert response.status_code == 200
        assert_common_headers(response)
        assert response.headers["Content-Security-Policy"] == API_POLICY
    finally:
        application.extensions["gpuaas_engine"].dispose()


def test_the_docs_page_policy_allows_its_own_files_only(anonymous):
    response = anonymous.get("/api/docs")
    assert_common_headers(response)
    directives = policy_directives(response)
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    # Scripts from this origin only: no inline script, no eval, no other host.
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    for name, sources in directives.items():
        assert not [source for source in sources if "://" in source or source.startswith("//") or "*" in source], name


def test_the_docs_page_references_only_same_origin_assets(anonymous):
    refs = page_refs(anonymous)
    assert refs.urls, "the page references no script or stylesheet"
    assert not refs.inline, f"inline script or style (the page's policy forbids it): {refs.inline}"
    for url in refs.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/") and not url.startswith("//"), url


def test_each_asset_the_docs_page_references_is_served(anonymous):
    refs = page_refs(anonymous)
    kinds = {Path(urlsplit(url).path).suffix for url in refs.urls}
    assert {".js", ".css"} <= kinds
    assert sum(url.endswith(".js") for url in refs.urls) >= 2, "Swagger UI's bundle and the page's own script"
    for url in refs.urls:
        response = anonymous.get(url)
        assert response.status_code == 200, url
        assert response.mimetype in CONTENT_TYPES[Path(urlsplit(url).path).suffix], (url, response.mimetype)
        assert response.get_data(), url
        assert_common_headers(response)


def test_the_docs_page_starts_swagger_ui_on_the_openapi_document(anonymous):
    refs = page_refs(anonymous)
    spec = anonymous.get(refs.data["data-spec-url"])
    assert spec.status_code == 200 and "paths" in spec.get_json()
    bundle = next(url for url in refs.urls if url.endswith("swagger-ui-bundle.js"))
    assert b"SwaggerUIBundle" in anonymous.get(bundle).get_data()
    script = next(url for url in refs.urls if url.endswith(".js") and url != bundle)
    source = anonymous.get(script).get_data(as_text=True)
    assert "SwaggerUIBundle(" in source and "specUrl" in source
    assert "://" not in source, "the page's script names no other origin"


def test_no_cdn_even_when_the_old_override_is_set(monkeypatch, tmp_path, migrated_database_url):
    """GPUAAS_SWAGGER_UI_URL once pointed the page at a CDN: it is no longer read."""
    monkeypatch.setenv("GPUAAS_SWAGGER_UI_URL", "https://cdn.example.net/npm/swagger-ui-dist/")
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "data"), "GPUAAS_DATABASE_URL": migrated_database_url})
    config.TESTING = True
    application = create_app(config)
    try:
        client = application.test_client()
        page = client.get("/api/docs").get_data(as_text=True)
        assert "cdn" not in page.lower() and "://" not in page
        refs = page_refs(client)
        assert all(url.startswith("/api/docs/") for url in refs.urls), refs.urls
    finally:
        application.extensions["gpuaas_engine"].dispose()


@pytest.mark.parametrize("path", ["/api/docs/swagger-ui/..%2F__init__.py", "/api/docs/swagger-ui/../page.html",
                                  "/api/docs/swagger-ui/LICENSE", "/api/docs/swagger-ui/swagger-ui.js",
                                  "/api/docs/swagger-ui/%2Fetc%2Fpasswd"])
def test_only_the_pages_files_of_the_package_are_served(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 404
    assert_common_headers(response)


def test_the_served_swagger_ui_is_the_pinned_one(anonymous):
    pinned = re.search(r"^flask-swagger-ui==(\S+)$", REQUIREMENTS.read_text(encoding="utf-8"), re.MULTILINE)
    assert pinned, "requirements/runtime.in pins flask-swagger-ui"
    from gpuaas_api import docs_page

    # flask-swagger-ui's version is the swagger-ui-dist version it ships.
    assert (docs_page.SWAGGER_UI_DIR / "VERSION").read_text(encoding="utf-8").strip() == f"v{pinned.group(1)}"
