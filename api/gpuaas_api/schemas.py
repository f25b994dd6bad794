"""marshmallow schemas for every body, query and reply. Ranges come from states/validation, not literals here.

Input schemas ignore unknown fields (clients send extra ones). Reply schemas only document what
rendering.py builds: every field is required (present, perhaps null) and the objects are closed
(additionalProperties: false in the OpenAPI document), so a reply that drifts from its schema
fails tests/api/test_rendering.py and the fuzzed contract run.
"""
from __future__ import annotations

import datetime as dt
import re

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from . import models, validation
from .access import Role
from .audit import OBJECT_TYPES
from .jobs.waiting import MAX_WAIT_SECONDS
from .metrics.series import TIME_GROUPING_ALIASES, TIME_GROUPINGS
from .states import (ACCELERATOR_TYPES, DEFAULT_TIME_QUANTUM_SECONDS, INITIALIZE_STATE_CODES, K8S_JOIN_STATE_CODES,
                     RDMA_SUPPORT, ROLE_FLAGS, SCAN_KINDS, SECURITY_LEVELS, SHARING_RATIO_RANGE,
                     TIME_QUANTUM_RANGE_SECONDS, ClusterStatus, GpuAssignment, JobStatus, NodeStatus, PoolStatus,
                     RegionServiceStatus, ScanStatus, TeamStatus)


class LenientRequestSchema(Schema):
    """A request body or query: fields it does not declare are ignored, not refused."""

    class Meta:
        unknown = EXCLUDE  # clients send extra fields; ignore them rather than fail


class ReplySchema(Schema):
    """A reply object: closed (unknown fields are an error, additionalProperties: false)."""

    class Meta:
        unknown = RAISE
        ordered = True


def _id(**kwargs) -> fields.Integer:
    """A database id: 1 up to a signed 64-bit integer's maximum (larger ones cannot exist)."""
    return fields.Integer(validate=validate.Range(min=1, max=validation.MAX_ID), **kwargs)


def _one_of(enum_class) -> validate.OneOf:
    return validate.OneOf([member.value for member in enum_class])


class Shape(validate.Length):
    """A request string's whole published shape, checked as one rule so that a value that breaks it gets
    one error: its length (published as minLength/maxLength), then ``pattern`` (published), or ``check``
    (the validation.py function that enforces the pattern, and perhaps more).  A 64 KiB value is refused
    by its length before any pattern runs."""

    def __init__(self, max: int, pattern: re.Pattern | None = None, *, min: int | None = None,  # noqa: A002
                 check=None, error: str = "not of the documented shape"):
        super().__init__(min=min, max=max)
        self.regex = pattern  # apispec publishes a validator's `regex` as the field's pattern
        self.check = check
        self.shape_error = error

    def __call__(self, value: str) -> str:
        super().__call__(value)
        if self.check is not None:
            self.check(value)
        elif self.regex is not None and not self.regex.fullmatch(value):
            raise ValidationError(self.shape_error)
        return value


# Printable text (no control characters; validation.py): display strings, which reach no inventory,
# command or file. The shapes below it only the API layer has.
PRINTABLE_TEXT = validation.PRINTABLE_TEXT
_PRINTABLE = "printable text, no control characters"
# A GPU named in a request (the guide: "GPU identifiers"): only looked up among the stored GPUs, whose
# UUIDs a scan checked against NVML's own format (validation.GPU_UUID), so a name of any other shape
# is merely unknown. No space, no leading dash, no shell metacharacters.
GPU_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
_GPU_UUID_LIST = GPU_IDENTIFIER.pattern.strip("^$")
GPU_UUID_LIST = re.compile(rf"^ *{_GPU_UUID_LIST}( *, *{_GPU_UUID_LIST})* *$")  # ?gpu_uuids=a,b
SCAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")  # a scan's numeric id or its request_id (a UUID)
PASSWORD_MAX_LENGTH = 1024  # only its scrypt hash is stored
# An RFC 3339 date-time with nanoseconds and an offset ("2026-12-02T10:00:00.123456789+05:30").
DATE_TIME_MAX_LENGTH = 35
# A request line must stay within gunicorn's limit (cli.py: 8190 bytes) percent-encoded: about 50 UUIDs.
GPU_UUID_LIST_MAX_LENGTH = 2048


class BoundedAwareDateTime(fields.AwareDateTime):
    """A date-time of at most DATE_TIME_MAX_LENGTH characters (published as its maxLength): a longer
    string is refused before it is parsed."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs, metadata={"maxLength": DATE_TIME_MAX_LENGTH})

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and len(value) > DATE_TIME_MAX_LENGTH:
            raise ValidationError(f"Longer than maximum length {DATE_TIME_MAX_LENGTH}.")
        return super()._deserialize(value, attr, data, **kwargs)


def _reply(field_class, *args, nullable: bool = False, **kwargs):
    """A reply field: always present (required), null only where ``nullable``."""
    return field_class(*args, required=True, allow_none=nullable, **kwargs)


# --------------------------------------------------------------------------- errors
class ErrorFieldSchema(ReplySchema):
    field = _reply(fields.String, metadata={"description": "The field (dotted path) at fault; empty for the request"})
    message = _reply(fields.String)


class ErrorSchema(ReplySchema):
    """The one error shape the service sends (errors.py)."""

    code = _reply(fields.Integer, metadata={"description": "The HTTP status"})
    message = _reply(fields.String)
    errors = _reply(fields.List, fields.Nested(ErrorFieldSchema))


# --------------------------------------------------------------------------- login
class LoginSchema(LenientRequestSchema):
    username = fields.String(required=True, validate=Shape(
        models.column_length(models.User.username), PRINTABLE_TEXT, min=1, error=f"not a valid user name ({_PRINTABLE})"))
    password = fields.String(required=True, load_only=True, validate=Shape(
        PASSWORD_MAX_LENGTH, PRINTABLE_TEXT, min=1, error=f"not a valid password ({_PRINTABLE})"))


class LoginReplySchema(ReplySchema):
    id = _reply(fields.Integer)
    username = _reply(fields.String)
    email = _reply(fields.String)
    role = _reply(fields.String)
    is_super_admin = _reply(fields.Boolean)
    token = _reply(fields.String)
    page_access = _reply(fields.List, fields.String())


# --------------------------------------------------------------------------- users and tokens
# A new user's name: letters, digits and . _ @ + - (an e-mail address fits), starting with a letter or digit.
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_ACCOUNT_NAME = Shape(models.column_length(models.User.username), ACCOUNT_NAME, min=1,
                      error="not a valid user name (letters, digits and . _ @ + -, starting with a letter or digit)")
# An e-mail address, or empty: visible ASCII but @ on each side of one @ (explicit ranges: Python's \s
# and JSON Schema's differ on \x1c-\x1f, and a generated client must check what the service checks).
_EMAIL = Shape(models.column_length(models.User.email), re.compile(r"^$|^[!-?A-~]+@[!-?A-~]+$"),
               error="not an e-mail address")
_ROLE = _one_of(Role)
_ROLE_DOC = {"description": "viewer: reads; operator: and changes the fleet; admin: and users and tokens"}
# A token's lifetime in days (0: it never expires); a century at most.
TOKEN_DAYS_RANGE = (0, 36500)


class UserCreateSchema(LenientRequestSchema):
    username = fields.String(required=True, validate=_ACCOUNT_NAME)
    password = fields.String(required=True, load_only=True, validate=Shape(
        PASSWORD_MAX_LENGTH, PRINTABLE_TEXT, min=1, error=f"not a valid password ({_PRINTABLE})"))
    role = fields.String(required=True, validate=_ROLE, metadata=_ROLE_DOC)
    email = fields.String(load_default="", validate=_EMAIL)


class UserEditSchema(LenientRequestSchema):
    role = fields.String(validate=_ROLE, metadata=_ROLE_DOC)
    email = fields.String(validate=_EMAIL)


class UserSchema(ReplySchema):
    id = _reply(fields.Integer)
    username = _reply(fields.String)
    email = _reply(fields.String)
    role = _reply(fields.String, validate=_ROLE)
    is_super_admin = _reply(fields.Boolean)
    created_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})


class TokenCreateSchema(LenientRequestSchema):
    username = fields.String(required=True, validate=Shape(
        models.column_length(models.User.username), PRINTABLE_TEXT, min=1, error=f"not a valid user name ({_PRINTABLE})"))
    description = fields.String(load_default="", validate=Shape(
        models.column_length(models.ApiToken.description), PRINTABLE_TEXT, error=f"not a valid description ({_PRINTABLE})"))
    role = fields.String(validate=_ROLE, metadata={"description": "Narrower than the user's role, if given; "
                                                                  "none: whatever the user's role allows"})
    expires_in_days = fields.Integer(validate=validate.Range(*TOKEN_DAYS_RANGE), metadata={
        "description": "0: never; none: GPUAAS_API_TOKEN_TTL_DAYS"})


class TokenQuerySchema(LenientRequestSchema):
    user_id = _id()


class TokenSchema(ReplySchema):
    id = _reply(fields.Integer)
    user_id = _reply(fields.Integer)
    username = _reply(fields.String)
    description = _reply(fields.String)
    role = _reply(fields.String, nullable=True, validate=_ROLE)
    created_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    expires_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})


class TokenCreatedSchema(TokenSchema):
    token = _reply(fields.String, metadata={"description": "The token: shown only now"})


class HealthSchema(ReplySchema):
    status = _reply(fields.String, validate=validate.OneOf(["ok"]))


# --------------------------------------------------------------------------- regions
def _region_text(column) -> fields.String:
    """A region's display text (address, city, ...): printable, within its column."""
    return fields.String(load_default="", validate=Shape(models.column_length(column), PRINTABLE_TEXT,
                                                         error=f"not valid here ({_PRINTABLE})"))


_REGION_NAME = Shape(models.column_length(models.Region.region_name), validation.REGION_NAME, check=validation.region_name)


class RegionCreateSchema(LenientRequestSchema):
    region_name = fields.String(required=True, validate=_REGION_NAME)
    address = _region_text(models.Region.address)
    city = _region_text(models.Region.city)
    country = _region_text(models.Region.country)
    country_code = _region_text(models.Region.country_code)
    zipcode = _region_text(models.Region.zipcode)
    lat = fields.Float(allow_none=True, validate=validate.Range(-90, 90))
    lng = fields.Float(allow_none=True, validate=validate.Range(-180, 180))
    accelerator_type = fields.String(load_default=ACCELERATOR_TYPES[0], validate=validate.OneOf(ACCELERATOR_TYPES))
    support_rdma = fields.String(allow_none=True, validate=validate.OneOf(RDMA_SUPPORT))


class RegionUpdateSchema(RegionCreateSchema):
    region_name = fields.String(validate=_REGION_NAME)


class RegionStatusSchema(ReplySchema):
    gpuaas = _reply(fields.String, validate=_one_of(RegionServiceStatus), metadata={
        "description": "enabled while the region's cluster is GPUAAS_ACTIVE; disabled while it is set up, "
                       "failed or torn down; none without a cluster"})
    compute = _reply(fields.String, validate=_one_of(RegionServiceStatus))


class RegionSchema(ReplySchema):
    id = _reply(fields.Integer)
    region_name = _reply(fields.String)
    address = _reply(fields.String)
    city = _reply(fields.String)
    country = _reply(fields.String)
    country_code = _reply(fields.String)
    zipcode = _reply(fields.String)
    lat = _reply(fields.Float, nullable=True)
    lng = _reply(fields.Float, nullable=True)
    accelerator_type = _reply(fields.String, validate=validate.OneOf(ACCELERATOR_TYPES))
    support_rdma = _reply(fields.String, nullable=True, validate=validate.OneOf(RDMA_SUPPORT))
    status = _reply(fields.Nested, RegionStatusSchema)


# --------------------------------------------------------------------------- nodes
# Each node field's shape: its column's length, then validation.py's check (which publishes its pattern).
_NODE_NAME = Shape(validation.NODE_NAME_MAX_LENGTH, validation.NODE_NAME, min=1, check=validation.node_name)
_NODE_NAME_DOC = {"description": "A display name: any printable text"}
_USERNAME = Shape(models.column_length(models.Node.username), validation.USERNAME, check=validation.username)
_VOLUME_GROUP = Shape(models.column_length(models.Node.volume_group), validation.VOLUME_GROUP, check=validation.volume_group)
# An address column holds the longest IPv6 text form (45 characters: ffff:...:255.255.255.255).
_IP = Shape(models.column_length(models.Node.node_ip), check=validation.ip_address)
_IP_DOC = {"description": "An IPv4 or IPv6 address (no IPv6 zone ID)", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}


# The role flags (states.ROLE_FLAGS), as node add (default false), node edit and reply fields.
_RoleFlagsAdd = Schema.from_dict({flag: fields.Boolean(load_default=False) for flag in ROLE_FLAGS.values()})
_RoleFlagsEdit = Schema.from_dict({flag: fields.Boolean() for flag in ROLE_FLAGS.values()})


class NodeAddSchema(LenientRequestSchema, _RoleFlagsAdd):
    name = fields.String(required=True, validate=_NODE_NAME, metadata=_NODE_NAME_DOC)
    region_id = _id(required=True, strict=True)
    node_ip = fields.String(required=True, validate=_IP, metadata=_IP_DOC)
    username = fields.String(required=True, validate=_USERNAME)
    port = fields.Integer(load_default=22, strict=True, validate=validate.Range(min=1, max=65535))
    volume_group = fields.String(allow_none=True, validate=_VOLUME_GROUP)
    external_service_ip = fields.String(allow_none=True, validate=_IP, metadata=_IP_DOC)


class NodeEditSchema(LenientRequestSchema, _RoleFlagsEdit):
    name = fields.String(validate=_NODE_NAME, metadata=_NODE_NAME_DOC)
    node_ip = fields.String(validate=_IP, metadata=_IP_DOC)
    username = fields.String(validate=_USERNAME)
    port = fields.Integer(strict=True, validate=validate.Range(min=1, max=65535))
    volume_group = fields.String(allow_none=True, validate=_VOLUME_GROUP)
    external_service_ip = fields.String(allow_none=True, validate=_IP, metadata=_IP_DOC)


class GpuSchema(ReplySchema):
    id = _reply(fields.Integer)
    gpu_id = _reply(fields.String, metadata={"description": "The GPU's index on its node, as a string"})
    index = _reply(fields.Integer)
    uuid = _reply(fields.String)
    vendor = _reply(fields.String)
    gpu_model = _reply(fields.String)
    memory_in_mb = _reply(fields.Integer)
    pci_bus_id = _reply(fields.String, nullable=True)
    gpuaas_node_id = _reply(fields.Integer)
    pool_id = _reply(fields.Integer, nullable=True)
    assignment_status = _reply(fields.String, validate=_one_of(GpuAssignment), metadata={
        "description": "Emitted in upper case, as the guide writes it (the cluster's GPU list: lower case)"})


class ClusterGpuSchema(GpuSchema):
    assignment_status = _reply(fields.String, validate=validate.OneOf([status.value.lower() for status in GpuAssignment]),
                               metadata={"description": "In lower case on this list only (its clients compare it exactly)"})


class NameRefSchema(ReplySchema):
    id = _reply(fields.Integer)
    name = _reply(fields.String)


class GpuDetailsSchema(GpuSchema):
    node_details = _reply(fields.Nested, NameRefSchema)
    pool_details = _reply(fields.Nested, NameRefSchema, nullable=True)


class NodeRoleSchema(ReplySchema, Schema.from_dict({flag: _reply(fields.Boolean) for flag in ROLE_FLAGS.values()})):
    pass


class NodeSchema(ReplySchema):
    id = _reply(fields.Integer)
    Id = _reply(fields.Integer, metadata={"description": "The id again: existing clients read `Id`"})
    name = _reply(fields.String, metadata={"description": "The display name"})
    inventory_name = _reply(fields.String, metadata={
        "description": "The node's host name in inventories and playbook runs, derived from its id"})
    kubernetes_name = _reply(fields.String, nullable=True, metadata={
        "description": "The node's name in Kubernetes: a DNS label derived from its hostname at the first contact"})
    region_id = _reply(fields.Integer)
    gpuaas_id = _reply(fields.Integer, nullable=True)
    node_ip = _reply(fields.String)
    port = _reply(fields.Integer)
    username = _reply(fields.String)
    volume_group = _reply(fields.String, nullable=True)
    external_service_ip = _reply(fields.String, nullable=True)
    status = _reply(fields.String, validate=_one_of(NodeStatus))
    disabled = _reply(fields.Boolean)
    initialize_state_status_code = _reply(fields.Integer, validate=validate.OneOf(
        sorted(set(INITIALIZE_STATE_CODES.values()))))
    k8s_join_state_status_code = _reply(fields.Integer, validate=validate.OneOf(
        sorted(set(K8S_JOIN_STATE_CODES.values()) | {0, -1})))
    role = _reply(fields.Nested, NodeRoleSchema)
    gpus = _reply(fields.List, fields.Nested(GpuSchema))
    nvidia_driver_version = _reply(fields.String, nullable=True)
    total_memory_in_mb = _reply(fields.Integer, nullable=True)
    total_disk_in_mb = _reply(fields.Integer, nullable=True)
    cores = _reply(fields.Integer, nullable=True)
    cpu_model = _reply(fields.String, nullable=True)
    region = _reply(fields.Nested, RegionSchema)
    created_at = _reply(fields.String, metadata={"format": "date-time"})
    updated_at = _reply(fields.String, metadata={"format": "date-time"})


def _links(*targets: tuple[str, str], **parameters: str) -> dict:
    """OpenAPI links from a reply to the operations on what it made, each (method, path);
    ``parameters`` are runtime expressions (schemathesis's stateful phase follows the links)."""
    return {re.sub(r"[^A-Za-z0-9]+", "_", f"{method}{path}").strip("_"): {
        "operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method,
        "parameters": parameters} for method, path in targets}


# The main flows, as links from a creating reply (path, method, status) to the operations on what it
# made: create a region or a node, then get, edit and delete it (app.publish_links adds them).
LINKS = {
    ("/api/regions", "post", "201"): _links(
        ("get", "/api/regions/{region_id}"), ("put", "/api/regions/{region_id}"),
        ("delete", "/api/regions/{region_id}"), region_id="$response.body#/id"),
    ("/api/gpuaas/node/add", "post", "201"): _links(
        ("get", "/api/gpuaas/node/{node_id}"), ("put", "/api/gpuaas/node/{node_id}/edit"),
        ("delete", "/api/gpuaas/node/{node_id}/delete"), ("get", "/api/gpuaas/node/{node_id}/logs"),
        ("get", "/api/gpuaas/node/{node_id}/ssh_keys"), node_id="$response.body#/id"),
}


def _when_true_requires(flag: str, field: str) -> dict:
    """JSON Schema for "``flag`` true needs ``field`` (non-null)": what node add checks (422 otherwise)."""
    return {"anyOf": [{"properties": {flag: {"enum": [False]}}},
                      {"required": [field], "properties": {field: {"type": "string"}}}]}


# Rules across fields that the server enforces, published on the request bodies' schemas
# (app.publish_schema_rules adds them to the OpenAPI components, by component name).
SCHEMA_RULES = {
    "NodeAdd": {"allOf": [
        {"anyOf": [{"required": [flag], "properties": {flag: {"enum": [True]}}} for flag in ROLE_FLAGS.values()],
         "description": "A node needs at least one role"},
        _when_true_requires(ROLE_FLAGS["gateway"], "external_service_ip"),
    ]},
    "Join": {"anyOf": [{"required": ["joinee_node_id"]}, {"required": ["gpuaas_node_id"]}],
             "description": "One of joinee_node_id (the guide's) and gpuaas_node_id (the clients') is required"},
    "PoolGpu": {"allOf": [{"not": {"required": ["gpu_index", name],
                                   "properties": {"gpu_index": {"type": "integer"}, name: {"type": "string"}}}}
                          for name in ("gpu_uuid", "uuid")],
                "description": "gpu_index and gpu_uuid (or uuid) each name the GPU: give one of them, or neither "
                               "(the node's only free GPU)"},
}


class RegionQuerySchema(LenientRequestSchema):
    region_id = _id()


class SuccessSchema(ReplySchema):
    success = _reply(fields.Boolean)
    message = _reply(fields.String)


class NodeIdQuerySchema(LenientRequestSchema):
    gpuaas_node_id = _id(required=True)


class NodeIdAltQuerySchema(LenientRequestSchema):
    node_id = _id(required=True)


class LeaveQuerySchema(NodeIdAltQuerySchema):
    ungraceful = fields.Boolean(load_default=False)


class ControllerQuerySchema(LenientRequestSchema):
    controller_node_id = _id(required=True)


class JoinSchema(LenientRequestSchema):
    """The guide's body ({joinee_node_id, region_id}) or the clients' ({gpuaas_id, gpuaas_node_id}):
    one of joinee_node_id and gpuaas_node_id is required."""

    joinee_node_id = _id()
    region_id = _id()
    gpuaas_id = _id()
    gpuaas_node_id = _id()


class ScanQuerySchema(LenientRequestSchema):
    scan_id = fields.String(required=True, validate=Shape(models.column_length(models.Scan.request_id), SCAN_ID, min=1,
                                                          error="not a scan id (a number or a request_id)"), metadata={
        "description": "The scan's numeric id (as clients send it) or its request_id"})


class JobWaitQuerySchema(LenientRequestSchema):
    wait = fields.Float(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_SECONDS), metadata={
        "description": "Seconds to wait for the job to finish before answering (a long poll); 0 answers at once."})


class PageQuerySchema(LenientRequestSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=validation.MAX_PAGE))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class OperationReplySchema(ReplySchema):
    success = _reply(fields.Boolean)
    message = _reply(fields.String)
    job_id = _reply(fields.Integer, nullable=True, metadata={
        "description": "The job that carries the request out (null when nothing had to run)"})


class EnableReplySchema(OperationReplySchema):
    gpuaas_id = _reply(fields.Integer)


class JobSchema(ReplySchema):
    id = _reply(fields.Integer)
    operation = _reply(fields.String)
    node_id = _reply(fields.Integer, nullable=True)
    gpuaas_id = _reply(fields.Integer, nullable=True)
    pool_id = _reply(fields.Integer, nullable=True)
    status = _reply(fields.String, validate=_one_of(JobStatus))
    rc = _reply(fields.Integer, nullable=True)
    explanation = _reply(fields.String)
    result = _reply(fields.Dict)
    emitted_events = _reply(fields.Integer)
    cancel_requested = _reply(fields.Boolean)
    created_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    started_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    finished_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    actor = _reply(fields.String, nullable=True, metadata={
        "description": "The user whose request recorded it; null for the service's own jobs (metrics collection)"})


class ScanGpuSchema(ReplySchema):
    """A known GPU of the scanned node, as clients read it from a scan_gpus reply."""

    index = _reply(fields.Integer)
    name = _reply(fields.String)
    memory = _reply(fields.Integer, metadata={"description": "MiB"})
    uuid = _reply(fields.String)


class ScanSchema(ReplySchema):
    id = _reply(fields.Integer)
    scan_id = _reply(fields.String, metadata={"description": "The request_id again"})
    request_id = _reply(fields.String)
    kind = _reply(fields.String, validate=validate.OneOf(list(SCAN_KINDS.values())))
    status = _reply(fields.String, validate=_one_of(ScanStatus))
    node_id = _reply(fields.Integer)
    job_id = _reply(fields.Integer, nullable=True)
    error_msg = _reply(fields.String, nullable=True)
    resources = _reply(fields.Dict, metadata={
        "description": "Once completed: gpus [{uuid, vendor, gpu_model, memory_in_mb}], npus; and for "
                       "scan_resources hca_devices, hca_device_info, volume"})
    gpus = _reply(fields.List, fields.Nested(ScanGpuSchema))


class ClusterSchema(ReplySchema):
    id = _reply(fields.Integer)
    region_id = _reply(fields.Integer)
    controller_node_id = _reply(fields.Integer, nullable=True)
    status = _reply(fields.String, validate=_one_of(ClusterStatus))
    k8s_api_server_port = _reply(fields.Integer, nullable=True)
    prometheus_reverse_tunnel_port = _reply(fields.Integer, nullable=True)
    created_at = _reply(fields.String, metadata={"format": "date-time"})
    updated_at = _reply(fields.String, metadata={"format": "date-time"})


class LogEventSchema(ReplySchema):
    job_id = _reply(fields.Integer)
    counter = _reply(fields.Integer)
    event = _reply(fields.String)
    host = _reply(fields.String, nullable=True)
    task = _reply(fields.String, nullable=True)
    stdout = _reply(fields.String)
    created_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})


class PageSchema(ReplySchema):
    """A page of a long list (node logs, the audit trail): the subclass adds its `items`."""

    total = _reply(fields.Integer, metadata={"description": "How many items match, on every page"})
    page = _reply(fields.Integer)
    per_page = _reply(fields.Integer)


class LogPageSchema(PageSchema):
    items = _reply(fields.List, fields.Nested(LogEventSchema))


class StorageMetricsSchema(ReplySchema):
    node_id = _reply(fields.Integer)
    collected_at = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    metrics = _reply(fields.Dict, nullable=True, metadata={"description": "storage_info's report"})
    refresh_job_id = _reply(fields.Integer)


class IntegralNumber(fields.Integer):
    """An integer that may arrive as a float with an integral value (4.0); 2.5 is refused."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, float):
            if not value.is_integer():
                raise self.make_error("invalid")
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)


_RATIO = validate.Range(*SHARING_RATIO_RANGE)
_QUANTUM = validate.Range(*TIME_QUANTUM_RANGE_SECONDS)
_LEVEL = validate.OneOf(SECURITY_LEVELS)
POOL_NAME = Shape(models.column_length(models.Pool.pool_name), re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$"),
                  error="not a valid pool name (letters, digits, spaces, _ . -, not first a space, _ . or -)")


_LABEL = {"description": "What clients display (printable text); the pool's name unless given"}
POOL_LABEL = Shape(models.column_length(models.Pool.pool_label), PRINTABLE_TEXT, min=1,
                   error=f"not a valid pool label ({_PRINTABLE})")
_GPU_UUID = Shape(models.column_length(models.Gpu.uuid), GPU_IDENTIFIER, min=1,
                  error="not a GPU UUID (letters, digits, _ . : / -, not first a -)")


class PoolFieldsSchema(LenientRequestSchema):
    pool_name = fields.String(required=True, validate=POOL_NAME)
    pool_label = fields.String(allow_none=True, validate=POOL_LABEL, metadata=_LABEL)
    sharing_ratio = IntegralNumber(required=True, strict=True, validate=_RATIO)
    time_quantum_in_sec = IntegralNumber(load_default=DEFAULT_TIME_QUANTUM_SECONDS, strict=True, validate=_QUANTUM)
    security_level = fields.String(required=True, validate=_LEVEL)
    attach_gpu_ids = fields.List(fields.String(validate=_GPU_UUID), load_default=list)


class NestedObject(fields.Nested):
    """A nested request object.  Anything but an object is refused as the field's own error (`pool`), where
    marshmallow's Nested would put it under the nested schema's `_schema` (`pool._schema`)."""

    def _deserialize(self, value, attr, data, partial=None, **kwargs):
        if not isinstance(value, dict):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, partial=partial, **kwargs)


class PoolCreateSchema(LenientRequestSchema):
    gpuaas_id = _id(required=True)
    pool = NestedObject(PoolFieldsSchema, required=True)


class PoolUpdateSchema(LenientRequestSchema):
    """PUT: the create's pool fields, with the aliases clients use."""

    pool_name = fields.String(validate=POOL_NAME)
    pool_label = fields.String(allow_none=True, validate=POOL_LABEL, metadata=_LABEL)
    sharing_ratio = IntegralNumber(strict=True, validate=_RATIO)
    time_quantum_in_sec = IntegralNumber(strict=True, validate=_QUANTUM)
    security_level = fields.String(validate=_LEVEL)

    @pre_load
    def _aliases(self, data, **_kwargs):
        if not isinstance(data, dict):
            return data  # marshmallow refuses it (422 "Invalid input type")
        data = dict(data)
        for alias, name in (("name", "pool_name"), ("overcommit_ratio", "sharing_ratio"),
                            ("security_mode", "security_level")):
            if alias in data and name not in data:
                data[name] = data.pop(alias)
        return data


class GpuUuidsSchema(LenientRequestSchema):
    gpu_uuids = fields.List(fields.String(validate=_GPU_UUID), required=True,
                            validate=validate.Length(min=1))


class GpuUuidsQuerySchema(LenientRequestSchema):
    """remove_gpus by GET: ?gpu_uuids=a,b (comma-separated)."""

    gpu_uuids = fields.String(required=True, validate=Shape(GPU_UUID_LIST_MAX_LENGTH, GPU_UUID_LIST, min=1,
                                                            error="not a comma-separated list of GPU UUIDs"))


class PoolGpuSchema(LenientRequestSchema):
    """One GPU of a node: by gpu_index, by gpu_uuid (alias uuid), or neither: the node's only free GPU."""

    pool_id = _id(required=True)
    gpuaas_node_id = _id(required=True)
    gpu_index = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=validation.MAX_GPU_INDEX))
    gpu_uuid = fields.String(allow_none=True, validate=_GPU_UUID)
    uuid = fields.String(allow_none=True, validate=_GPU_UUID, load_only=True, metadata={
        "description": "gpu_uuid's alias (used when gpu_uuid is absent)"})

    @validates_schema
    def _one_gpu(self, data, **_kwargs):
        named = next((name for name in ("gpu_uuid", "uuid") if data.get(name) is not None), None)
        if data.get("gpu_index") is not None and named is not None:
            raise ValidationError(f"give gpu_index or {named}, not both", named)

    @post_load
    def _alias(self, data, **_kwargs):
        if data.get("gpu_uuid") is None and data.get("uuid") is not None:
            data["gpu_uuid"] = data["uuid"]
        data.pop("uuid", None)
        return data


class MetricsQuerySchema(LenientRequestSchema):
    time_grouping = fields.String(load_default="hour", validate=validate.OneOf(
        list(TIME_GROUPINGS) + list(TIME_GROUPING_ALIASES)))
    start = BoundedAwareDateTime(data_key="from", default_timezone=dt.timezone.utc)
    end = BoundedAwareDateTime(data_key="to", default_timezone=dt.timezone.utc)


class PoolSlotSchema(ReplySchema):
    """One virtual-GPU slot: a pool lists sharing_ratio of these per physical GPU."""

    id = _reply(fields.String, metadata={"description": "<GPU uuid>-<slot index>"})
    slot_index = _reply(fields.Integer)
    gpu_id = _reply(fields.Integer)
    uuid = _reply(fields.String)
    gpu_model = _reply(fields.String)
    memory_in_mb = _reply(fields.Integer, metadata={"description": "The GPU's memory divided by the sharing ratio"})
    gpuaas_node_id = _reply(fields.Integer)
    assignment_status = _reply(fields.String, validate=_one_of(GpuAssignment))


class PoolSchema(ReplySchema):
    id = _reply(fields.Integer)
    gpuaas_id = _reply(fields.Integer)
    pool_name = _reply(fields.String)
    pool_label = _reply(fields.String, metadata=_LABEL)
    sharing_ratio = _reply(fields.Integer, validate=_RATIO)
    time_quantum_in_sec = _reply(fields.Integer, validate=_QUANTUM)
    security_level = _reply(fields.String, validate=_LEVEL)
    status = _reply(fields.String, validate=_one_of(PoolStatus))
    gpu_model_type = _reply(fields.String, nullable=True, metadata={"description": "The GPUs' models, comma-separated"})
    gpu_vendor_type = _reply(fields.String, nullable=True)
    physical_gpu_count = _reply(fields.Integer)
    region_id = _reply(fields.Integer, metadata={"description": "The region of the pool's GPUaaS cluster"})
    total_gpus = _reply(fields.Integer, metadata={"description": "Slots: the pool's GPUs × sharing_ratio"})
    allocated_gpus = _reply(fields.Integer, metadata={
        "description": "Slots held by Pods, as the nodes' agents last reported them"})
    available_gpus = _reply(fields.Integer, metadata={
        "description": "Slots on healthy GPUs (ASSIGNED) that no Pod holds"})
    resource_name = _reply(fields.String, metadata={
        "description": "The Kubernetes extended resource of the pool's slots, which a tenant's Pod requests "
                       "(resources.limits); one unit is one slot", "example": "gpuaas.hosted.ai/pool-7"})
    created_at = _reply(fields.String, metadata={"format": "date-time"})
    gpus = _reply(fields.List, fields.Nested(PoolSlotSchema))


class PoolChangeSchema(PoolSchema):
    """A pool as a change left it, with the job that applies the change on its nodes."""

    job_id = _reply(fields.Integer, nullable=True, metadata={
        "description": "The pool_apply job; null when no node had anything to apply"})
    queued_behind = _reply(fields.Integer, nullable=True, metadata={
        "description": "The job this change waits for; it is checked again, and applied, when that one ends"})


class PoolListSchema(ReplySchema):
    items = _reply(fields.List, fields.Nested(PoolSchema))


class GpuListSchema(ReplySchema):
    items = _reply(fields.List, fields.Nested(GpuSchema))


class ClusterGpuListSchema(ReplySchema):
    items = _reply(fields.List, fields.Nested(ClusterGpuSchema))


class GpuDetailsListSchema(ReplySchema):
    items = _reply(fields.List, fields.Nested(GpuDetailsSchema))


class PoolMetricsSchema(ReplySchema):
    pool_id = _reply(fields.Integer)
    time_grouping = _reply(fields.String, validate=validate.OneOf(list(TIME_GROUPINGS)))
    start = _reply(fields.String, data_key="from", metadata={"format": "date-time"})
    end = _reply(fields.String, data_key="to", metadata={"format": "date-time"})
    physical_gpus = _reply(fields.Integer)
    slots_total = _reply(fields.Integer)
    slots_assigned = _reply(fields.Integer)
    slots_unavailable = _reply(fields.Integer)
    usage = _reply(fields.Dict, metadata={"description": "The pool now: each GPU's newest sample, and their totals"})
    series = _reply(fields.List, fields.Dict(), metadata={"description": "One entry per bucket: avg and max"})
    teams = _reply(fields.Dict, keys=fields.String(), values=fields.List(fields.Dict()), metadata={
        "description": "Per team (the Pods' namespace), one entry per bucket in which it held slots: "
                       "slots and vram_used_mb (avg and max), gpu_seconds received"})


class SubscribedTeamsQuerySchema(LenientRequestSchema):
    """hosted·ai's admin client: ?sort_least_consumed=1&from_time_seconds=0&page=0&limit=100."""

    sort_least_consumed = fields.Integer(load_default=0, validate=validate.OneOf([0, 1]), metadata={
        "description": "1: the least GPU time first; 0: the most first"})
    from_time_seconds = fields.Integer(load_default=0, validate=validate.Range(min=0, max=validation.MAX_INT32 * 2),
                                       metadata={"description": "0: the teams holding slots now; a Unix time: also "
                                                                "the teams that held one since then"})
    page = fields.Integer(load_default=0, validate=validate.Range(min=0, max=validation.MAX_PAGE), metadata={
        "description": "Counted from 0"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    team_id = fields.String(validate=Shape(253, PRINTABLE_TEXT, min=1, error=f"not a team ({_PRINTABLE})"), metadata={
        "description": "Only this team (an unknown one gives an empty page)"})


class SubscribedTeamSchema(ReplySchema):
    team_id = _reply(fields.String, metadata={"description": "The team's namespace"})
    team_name = _reply(fields.String, metadata={"description": "The team's namespace"})
    total_ram_mb = _reply(fields.Integer, metadata={
        "description": "The vRAM of the slots it holds now: each slot's GPU memory ÷ sharing_ratio"})
    total_tflops = _reply(fields.Float, nullable=True, metadata={
        "description": "Its slots' share of their GPUs' peak dense BF16 tensor TFLOPS; null for a GPU model "
                       "the service's table lacks"})
    status = _reply(fields.String, validate=_one_of(TeamStatus), metadata={
        "description": "running: a process on one of its slots; idle: slots held, no process; "
                       "ended: none held now (listed since from_time_seconds)"})
    slots = _reply(fields.Integer, metadata={"description": "Slots it holds now"})
    pods = _reply(fields.Integer, metadata={"description": "Its Pods holding slots now"})
    vram_used_mb = _reply(fields.Float, metadata={"description": "vRAM its processes use on its slots now"})
    gpu_seconds = _reply(fields.Float, metadata={"description": "GPU time received in the pool since first_seen"})
    first_seen = _reply(fields.String, nullable=True, metadata={"format": "date-time"})
    last_seen = _reply(fields.String, nullable=True, metadata={"format": "date-time"})


class SubscribedTeamsSchema(ReplySchema):
    data = _reply(fields.List, fields.Nested(SubscribedTeamSchema))
    total = _reply(fields.Integer, metadata={"description": "Slots held now by the teams the query selects "
                                                            "(every page's): the pool's occupied slots"})
    page = _reply(fields.Integer)
    limit = _reply(fields.Integer)


# --------------------------------------------------------------------------- audit trail
class AuditQuerySchema(PageQuerySchema):
    actor = fields.String(validate=Shape(models.column_length(models.AuditEvent.actor), PRINTABLE_TEXT, min=1,
                                         error=f"not a valid user name ({_PRINTABLE})"),
                          metadata={"description": "A user name: that user's records"})
    object_type = fields.String(validate=validate.OneOf(OBJECT_TYPES))
    object_id = _id(metadata={"description": "The records naming this id (with object_type: that object)"})
    since = BoundedAwareDateTime(default_timezone=dt.timezone.utc)
    until = BoundedAwareDateTime(default_timezone=dt.timezone.utc)


class AuditEventSchema(ReplySchema):
    id = _reply(fields.Integer)
    at = _reply(fields.String, metadata={"format": "date-time"})
    actor = _reply(fields.String, metadata={"description": "The user's name when they made the request"})
    actor_id = _reply(fields.Integer, nullable=True)
    token_id = _reply(fields.Integer, nullable=True, metadata={"description": "The token the request presented"})
    address = _reply(fields.String, metadata={"description": "The client's address (as a trusted proxy saw it)"})
    method = _reply(fields.String)
    path = _reply(fields.String)
    action = _reply(fields.String, metadata={"description": "The method and the route's endpoint, as `DELETE nodes.NodeDelete`"})
    object_type = _reply(fields.String, nullable=True, validate=validate.OneOf(OBJECT_TYPES))
    object_id = _reply(fields.String, nullable=True)
    status = _reply(fields.Integer, metadata={"description": "The reply's HTTP status"})
    job_id = _reply(fields.Integer, nullable=True, metadata={"description": "The job the request started, if any"})


class AuditPageSchema(PageSchema):
    items = _reply(fields.List, fields.Nested(AuditEventSchema))
