"""marshmallow schemas for every body and query. Ranges come from states/validation, not literals here."""
from __future__ import annotations

import datetime as dt

from marshmallow import EXCLUDE, Schema, fields, post_dump, pre_load, validate

from . import validation
from .jobs.waiting import MAX_WAIT_SECONDS
from .states import (DEFAULT_TIME_QUANTUM_SECONDS, INITIALIZE_STATE_CODES, K8S_JOIN_STATE_CODES, SECURITY_LEVELS,
                     SHARING_RATIO_RANGE, TIME_GROUPING_ALIASES, TIME_GROUPINGS, TIME_QUANTUM_RANGE_SECONDS, NodeStatus)


class StrictSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # clients send extra fields; ignore them rather than fail


class LoginSchema(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class LoginReplySchema(Schema):
    id = fields.Integer()
    username = fields.String()
    email = fields.String()
    role = fields.String()
    is_super_admin = fields.Boolean()
    token = fields.String()
    page_access = fields.List(fields.String())


class RegionStatusSchema(Schema):
    gpuaas = fields.String(validate=validate.OneOf(["enabled", "disabled", "none"]))
    compute = fields.String(validate=validate.OneOf(["enabled", "disabled", "none"]))


class RegionSchema(StrictSchema):
    id = fields.Integer(dump_only=True)
    region_name = fields.String(required=True, validate=validation.region_name)
    address = fields.String(load_default="", validate=validate.Length(max=255))
    city = fields.String(load_default="", validate=validate.Length(max=128))
    country = fields.String(load_default="", validate=validate.Length(max=128))
    country_code = fields.String(load_default="", validate=validate.Length(max=3))
    zipcode = fields.String(load_default="", validate=validate.Length(max=16))
    lat = fields.Float(allow_none=True, validate=validate.Range(-90, 90))
    lng = fields.Float(allow_none=True, validate=validate.Range(-180, 180))
    accelerator_type = fields.String(load_default="gpu", validate=validate.OneOf(["gpu", "npu"]))
    support_rdma = fields.String(allow_none=True, validate=validate.OneOf(["infiniband", "gpu_direct"]))
    status = fields.Method("_status", dump_only=True)

    def _status(self, region):
        return {"gpuaas": region.gpuaas_status, "compute": region.compute_status}


class RegionUpdateSchema(RegionSchema):
    region_name = fields.String(validate=validation.region_name)


class NodeAddSchema(StrictSchema):
    name = fields.String(required=True, validate=validation.node_name)
    region_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    node_ip = fields.String(required=True, validate=validation.ip_address)
    username = fields.String(required=True, validate=validation.username)
    port = fields.Integer(load_default=22, strict=True, validate=validate.Range(min=1, max=65535))
    is_controller_node = fields.Boolean(load_default=False)
    is_worker_node = fields.Boolean(load_default=False)
    is_gateway_service = fields.Boolean(load_default=False)
    is_storage_service = fields.Boolean(load_default=False)
    volume_group = fields.String(allow_none=True, validate=validation.volume_group)
    external_service_ip = fields.String(allow_none=True, validate=validation.ip_address)


class NodeEditSchema(StrictSchema):
    name = fields.String(validate=validation.node_name)
    node_ip = fields.String(validate=validation.ip_address)
    username = fields.String(validate=validation.username)
    port = fields.Integer(strict=True, validate=validate.Range(min=1, max=65535))
    is_controller_node = fields.Boolean()
    is_worker_node = fields.Boolean()
    is_gateway_service = fields.Boolean()
    is_storage_service = fields.Boolean()
    volume_group = fields.String(allow_none=True, validate=validation.volume_group)
    external_service_ip = fields.String(allow_none=True, validate=validation.ip_address)


class GpuSchema(Schema):
    id = fields.Integer()
    gpu_id = fields.Function(lambda gpu: str(gpu.index))
    uuid = fields.String()
    vendor = fields.String()
    gpu_model = fields.String(attribute="model")
    memory_in_mb = fields.Integer()
    pci_bus_id = fields.String()
    assignment_status = fields.Function(lambda gpu: gpu.assignment_status.value)


class NodeSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    kubernetes_name = fields.String(allow_none=True, metadata={
        "description": "The node's name in Kubernetes: a DNS label derived from its hostname at the first contact"})
    region_id = fields.Integer()
    gpuaas_id = fields.Integer(attribute="cluster_id", allow_none=True)
    node_ip = fields.String()
    port = fields.Integer()
    username = fields.String()
    volume_group = fields.String(allow_none=True)
    external_service_ip = fields.String(allow_none=True)
    status = fields.Function(lambda node: node.status.value)
    disabled = fields.Boolean()
    initialize_state_status_code = fields.Function(lambda node: INITIALIZE_STATE_CODES[node.status])
    k8s_join_state_status_code = fields.Function(
        lambda node: -1 if node.status is NodeStatus.ERROR and node.joined else K8S_JOIN_STATE_CODES.get(node.status, 0))
    role = fields.Function(lambda node: {
        "is_controller_node": node.is_controller_node, "is_worker_node": node.is_worker_node,
        "is_gateway_service": node.is_gateway_service, "is_storage_service": node.is_storage_service})
    gpus = fields.List(fields.Nested(GpuSchema))
    nvidia_driver_version = fields.String(allow_none=True)
    total_memory_in_mb = fields.Integer(allow_none=True)
    total_disk_in_mb = fields.Integer(allow_none=True)
    cores = fields.Integer(allow_none=True)
    cpu_model = fields.String(allow_none=True)
    region = fields.Nested(RegionSchema)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()

    @post_dump
    def _capital_id(self, data, **_kwargs):
        data["Id"] = data["id"]  # existing clients read `Id`
        return data


class RegionQuerySchema(StrictSchema):
    region_id = fields.Integer(validate=validate.Range(min=1))


class SuccessSchema(Schema):
    success = fields.Boolean()
    message = fields.String()


class NodeIdQuerySchema(StrictSchema):
    gpuaas_node_id = fields.Integer(required=True, validate=validate.Range(min=1))


class NodeIdAltQuerySchema(StrictSchema):
    node_id = fields.Integer(required=True, validate=validate.Range(min=1))


class LeaveQuerySchema(NodeIdAltQuerySchema):
    ungraceful = fields.Boolean(load_default=False)


class ControllerQuerySchema(StrictSchema):
    controller_node_id = fields.Integer(required=True, validate=validate.Range(min=1))


class JoinSchema(StrictSchema):
    """The guide's body ({joinee_node_id, region_id}) or the clients' ({gpuaas_id, gpuaas_node_id})."""

    joinee_node_id = fields.Integer(validate=validate.Range(min=1))
    region_id = fields.Integer(validate=validate.Range(min=1))
    gpuaas_id = fields.Integer(validate=validate.Range(min=1))
    gpuaas_node_id = fields.Integer(validate=validate.Range(min=1))


class ScanQuerySchema(StrictSchema):
    scan_id = fields.String(required=True, validate=validate.Length(min=1, max=36))


class JobWaitQuerySchema(StrictSchema):
    wait = fields.Float(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_SECONDS), metadata={
        "description": "Seconds to wait for the job to finish before answering (a long poll); 0 answers at once."})


class PageQuerySchema(StrictSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class OperationReplySchema(Schema):
    success = fields.Boolean()
    message = fields.String()
    job_id = fields.Integer()


class JobSchema(Schema):
    id = fields.Integer()
    operation = fields.String()
    node_id = fields.Integer(allow_none=True)
    gpuaas_id = fields.Integer(attribute="cluster_id", allow_none=True)
    status = fields.Function(lambda job: job.status.value)
    rc = fields.Integer(allow_none=True)
    explanation = fields.String()
    result = fields.Dict()
    emitted_events = fields.Integer()
    cancel_requested = fields.Boolean()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class ScanSchema(Schema):
    id = fields.Integer()
    scan_id = fields.Function(lambda scan: scan.request_id)
    request_id = fields.String()
    status = fields.String()
    node_id = fields.Integer()
    job_id = fields.Integer(allow_none=True)
    error_msg = fields.String(allow_none=True)
    resources = fields.Dict()


class ClusterSchema(Schema):
    id = fields.Integer()
    region_id = fields.Integer()
    controller_node_id = fields.Integer(allow_none=True)
    status = fields.Function(lambda cluster: cluster.status.value)
    k8s_api_server_port = fields.Integer(allow_none=True)
    prometheus_reverse_tunnel_port = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


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
POOL_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,62}$",
                            error="not a valid pool name (at most 63 letters, digits, spaces, _ . -)")


class PoolFieldsSchema(StrictSchema):
    pool_name = fields.String(required=True, validate=POOL_NAME)
    sharing_ratio = IntegralNumber(required=True, strict=True, validate=_RATIO)
    time_quantum_in_sec = IntegralNumber(load_default=DEFAULT_TIME_QUANTUM_SECONDS, strict=True, validate=_QUANTUM)
    security_level = fields.String(required=True, validate=_LEVEL)
    attach_gpu_ids = fields.List(fields.String(validate=validate.Length(min=1, max=64)), load_default=list)


class PoolCreateSchema(StrictSchema):
    gpuaas_id = fields.Integer(required=True, validate=validate.Range(min=1))
    pool = fields.Nested(PoolFieldsSchema, required=True)


class PoolUpdateSchema(StrictSchema):
    """PUT: the create's pool fields, with the aliases clients use."""

    pool_name = fields.String(validate=POOL_NAME)
    sharing_ratio = IntegralNumber(strict=True, validate=_RATIO)
    time_quantum_in_sec = IntegralNumber(strict=True, validate=_QUANTUM)
    security_level = fields.String(validate=_LEVEL)

    @pre_load
    def _aliases(self, data, **_kwargs):
        data = dict(data)
        for alias, name in (("name", "pool_name"), ("overcommit_ratio", "sharing_ratio"),
                            ("security_mode", "security_level")):
            if alias in data and name not in data:
                data[name] = data.pop(alias)
        return data


class GpuUuidsSchema(StrictSchema):
    gpu_uuids = fields.List(fields.String(validate=validate.Length(min=1, max=64)), required=True,
                            validate=validate.Length(min=1))


class GpuUuidsQuerySchema(StrictSchema):
    """remove_gpus by GET: ?gpu_uuids=a,b (comma-separated)."""

    gpu_uuids = fields.String(required=True, validate=validate.Length(min=1))


class PoolGpuSchema(StrictSchema):
    pool_id = fields.Integer(required=True, validate=validate.Range(min=1))
    gpuaas_node_id = fields.Integer(required=True, validate=validate.Range(min=1))
    gpu_index = fields.Integer(required=True, validate=validate.Range(min=0))


class MetricsQuerySchema(StrictSchema):
    time_grouping = fields.String(load_default="hour", validate=validate.OneOf(
        list(TIME_GROUPINGS) + list(TIME_GROUPING_ALIASES)))
    start = fields.AwareDateTime(data_key="from", default_timezone=dt.timezone.utc)
    end = fields.AwareDateTime(data_key="to", default_timezone=dt.timezone.utc)
