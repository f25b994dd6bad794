"""The request side of the OpenAPI document, field by field, and what its published schemas accept.

`request_fields` lists every field a client sends: each operation's path and query parameters and
every property of its JSON body, nested objects and array items included.  A body's cross-field
rules (schemas.SCHEMA_RULES: `allOf`/`anyOf` beside `properties`) constrain fields declared in
`properties`; they declare none of their own, so the walk does not enter them.  A field's own
`anyOf` (an address: `format: ipv4` or `format: ipv6`) is part of its schema.

`accepts` answers whether a field's published schema accepts a string, with the document's
meaning (JSON Schema, ECMA-262 regular expressions): Python's `$` also matches before a final
newline, which ECMA-262's does not, so an anchored pattern is matched up to the string's end.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

METHODS = ("get", "put", "post", "delete", "patch")
ITEM = "[]"  # an array's item in a field's path; the service's errors name it by index (gpu_uuids.0)


@dataclass(frozen=True)
class RequestField:
    method: str
    path: str
    location: str  # "path", "query" or "body"
    name: tuple  # the field's path in the body (("pool", "pool_name"), ("gpu_uuids", ITEM)); (name,) otherwise
    schema: dict
    required: bool

    @property
    def operation(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def dotted(self) -> str:
        """The field as the service's errors name it."""
        return ".".join("0" if part == ITEM else part for part in self.name)

    def __str__(self) -> str:
        return f"{self.operation} {self.location} {'.'.join(self.name)}"


def resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        node = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def _body_fields(document, method, path, schema, name, required) -> list[RequestField]:
    schema = resolve(document, schema)
    fields = [RequestField(method, path, "body", name, schema, required)] if name else []
    if schema.get("type") == "object" or "properties" in schema:
        needed = set(schema.get("required", ()))
        for key, child in schema.get("properties", {}).items():
            fields += _body_fields(document, method, path, child, name + (key,), key in needed)
    if schema.get("type") == "array" and "items" in schema:
        fields += _body_fields(document, method, path, schema["items"], name + (ITEM,), True)
    return fields


def request_fields(document: dict) -> list[RequestField]:
    fields = []
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for parameter in item.get("parameters", []) + operation.get("parameters", []):
                parameter = resolve(document, parameter)
                if parameter["in"] in ("path", "query"):
                    fields.append(RequestField(method, path, parameter["in"], (parameter["name"],),
                                               resolve(document, parameter["schema"]), parameter.get("required", False)))
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content:
                fields += _body_fields(document, method, path, content["schema"], (), True)
    return fields


def is_string(schema: dict) -> bool:
    return schema.get("type") == "string"


def formats(schema: dict) -> set[str]:
    """The formats a string field may take: its own, or those of its `anyOf`/`oneOf` branches."""
    found = {schema["format"]} if "format" in schema else set()
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= formats(branch)
    return found


def shape_gaps(schema: dict) -> list[str]:
    """What a request string field lacks: an enum is a shape of its own; anything else needs a pattern
    or a format, and a maxLength."""
    if "enum" in schema:
        return []
    gaps = [] if "pattern" in schema or formats(schema) else ["pattern or format"]
    return gaps + ([] if "maxLength" in schema else ["maxLength"])


# --------------------------------------------------------------------------- what a schema accepts
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _ipv6(value: str) -> bool:
    """RFC 4291's text form, which has no zone ID (Python's IPv6Address takes one after a `%`)."""
    try:
        return ipaddress.IPv6Address(value).scope_id is None
    except ValueError:
        return False


def _date_time(value: str) -> bool:
    if not _RFC3339.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


FORMATS = {"ipv4": _ipv4, "ipv6": _ipv6, "date-time": _date_time}


def _pattern_matches(pattern: str, value: str) -> bool:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"  # ECMA-262's `$`: the end of the input, never before a final newline
    return re.search(pattern, value) is not None


def accepts(schema: dict, value) -> bool:
    """Whether the published schema accepts ``value`` (a string, a list or an object of them)."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind == "array":
        return isinstance(value, list) and all(accepts(schema.get("items", {}), item) for item in value) \
            and len(value) >= schema.get("minItems", 0)
    if kind in ("integer", "number", "boolean", "object"):
        return False  # only strings (and lists of them) are sent to a field by itself
    if kind == "string" and not isinstance(value, str):
        return False
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        return False
    if "pattern" in schema and not _pattern_matches(schema["pattern"], value):
        return False
    if "format" in schema and schema["format"] in FORMATS and not FORMATS[schema["format"]](value):
        return False
    if "anyOf" in schema and not any(accepts(branch, value) for branch in schema["anyOf"]):
        return False
    return True
