"""Hostile strings in every request field of every operation, against the published contract (issue #28).

The test walks the served OpenAPI document (request_fields.py) and, for each operation and each of its
fields (path and query parameters, body properties, nested objects and array items), sends a valid base
request with that one field replaced by each value of HOSTILE.  The field's published schema decides
what must happen:

- refused by the document (pattern, format, enum, maxLength, type): a 4xx whose JSON error names that
  field, once (a path parameter names no field: its route answers 404), and nothing stored: regions,
  nodes, clusters and jobs read the same after the request as before it;
- accepted by the document (a display name takes any printable text): no 5xx, and when the request
  succeeds, the reply and a later GET return the value exactly as sent.  The service may still refuse
  it for what the document cannot say (a wrong password, an unknown pool); a 422 that names the field
  is listed in the output as the document accepting more than the service.

The count the issue asks for, values accepted that the document refuses, must be 0.

A URL cannot carry 64 KiB: gunicorn refuses a request line over 8190 bytes (cli.py) with its own 400
before the API sees it.  Path and query parameters get the 64 KiB value (any 4xx, nothing stored) and
LONG_IN_URL, which reaches the API and must be refused there like any other value.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import pytest
from request_fields import ITEM, accepts, is_string, request_fields, resolve
from served import ADMIN, serve

HOSTILE = {
    "Jinja expression": "{{ lookup('pipe','id') }}",
    "Jinja raw block": "{% raw %}{{ x }}{% endraw %}",
    "IPv6 zone ID with Jinja": "::1%{{x}}",
    "IPv6 zone ID": "fe80::1%eth0",
    "IPv4 with a trailing newline": "127.0.0.1\n",
    "control characters": "a\x1b[31mb\x07c\x7f",
    "C1 control character": "a\x85b",
    "newline": "root\nansible_host=evil",
    "trailing newline": "root\n",
    "NUL": "a\x00b",
    "leading dash": "-oProxyCommand=id",
    "option": "--help",
    "shell metacharacters": "a;id|$(id)`id`&>/tmp/x'\"",
    "spaces only": "   ",
    "empty": "",
    "right-to-left override": "\u202egpj.exe",
    "64 KiB": "a" * 65536,
}
LONG_IN_URL = "a" * 4096  # longer than any published maxLength of a URL's fields (2048), within gunicorn's line
URL_LOCATIONS = ("path", "query")

# Valid values of the request string fields that have neither an enum nor a default, by field name.
VALID_STRINGS = {
    "username": "root", "password": ADMIN["password"], "region_name": "fz", "name": "fuzz node",
    "node_ip": "127.0.0.1", "external_service_ip": "127.0.0.2", "volume_group": "vg0", "address": "1 Main St",
    "city": "Cork", "country": "Ireland", "country_code": "IE", "zipcode": "T12", "scan_id": "1",
    "pool_name": "fuzz", "pool_label": "Fuzz", "gpu_uuids": "GPU-fuzz-0", "attach_gpu_ids": "GPU-fuzz-0",
    "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
}
# Whole base bodies where a generic one (required fields only) is not valid: the document's cross-field
# rules (a node needs a role; a join names the node) and the login's real credentials.
BASE_BODIES = {
    "POST /api/login": dict(ADMIN),
    "POST /api/gpuaas/node/add": {"name": "fuzz node", "region_id": 1, "node_ip": "127.0.0.1", "username": "root",
                                  "port": 9, "is_worker_node": True},
    "POST /api/gpuaas/node/join": {"joinee_node_id": 2, "region_id": 1},
}
# Where a successful request's object is read again, by the reply's id.
READ_BACK = {"/api/regions": "/api/regions/{id}", "/api/gpuaas/node": "/api/gpuaas/node/{id}"}


def request(base: str, token: str, method: str, path: str, body=None):
    """(status, the reply's JSON or None when it is not JSON); `call` wants JSON from every reply."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, method=method, data=data,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, None


def example(document: dict, schema: dict, name: str):
    """A valid value of ``schema`` (a field named ``name``); an object has its required properties."""
    schema = resolve(document, schema)
    if "enum" in schema:
        return next(value for value in schema["enum"] if value is not None)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if kind == "string":
        assert name in VALID_STRINGS, f"no valid example of the string field {name!r}: add one to VALID_STRINGS"
        return VALID_STRINGS[name]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return [example(document, schema["items"], name)]
    if kind == "object" or "properties" in schema:
        return {key: example(document, child, key) for key, child in schema.get("properties", {}).items()
                if key in schema.get("required", ())}
    raise AssertionError(f"no example for {name!r}: {schema}")


def replaced(document: dict, value, field, fields, sequence: int):
    """The base request of ``field``'s operation with ``field`` set to ``value``: (path, body)."""
    path_values, query = {}, {}
    for other in fields:
        if other.location in URL_LOCATIONS and other.required:
            (path_values if other.location == "path" else query)[other.name[0]] = example(
                document, other.schema, other.name[0])
    body = None
    if any(other.location == "body" for other in fields):
        operation = document["paths"][field.path][field.method]
        body = json.loads(json.dumps(BASE_BODIES.get(field.operation) or example(
            document, operation["requestBody"]["content"]["application/json"]["schema"], "")))
        if field.operation == "POST /api/regions":
            body["region_name"] = f"fz{sequence}"  # a unique name: regions accepted earlier keep theirs
    if field.location == "path":
        path_values[field.name[0]] = value
    elif field.location == "query":
        query[field.name[0]] = value
    else:
        *parents, last = field.name
        if last == ITEM:  # an array's item: the array holds this one value
            *parents, last = parents
            value = [value]
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = field.path
    for key, item in path_values.items():
        path = path.replace("{" + key + "}", urllib.parse.quote(str(item), safe=""))
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path, body


def snapshot(base: str, token: str, next_job: int):
    """What a refused request must leave as it was: every region, node and cluster, and no new job."""
    lists = [request(base, token, "GET", path) for path in ("/api/regions", "/api/gpuaas/node/list", "/api/gpuaas")]
    return lists, request(base, token, "GET", f"/api/jobs/{next_job}")[0]


def test_hostile_strings_in_every_request_field_get_the_documented_answer(tmp_path):
    problems, looser = [], []
    tally = Counter()
    started = time.monotonic()
    with serve(tmp_path) as service:
        base, token = service.base, service.token
        document = request(base, token, "GET", "/api/openapi.json")[1]
        fields = request_fields(document)
        by_operation = {}
        for field in fields:
            by_operation.setdefault(field.operation, []).append(field)
        next_job = 1
        while request(base, token, "GET", f"/api/jobs/{next_job}")[0] == 200:
            next_job += 1
        state = snapshot(base, token, next_job)
        sequence = 0
        for field in fields:
            tally["string fields" if is_string(field.schema) else "other fields"] += 1
            values = dict(HOSTILE)
            if field.location in URL_LOCATIONS:
                values["4 KiB"] = LONG_IN_URL
            for label, value in values.items():
                sequence += 1
                where = f"{field} = {label}"
                path, body = replaced(document, value, field, by_operation[field.operation], sequence)
                status, reply = request(base, token, field.method.upper(), path, body)
                tally["requests"] += 1
                documented = accepts(field.schema, value)
                if documented:
                    tally["accepted by the document"] += 1
                    if status >= 500:
                        problems.append(f"{where}: documented as accepted, answered {status}: {reply}")
                    elif 200 <= status < 300:
                        tally["accepted and stored"] += 1
                        problems += echo_problems(base, token, field, value, reply, where)
                    elif status == 422 and reply and any(e["field"] == field.dotted for e in reply.get("errors", [])):
                        looser.append(f"{where}: {reply['errors'][0]['message']}")
                    state = snapshot(base, token, next_job)
                    if state[1] == 200:
                        next_job += 1  # the request queued a job: the next one is watched
                        state = snapshot(base, token, next_job)
                    continue
                tally["refused by the document"] += 1
                tally["refused by the document, accepted by the service"] += 200 <= status < 300
                problems += refusal_problems(field, value, status, reply, where)
                after = snapshot(base, token, next_job)
                if after != state:
                    problems.append(f"{where}: refused ({status}), yet something was stored or changed")
                state = after
    wall = time.monotonic() - started
    print(f"\nhostile strings: {tally['string fields']} string fields and {tally['other fields']} other fields, "
          f"{len(HOSTILE)} values each (+1 in URLs): {tally['requests']} requests in {wall:.1f} s; "
          f"{tally['refused by the document']} refused by the document, "
          f"{tally['refused by the document, accepted by the service']} of them accepted by the service; "
          f"{tally['accepted by the document']} accepted by the document ({tally['accepted and stored']} stored)")
    if looser:
        print(f"{len(looser)} documented-as-accepted values the service refused with a field error:\n  "
              + "\n  ".join(looser))
    assert tally["string fields"] >= 20 and tally["requests"] >= 1000, tally
    assert not problems, f"{len(problems)} answers break the published contract:\n" + "\n".join(problems)


def refusal_problems(field, value, status, reply, where) -> list[str]:
    """A value the document refuses: a 4xx and one JSON error naming the field (a path parameter's route
    answers 404, naming none; gunicorn refuses a URL over 8190 bytes with its own 400)."""
    if not 400 <= status < 500:
        return [f"{where}: refused by the document, answered {status}: {str(reply)[:200]}"]
    if field.location in URL_LOCATIONS and len(value) > 8190:
        return []
    if not isinstance(reply, dict) or reply.get("code") != status:
        return [f"{where}: {status} without the JSON error shape: {str(reply)[:200]}"]
    if field.location == "path":
        return [] if status == 404 else [f"{where}: a path parameter refused with {status}, not 404: {reply}"]
    named = [error["field"] for error in reply["errors"]]
    if named != [field.dotted]:
        return [f"{where}: {status} should name {field.dotted!r} once, names {named}: {reply['message'][:200]}"]
    return []


def echo_problems(base, token, field, value, reply, where) -> list[str]:
    """A stored value comes back exactly as sent, in the reply and when read again."""
    key = field.name[-1]
    if field.location != "body" or key == ITEM or field.schema.get("writeOnly") or not isinstance(reply, dict):
        return []
    problems = [] if reply.get(key) == value else [f"{where}: stored, but the reply has {key}={reply.get(key)!r}"]
    read_path = next((read for prefix, read in READ_BACK.items() if field.path.startswith(prefix)), None)
    if read_path and "id" in reply:
        again = request(base, token, "GET", read_path.format(id=reply["id"]))[1]
        if again.get(key) != value:
            problems.append(f"{where}: stored, but reads back as {key}={again.get(key)!r}")
    return problems


@pytest.mark.parametrize("schema, value, expected", [
    ({"type": "string", "pattern": "^[a-z]+$"}, "root\n", False),  # ECMA-262's $, not Python's
    ({"type": "string", "pattern": "^[a-z]+$"}, "root", True),
    ({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}, "fe80::1%eth0", False),
    ({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}, "fe80::1", True),
    ({"type": "string", "maxLength": 3}, "abcd", False),
    ({"type": "integer"}, "1", False),
    ({"type": "string", "format": "date-time"}, "2026-01-01T00:00:00Z", True),
    ({"type": "string", "format": "date-time"}, "2026-01-01", False),
])
def test_what_the_document_accepts_is_read_as_json_schema_reads_it(schema, value, expected):
    assert accepts(schema, value) is expected
