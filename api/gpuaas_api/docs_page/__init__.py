"""The docs page, /api/docs: Swagger UI over the OpenAPI document, every file served by this service.

Swagger UI's files are swagger-ui-dist's, as the pinned flask-swagger-ui package ships them in its
dist/ directory (requirements/runtime.in): only those files are used, never its blueprint. flask-smorest's
own page is not registered (config.as_flask sets no OPENAPI_SWAGGER_UI_URL): it has an inline script,
and points at a CDN. This page starts Swagger UI from a file of its own (page.js), so its policy
(security_headers.DOCS_PAGE_POLICY) allows scripts from 'self' only.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, render_template_string, send_from_directory, url_for

from .. import security_headers
from ..access import public

HERE = Path(__file__).resolve().parent
# find_spec locates the package without importing it (its __init__ builds a blueprint we never use).
SWAGGER_UI_DIR = Path(find_spec("flask_swagger_ui").origin).parent / "dist"
# What the page uses of swagger-ui-dist, and so all that is served of it.
SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "index.css", "favicon-32x32.png"})
PAGE_TEMPLATE = (HERE / "page.html").read_text(encoding="utf-8")

blp = Blueprint("docs_page", __name__)


@blp.get("/api/docs")
@public
def page():
    html = render_template_string(PAGE_TEMPLATE, title=current_app.config["API_TITLE"],
                                  spec_url=url_for("api-docs.openapi_json"), asset=_asset_url)
    return html, 200, {"Content-Security-Policy": security_headers.DOCS_PAGE_POLICY}


@blp.get("/api/docs/page.js")
@public
def page_script():
    return send_from_directory(HERE, "page.js")


@blp.get("/api/docs/swagger-ui/<name>")
@public
def swagger_ui(name: str):
    if name not in SWAGGER_UI_FILES:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, name)


def _asset_url(name: str) -> str:
    return url_for("docs_page.swagger_ui", name=name)


def init_app(app: Flask) -> None:
    app.register_blueprint(blp)
