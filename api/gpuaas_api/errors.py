"""The one JSON error shape: {code, message, errors: [{field, message}]}."""
from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .domain_errors import Conflict, DomainError, Invalid, NotFound, Refused

# The one place the domain's refusals become HTTP statuses.
DOMAIN_STATUS = {NotFound: 404, Invalid: 422, Refused: 409, Conflict: 409}


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


def as_http(error: DomainError) -> tuple[int, str, list[dict]]:
    """A domain refusal as (status, message, errors) in the one error shape."""
    status = next(code for kind, code in DOMAIN_STATUS.items() if isinstance(error, kind))
    errors = [{"field": error.field, "message": error.reason}] if error.field else []
    return status, error.message, errors


def _flatten(messages, prefix="") -> list[dict]:
    """marshmallow's nested {field: [msg]} into [{field, message}]."""
    out = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = key if not prefix else f"{prefix}.{key}"
            if key in ("json", "query", "form", "headers", "cookies", "view_args") and not prefix:
                name = ""
            out += _flatten(value, name)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out += [{"field": prefix, "message": m} for m in messages]
    elif isinstance(messages, list):
        for item in messages:
            out += _flatten(item, prefix)
    else:
        out.append({"field": prefix, "message": str(messages)})
    return out


def body(status: int, message: str, errors: list[dict] | None = None, headers=None):
    response = jsonify({"code": status, "message": message, "errors": errors or []})
    response.status_code = status
    for name, value in headers or ():
        if name.lower() != "content-type":
            response.headers[name] = value  # a 405's Allow, a 401's WWW-Authenticate
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return body(error.status, error.message, error.errors)

    @app.errorhandler(DomainError)
    def _domain_error(error: DomainError):
        return body(*as_http(error))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        # webargs/flask-smorest put validation messages in error.data["messages"].
        messages = getattr(error, "data", {}).get("messages") if getattr(error, "data", None) else None
        if messages:
            errors = _flatten(messages)
            first = errors[0] if errors else {"field": "", "message": "invalid input"}
            message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
            return body(error.code or 422, message, errors)
        return body(error.code or 500, error.description or error.name, headers=error.get_headers())
