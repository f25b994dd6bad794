"""hosted·ai GPUaaS infrastructure API: the Flask application factory."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from . import access, audit, auth, body_limit, db, docs_page, errors, security_headers, validation
from . import operations as job_operations
from .operations import scans
from .config import Config
from .jobs import retention
from .jobs.hooks import PeriodicTask, register_periodic
from .metrics import prometheus
from .schemas import LINKS, SCHEMA_RULES, ErrorSchema
from .resources import audit as audit_resources
from .resources import auth as auth_resources
from .resources import nodes, operations, pools, regions, users

# Existing clients use a base URL ending in /api; the guide's paths have none.
# Routes live under /api; these top-level paths are served there too.
ALIASED_PREFIXES = ("/gpuaas", "/regions", "/login")


class IdConverter(IntegerConverter):
    """`<id:name>` in a route: a database id, 1 to 2**63 - 1. A larger number names nothing: the route
    does not match, so it answers 404 (and never overflows the database driver)."""

    def __init__(self, url_map, *_args, **_kwargs):
        super().__init__(url_map, min=1, max=validation.MAX_ID)


def _id_parameter_schema(_converter) -> dict:
    return {"type": "integer", "format": "int64", "minimum": 1, "maximum": validation.MAX_ID}


class GpuaasApi(Api):
    # The error shape errors.py sends, documented for every route (flask-smorest's own has `errors` as an object).
    ERROR_SCHEMA = ErrorSchema


def publish_schema_rules(api: Api) -> None:
    """Add the cross-field rules the server enforces (schemas.SCHEMA_RULES) to their components, so that
    a generated client validates them before sending."""
    components = api.spec.components.schemas
    for name, rules in SCHEMA_RULES.items():
        components[name].update(rules)


def publish_links(api: Api) -> None:
    """Add the main flows' OpenAPI links (schemas.LINKS) to the replies that create what they follow.

    flask-smorest has no decorator that adds to a reply it documents (its manual docs replace the
    reply object), so they are set on the finished paths, as apispec holds them."""
    paths = api.spec._paths  # pylint: disable=protected-access
    for (path, method, status), links in LINKS.items():
        paths[path][method]["responses"][status]["links"] = links


class PrefixAlias:
    """WSGI middleware: serve /gpuaas/... (and the other aliases) as /api/gpuaas/..."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(ALIASED_PREFIXES):
            environ["PATH_INFO"] = "/api" + path
        return self.wsgi_app(environ, start_response)


# How often the housekeeper deletes the audit records older than GPUAAS_AUDIT_RETENTION_DAYS (and the
# jobs and scans past theirs): they are kept for days, so an hour late is nothing, and a delete is not
# worth taking the write lock more often.
AUDIT_PRUNE_SECONDS = 3600.0
AUDIT_PRUNING = PeriodicTask("pruning the audit trail", lambda config: AUDIT_PRUNE_SECONDS if config.AUDIT_RETENTION_DAYS > 0 else 0,
                             lambda config: audit.prune(config.AUDIT_RETENTION_DAYS))
JOB_PRUNING = PeriodicTask("pruning old jobs and their events",
                           lambda config: AUDIT_PRUNE_SECONDS if config.JOB_RETENTION_DAYS > 0 else 0,
                           lambda config: retention.prune_jobs(config.JOB_RETENTION_DAYS))
SCAN_PRUNING = PeriodicTask("pruning old scans", lambda config: AUDIT_PRUNE_SECONDS if config.SCAN_RETENTION_DAYS > 0 else 0,
                            lambda config: scans.prune_scans(config.SCAN_RETENTION_DAYS))


def create_app(config: Config | None = None) -> Flask:
    config = config or Config()
    app = Flask(__name__)
    app.config.update(config.as_flask())
    app.json.sort_keys = False  # replies keep their declared order, and large lists encode faster
    config.DATA_DIR.mkdir(parents=True, exist_ok=True)

    db.init_app(app, config.DATABASE_URL)
    job_operations.register_all()
    for pruning in (AUDIT_PRUNING, JOB_PRUNING, SCAN_PRUNING):
        register_periodic(pruning)
    auth.init_app(app, prometheus.ENDPOINTS if config.METRICS_PUBLIC else frozenset())
    audit.init_app(app)  # after auth: it reads the identity auth's hook sets
    app.url_map.converters["id"] = IdConverter
    api = GpuaasApi(app)
    api.register_converter(IdConverter, _id_parameter_schema)
    errors.init_app(app)  # after Api, whose own HTTPException handler it replaces
    body_limit.init_app(app)  # GPUAAS_MAX_BODY_BYTES (MAX_CONTENT_LENGTH), chunked bodies included; 413 in the error shape
    for blueprint in (auth_resources.blp, auth_resources.health_blp, regions.blp, nodes.blp, operations.blp,
                      pools.blp, users.blp, audit_resources.blp):
        api.register_blueprint(blueprint, url_prefix="/api")
    publish_schema_rules(api)
    publish_links(api)
    access.publish(app, api.spec._paths)  # pylint: disable=protected-access
    prometheus.init_app(app)
    docs_page.init_app(app)
    security_headers.init_app(app)
    app.wsgi_app = PrefixAlias(app.wsgi_app)
    if config.TRUSTED_PROXY_HOPS:  # the client's address and scheme as the proxy saw them; its Host as it passes it on
        hops = config.TRUSTED_PROXY_HOPS
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0)
    return app
