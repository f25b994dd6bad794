"""Every status the service knows, and the transitions between them, defined once.

The API guide names node statuses as strings; existing clients also read numeric
codes (compatibility.md). Both come from the tables here, and so do the 409
answers for requests the current state does not allow.
"""
from __future__ import annotations

import enum

from .shared import sharing_policy


class NodeStatus(str, enum.Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    INITIALIZED = "initialized"
    K8_INITIALIZING = "k8_initializing"
    K8_INITIALIZED = "k8_initialized"
    HEALTHY = "healthy"
    ERROR = "error"
    RESETTING = "resetting"


def enum_value(status) -> str:
    """A status's string, whether it arrives as one of these enums (ORM) or as its stored string."""
    return status.value if isinstance(status, enum.Enum) else status


# A node's roles: the API's flag for each, and the inventory group (and node_init role) it puts the node in.
ROLE_FLAGS = {
    "controller": "is_controller_node",
    "worker": "is_worker_node",
    "gateway": "is_gateway_service",
    "storage": "is_storage_service",
}


class ClusterStatus(str, enum.Enum):
    INITIALIZING = "GPUAAS_INITIALIZING"
    ENABLE_SETTING_UP = "GPUAAS_ENABLE_SETTING_UP"
    ACTIVE = "GPUAAS_ACTIVE"
    INACTIVE = "GPUAAS_INACTIVE"
    ERROR_WHILE_ENABLING = "GPUAAS_ERROR_WHILE_ENABLING"


class RegionServiceStatus(str, enum.Enum):
    """A region's status.gpuaas and status.compute (compatibility.md)."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    NONE = "none"


# A region's kind of accelerator, and the RDMA it supports (compatibility.md).
ACCELERATOR_TYPES = ("gpu", "npu")
RDMA_SUPPORT = ("infiniband", "gpu_direct")


class ScanStatus(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    ERROR = "error"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.ERROR, JobStatus.CANCELED)


class GpuAssignment(str, enum.Enum):
    """Emitted in upper case, as the guide writes it, except on the cluster's GPU list (rendering.py,
    render_cluster_gpu); accepted in any case."""

    UNASSIGNED = "UNASSIGNED"
    ASSIGNING = "ASSIGNING"
    ASSIGNED = "ASSIGNED"
    UNASSIGNING = "UNASSIGNING"
    UNAVAILABLE = "UNAVAILABLE"

    @classmethod
    def parse(cls, value: str) -> "GpuAssignment":
        return cls(value.upper())


# A pool's sharing settings: the guide's ranges, from the collection's single definition (shared/).
SHARING_RATIO_RANGE = sharing_policy.SHARING_RATIO_RANGE
TIME_QUANTUM_RANGE_SECONDS = sharing_policy.TIME_QUANTUM_RANGE_SECONDS
DEFAULT_TIME_QUANTUM_SECONDS = sharing_policy.DEFAULT_TIME_QUANTUM_SECONDS
SECURITY_LEVELS = sharing_policy.SECURITY_LEVELS


class TeamStatus(str, enum.Enum):
    """A team's status in a pool's subscribed_teams (docs/api.md): a process on one of its slots,
    slots held with no process, or none held now (listed for a query since an earlier time)."""

    RUNNING = "running"
    IDLE = "idle"
    ENDED = "ended"


class PoolStatus(str, enum.Enum):
    DEPLOYMENT_SCHEDULED = "DEPLOYMENT_SCHEDULED"
    VM_CREATION = "VM_CREATION"
    SETTING_UP = "SETTING_UP"
    ACTIVE = "ACTIVE"
    ERROR_WHILE_DEPLOYING = "ERROR_WHILE_DEPLOYING"
    DELETING = "DELETING"


# A pool's lifecycle. A change (create, add_gpus, remove_gpus, delete, retry) is accepted only
# from a settled status, and moves the pool to DEPLOYMENT_SCHEDULED (or DELETING); the job
# then moves it through VM_CREATION (slots rebuilt) and SETTING_UP (nodes being configured)
# to ACTIVE, or to ERROR_WHILE_DEPLOYING when a node failed (retry from there).
POOL_SETTLED_STATUSES = frozenset({PoolStatus.ACTIVE, PoolStatus.ERROR_WHILE_DEPLOYING})
# A GPU's assignment once its node has applied the change; on failure it stays in transit.
GPU_SETTLES_TO = {GpuAssignment.ASSIGNING: GpuAssignment.ASSIGNED, GpuAssignment.UNASSIGNING: GpuAssignment.UNASSIGNED}

# compatibility.md: 0 not done, 1 in progress, 2 done, -1 error, -2 deinit running.
INITIALIZE_STATE_CODES = {
    NodeStatus.UNINITIALIZED: 0,
    NodeStatus.INITIALIZING: 1,
    NodeStatus.INITIALIZED: 2,
    NodeStatus.K8_INITIALIZING: 2,
    NodeStatus.K8_INITIALIZED: 2,
    NodeStatus.HEALTHY: 2,
    NodeStatus.ERROR: -1,
    NodeStatus.RESETTING: -2,
}
K8S_JOIN_STATE_CODES = {
    NodeStatus.K8_INITIALIZING: 1,
    NodeStatus.K8_INITIALIZED: 2,
    NodeStatus.HEALTHY: 2,
}


class Operation(str, enum.Enum):
    """Node operations that run a playbook; value = the collection's playbook."""

    INIT = "node_init"
    DEINIT = "node_deinit"
    REBOOT = "node_reboot"
    ENABLE = "gpuaas_enable"
    JOIN = "node_join"
    LEAVE = "node_leave"
    DISABLE = "node_disable"
    TEST_CONN = "test_conn"
    SCAN_GPUS = "scan_gpus"
    SCAN_NPUS = "scan_npus"
    SCAN_RESOURCES = "scan_resources"
    STORAGE_METRICS = "storage_metrics"
    # Not node operations: multi-node jobs with "targets".
    # Applies pools' sharing on the nodes holding their GPUs (pool lifecycle below).
    POOL_APPLY = "pool_apply"
    # Samples the pool GPUs and storage nodes (metrics/collector.py), read-only.
    COLLECT_METRICS = "collect_metrics"


# Each scan operation and the kind its scans record (the `kind` of a scan reply).
SCAN_KINDS = {Operation.SCAN_GPUS: "gpus", Operation.SCAN_NPUS: "npus", Operation.SCAN_RESOURCES: "resources"}


class Transition:
    """Which node statuses an operation may start from, and where it moves the node."""

    def __init__(self, allowed_from, running=None, on_success=None, on_failure=None, mutating=True):
        self.allowed_from = frozenset(allowed_from)
        self.running = running
        self.on_success = on_success
        self.on_failure = on_failure
        self.mutating = mutating


_ANY = frozenset(NodeStatus)
_READY = {NodeStatus.INITIALIZED, NodeStatus.K8_INITIALIZED, NodeStatus.HEALTHY}

NODE_TRANSITIONS: dict[Operation, Transition] = {
    Operation.INIT: Transition({NodeStatus.UNINITIALIZED, NodeStatus.ERROR}, NodeStatus.INITIALIZING,
                               NodeStatus.INITIALIZED, NodeStatus.ERROR),
    Operation.DEINIT: Transition(_ANY - {NodeStatus.INITIALIZING, NodeStatus.RESETTING}, NodeStatus.RESETTING,
                                 NodeStatus.UNINITIALIZED, NodeStatus.ERROR),
    Operation.ENABLE: Transition({NodeStatus.INITIALIZED}, NodeStatus.K8_INITIALIZING,
                                 NodeStatus.HEALTHY, NodeStatus.ERROR),
    Operation.JOIN: Transition({NodeStatus.INITIALIZED}, NodeStatus.K8_INITIALIZING,
                               NodeStatus.HEALTHY, NodeStatus.ERROR),
    Operation.LEAVE: Transition({NodeStatus.K8_INITIALIZED, NodeStatus.HEALTHY, NodeStatus.ERROR},
                                NodeStatus.RESETTING, NodeStatus.INITIALIZED, NodeStatus.ERROR),
    Operation.REBOOT: Transition(_ANY - {NodeStatus.INITIALIZING, NodeStatus.RESETTING, NodeStatus.K8_INITIALIZING}),
    Operation.DISABLE: Transition(_READY),
    # Read-only operations never move the node and may run beside anything.
    Operation.TEST_CONN: Transition(_ANY, mutating=False),
    Operation.SCAN_GPUS: Transition(_ANY - {NodeStatus.UNINITIALIZED}, mutating=False),
    Operation.SCAN_NPUS: Transition(_ANY - {NodeStatus.UNINITIALIZED}, mutating=False),
    Operation.SCAN_RESOURCES: Transition(_ANY - {NodeStatus.UNINITIALIZED}, mutating=False),
    Operation.STORAGE_METRICS: Transition(_ANY - {NodeStatus.UNINITIALIZED}, mutating=False),
}

# The operations whose failure leaves a node ERROR although its init succeeded: the failure is
# Kubernetes's, and a node shows it in k8s_join_state_status_code, its initialize code staying 2
# (compatibility.md: a client reads an initialize code of -1 as "initialization failed").
KUBERNETES_OPERATIONS = frozenset({Operation.ENABLE, Operation.JOIN, Operation.LEAVE})
# The operations that leave a node ERROR when they fail: the newest one a node ran tells why it is.
FAILING_TO_ERROR = frozenset(operation for operation, transition in NODE_TRANSITIONS.items()
                             if transition.on_failure is NodeStatus.ERROR)

# A node can be deleted only when nothing of it remains configured.
DELETABLE_NODE_STATUSES = frozenset({NodeStatus.UNINITIALIZED, NodeStatus.ERROR})


def refusal(operation: Operation, status: NodeStatus) -> str | None:
    """Why ``operation`` may not start on a node in ``status``; None when it may."""
    transition = NODE_TRANSITIONS[operation]
    if status in transition.allowed_from:
        return None
    allowed = ", ".join(sorted(s.value for s in transition.allowed_from))
    return f"cannot {operation.name.lower().replace('_', ' ')} a node that is {status.value} (allowed from: {allowed})"
