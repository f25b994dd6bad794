"""hosted·ai GPUaaS infrastructure API: the Flask application factory."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from . import auth, db, errors
from .config import Config
from .metrics import prometheus
from .resources import auth as auth_resources
from .resources import nodes, operations, pools, regions

# Existing clients use a base URL ending in /api; the guide's paths have none.
# Routes live under /api; these top-level paths are served there too.
ALIASED_PREFIXES = ("/gpuaas", "/regions", "/login")


class PrefixAlias:
    """WSGI middleware: serve /gpuaas/... (and the other aliases) as /api/gpuaas/..."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(ALIASED_PREFIXES):
            environ["PATH_INFO"] = "/api" + path
        return self.wsgi_app(environ, start_response)


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    app = Flask(__name__)
    app.config.update(config.as_flask())
    app.json.sort_keys = False  # replies keep their declared order, and large lists encode faster
    config.DATA_DIR.mkdir(parents=True, exist_ok=True)

    db.init_app(app, config.DATABASE_URL)
    auth.init_app(app, prometheus.ENDPOINTS if config.METRICS_PUBLIC else frozenset())
    api = Api(app)
    errors.init_app(app)  # after Api, whose own HTTPException handler it replaces
    for blueprint in (auth_resources.blp, auth_resources.health_blp, regions.blp, nodes.blp, operations.blp,
                      pools.blp):
        api.register_blueprint(blueprint, url_prefix="/api")
    prometheus.init_app(app)
    app.wsgi_app = PrefixAlias(app.wsgi_app)
    return app
