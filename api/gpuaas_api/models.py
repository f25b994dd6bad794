"""The fleet's state: SQLAlchemy 2 models. Alembic migrations in api/migrations follow these."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, func, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .shared import inventory_names
from .states import ClusterStatus, GpuAssignment, JobStatus, NodeStatus, PoolStatus, ScanStatus


class Base(DeclarativeBase):
    pass


def column_length(attribute) -> int:
    """A text column's length: the most a value stored there may hold (requests and node reports
    are checked against it)."""
    return attribute.property.columns[0].type.length


def _enum(cls):
    # Stored as the value strings (not Python names), without a database-side type,
    # so SQLite and PostgreSQL hold the same thing.
    return Enum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False, length=32)


class Timestamps:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(),
                                                    onupdate=func.now())


class User(Timestamps, Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    # access.Role's value; is_super_admin follows it (true for admins only: users.set_role).
    role: Mapped[str] = mapped_column(String(32))
    is_super_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Timestamps, Base):
    """Only a SHA-256 of the token is stored; the token itself is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # A narrower role than the user's for what this token may do (access.Role); None: the user's own.
    role: Mapped[str | None] = mapped_column(String(32))
    user: Mapped[User] = relationship(back_populates="tokens")


class Region(Timestamps, Base):
    __tablename__ = "regions"
    id: Mapped[int] = mapped_column(primary_key=True)
    region_name: Mapped[str] = mapped_column(String(12), unique=True)
    address: Mapped[str] = mapped_column(String(255), default="")
    city: Mapped[str] = mapped_column(String(128), default="")
    country: Mapped[str] = mapped_column(String(128), default="")
    country_code: Mapped[str] = mapped_column(String(3), default="")
    zipcode: Mapped[str] = mapped_column(String(16), default="")
    lat: Mapped[float | None] = mapped_column(Float)
    lng: Mapped[float | None] = mapped_column(Float)
    accelerator_type: Mapped[str] = mapped_column(String(8), default="gpu")
    support_rdma: Mapped[str | None] = mapped_column(String(16))
    # status.gpuaas is derived from the region's clusters (rendering.region_gpuaas_status), never stored.
    compute_status: Mapped[str] = mapped_column(String(8), default="none")


class Cluster(Timestamps, Base):
    """A "gpuaas": one Kubernetes cluster in one region."""

    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"))
    # A deleted controller leaves a torn-down cluster without one (not a foreign-key failure).
    controller_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", use_alter=True, ondelete="SET NULL",
                                                                      name="fk_clusters_controller_node_id_nodes"))
    status: Mapped[ClusterStatus] = mapped_column(_enum(ClusterStatus), default=ClusterStatus.INITIALIZING)
    k8s_api_server_address: Mapped[str | None] = mapped_column(String(255))
    k8s_api_server_port: Mapped[int | None] = mapped_column(Integer)
    prometheus_reverse_tunnel_port: Mapped[int | None] = mapped_column(Integer)
    facts: Mapped[dict] = mapped_column(JSON, default=dict)


class Node(Timestamps, Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("region_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # A display name (any printable text, validation.NODE_NAME_MAX_LENGTH): never an inventory host
    # name, a command-line word or a file name; those use inventory_name.
    name: Mapped[str] = mapped_column(String(128))
    # The node's name in Kubernetes, derived once from its hostname (kubernetes_names.py).
    kubernetes_name: Mapped[str | None] = mapped_column(String(63))
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id"))
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id"))
    node_ip: Mapped[str] = mapped_column(String(45))
    port: Mapped[int] = mapped_column(Integer, default=22)
    username: Mapped[str] = mapped_column(String(32))
    is_controller_node: Mapped[bool] = mapped_column(Boolean, default=False)
    is_worker_node: Mapped[bool] = mapped_column(Boolean, default=False)
    is_gateway_service: Mapped[bool] = mapped_column(Boolean, default=False)
    is_storage_service: Mapped[bool] = mapped_column(Boolean, default=False)
    volume_group: Mapped[str | None] = mapped_column(String(128))
    external_service_ip: Mapped[str | None] = mapped_column(String(45))
    status: Mapped[NodeStatus] = mapped_column(_enum(NodeStatus), default=NodeStatus.UNINITIALIZED)
    joined: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The job holding the node for a mutating operation; taken with a conditional UPDATE.
    busy_job_id: Mapped[int | None] = mapped_column(Integer)
    # Pinned at the first successful contact, enforced afterwards.
    ssh_host_key: Mapped[str | None] = mapped_column(Text)
    nvidia_driver_version: Mapped[str | None] = mapped_column(String(32))
    cuda_version: Mapped[str | None] = mapped_column(String(16))
    total_memory_in_mb: Mapped[int | None] = mapped_column(Integer)
    total_disk_in_mb: Mapped[int | None] = mapped_column(Integer)
    cores: Mapped[int | None] = mapped_column(Integer)
    cpu_model: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[Region] = relationship()
    # A deleted node takes its GPUs and NPUs with it (ON DELETE CASCADE in the database; the ORM must
    # not try to orphan them first).
    gpus: Mapped[list[Gpu]] = relationship(back_populates="node", order_by="Gpu.index",
                                           cascade="all, delete-orphan", passive_deletes=True)
    npus: Mapped[list[Npu]] = relationship(back_populates="node", order_by="Npu.index",
                                           cascade="all, delete-orphan", passive_deletes=True)

    @property
    def inventory_name(self) -> str:
        return inventory_name(self.id)


def inventory_name(node_id: int) -> str:
    """The node's host name in every inventory, playbook variable and artifact: derived from its id,
    so a display name never reaches Ansible, a command line or a file name. Defined once, in the
    collection (module_utils/inventory_names.py), which the inventory plugin uses too."""
    return inventory_names.host_alias(node_id)


class Gpu(Timestamps, Base):
    __tablename__ = "gpus"
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(64), unique=True)
    vendor: Mapped[str] = mapped_column(String(16), default="NVIDIA")
    model: Mapped[str] = mapped_column(String(96))
    memory_in_mb: Mapped[int] = mapped_column(Integer)
    pci_bus_id: Mapped[str | None] = mapped_column(String(32))
    compute_mode: Mapped[str | None] = mapped_column(String(24))
    mig_mode: Mapped[str | None] = mapped_column(String(16))
    assignment_status: Mapped[GpuAssignment] = mapped_column(_enum(GpuAssignment), default=GpuAssignment.UNASSIGNED)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id"), index=True)
    node: Mapped[Node] = relationship(back_populates="gpus")


class Npu(Timestamps, Base):
    __tablename__ = "npus"
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    chip_name: Mapped[str | None] = mapped_column(String(32))
    memory_in_mb: Mapped[int | None] = mapped_column(Integer)
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    node: Mapped[Node] = relationship(back_populates="npus")


class Pool(Timestamps, Base):
    __tablename__ = "pools"
    id: Mapped[int] = mapped_column(primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"))
    pool_name: Mapped[str] = mapped_column(String(63))
    # What clients display (they prefer it over the name); the name unless one was given.
    pool_label: Mapped[str | None] = mapped_column(String(63))
    sharing_ratio: Mapped[int] = mapped_column(Integer)
    time_quantum_in_sec: Mapped[int] = mapped_column(Integer)
    security_level: Mapped[str] = mapped_column(String(8))
    status: Mapped[PoolStatus] = mapped_column(_enum(PoolStatus), default=PoolStatus.DEPLOYMENT_SCHEDULED)


class PoolSlot(Base):
    """One virtual-GPU slot: a pool's GPU × sharing_ratio of these."""

    __tablename__ = "pool_slots"
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    gpu_id: Mapped[int] = mapped_column(ForeignKey("gpus.id", ondelete="CASCADE"))
    slot_index: Mapped[int] = mapped_column(Integer)


class Job(Timestamps, Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    operation: Mapped[str] = mapped_column(String(32))
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"))
    # The pool a pool change is for: its changes run one at a time, in order (jobs/queue.py).
    pool_id: Mapped[int | None] = mapped_column(Integer, index=True)
    mutating: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.PENDING, index=True)
    rc: Mapped[int | None] = mapped_column(Integer)
    explanation: Mapped[str] = mapped_column(Text, default="")
    extravars: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # Until when the claimant holds the running job (jobs/lease.py).
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    emitted_events: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Who asked for it (audit.py): a user's id and name, kept as text so that the record outlives the
    # user. None for the service's own jobs (metrics collection).
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(64), index=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "counter"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # The node whose logs show the event. A deleted node's events stay with their job (its own log),
    # and no node that is given the same id later (SQLite reuses the highest id) shows them.
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL", name="fk_job_events_node_id_nodes"),
                                                index=True)
    counter: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str | None] = mapped_column(String(255))
    stdout: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Scan(Timestamps, Base):
    __tablename__ = "scans"
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # gpus, npus, resources
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    # Indexed: a scan is found by its job when the job ends, and a pruned job sets its scans' job_id to NULL.
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    status: Mapped[ScanStatus] = mapped_column(_enum(ScanStatus), default=ScanStatus.PENDING)
    error_msg: Mapped[str | None] = mapped_column(Text)
    resources: Mapped[dict] = mapped_column(JSON, default=dict)


class MetricSample(Base):
    """One NVML reading of one GPU, taken by the metrics collector (metrics/collector.py).

    ``pool_id`` is the pool the GPU was in when sampled: a pool's history stays its own when GPUs
    move between pools. Raw samples are kept for GPUAAS_METRICS_RAW_RETENTION_DAYS; queries read
    the rollups.
    """

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_pool_time", "pool_id", "sampled_at"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    gpu_id: Mapped[int] = mapped_column(ForeignKey("gpus.id", ondelete="CASCADE"))
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE",
                                                           name="fk_metric_samples_pool_id_pools"))
    sampled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    utilization_gpu_percent: Mapped[float] = mapped_column(Float)
    memory_used_mb: Mapped[float] = mapped_column(Float)
    temperature_c: Mapped[float] = mapped_column(Float)
    power_w: Mapped[float] = mapped_column(Float)


class GpuReading(Base):
    """Each GPU's newest sample, replaced at every collection: what "now" reads (pool usage, /metrics)
    without searching the raw samples."""

    __tablename__ = "gpu_readings"
    gpu_id: Mapped[int] = mapped_column(ForeignKey("gpus.id", ondelete="CASCADE"), primary_key=True)
    sampled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    utilization_gpu_percent: Mapped[float] = mapped_column(Float)
    memory_used_mb: Mapped[float] = mapped_column(Float)
    temperature_c: Mapped[float] = mapped_column(Float)
    power_w: Mapped[float] = mapped_column(Float)


class MetricRollup(Base):
    """A pool's samples summed per bucket of one time grouping, kept as samples arrive.

    A metrics query reads one row per bucket instead of every sample: avg = sum / samples.
    """

    __tablename__ = "metric_rollups"
    # Retention deletes by age per width (metrics.store.prune).
    __table_args__ = (Index("ix_metric_rollups_width_time", "width_seconds", "bucket_start"),)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    width_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds, UTC
    samples: Mapped[int] = mapped_column(Integer)
    utilization_gpu_percent_sum: Mapped[float] = mapped_column(Float)
    utilization_gpu_percent_max: Mapped[float] = mapped_column(Float)
    memory_used_mb_sum: Mapped[float] = mapped_column(Float)
    memory_used_mb_max: Mapped[float] = mapped_column(Float)
    temperature_c_sum: Mapped[float] = mapped_column(Float)
    temperature_c_max: Mapped[float] = mapped_column(Float)
    power_w_sum: Mapped[float] = mapped_column(Float)
    power_w_max: Mapped[float] = mapped_column(Float)


class TenantSlot(Base):
    """A pool slot held by a Pod's container now, as the node's agent last reported it
    (metrics/tenants.py). A team is the Pod's namespace. Replaced at every collection that read
    the node's tenants; a free slot has no row."""

    __tablename__ = "tenant_slots"
    gpu_id: Mapped[int] = mapped_column(ForeignKey("gpus.id", ondelete="CASCADE"), primary_key=True)
    slot_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    team: Mapped[str] = mapped_column(String(63))
    pod: Mapped[str] = mapped_column(String(253))
    container: Mapped[str] = mapped_column(String(63))
    pod_uid: Mapped[str | None] = mapped_column(String(36))
    running: Mapped[bool] = mapped_column(Boolean)
    vram_used_mb: Mapped[float] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)  # the agent's counter for this slot and tenant
    sampled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class TenantTotal(Base):
    """A team's GPU time in a pool since it first held a slot there, and when it last held one:
    the counter /metrics exposes, and which teams a subscribed_teams query since a time lists."""

    __tablename__ = "tenant_totals"
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class TenantRollup(Base):
    """A team's use of a pool summed per bucket of one time grouping, as MetricRollup is for GPUs:
    over the collections in which the team held slots, the slots and vRAM (sum and max), and the
    GPU time received in the bucket."""

    __tablename__ = "tenant_rollups"
    __table_args__ = (Index("ix_tenant_rollups_width_time", "width_seconds", "bucket_start"),)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    team: Mapped[str] = mapped_column(String(63), primary_key=True)
    width_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds, UTC
    samples: Mapped[int] = mapped_column(Integer)
    slots_sum: Mapped[float] = mapped_column(Float)
    slots_max: Mapped[float] = mapped_column(Float)
    vram_used_mb_sum: Mapped[float] = mapped_column(Float)
    vram_used_mb_max: Mapped[float] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)


class StorageSample(Base):
    """One storage_info report of a storage node (volume groups, filesystems)."""

    __tablename__ = "storage_samples"
    __table_args__ = (Index("ix_storage_samples_node_time", "node_id", "sampled_at"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    sampled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict] = mapped_column(JSON, default=dict)


class Schedule(Base):
    """When a periodic task (the metrics collection) is next due, shared by every API process.

    A process runs the task only if it moves ``next_run_at`` forward with a conditional UPDATE,
    so across any number of processes a period starts the task once.
    """

    __tablename__ = "schedules"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_run_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class DataVersion(Base):
    """One counter, bumped in the same transaction as any change to what node and GPU replies show.

    Read endpoints cache their serialised replies per process under this version (reply_cache.py), so a
    reply is rebuilt only after a change, and every process sees the change at once.
    """

    __tablename__ = "data_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class ControllerKey(Base):
    """The deployment's SSH identity, when it lives in the database (GPUAAS_SECRET_KEY; ssh_keys.py).

    One ``active`` key pair, which every service host's jobs use; during a rotation one
    ``staged`` pair beside it, which nodes are given before the switch; ``retired`` pairs after
    it, until removed. The private key is encrypted with the deployment's secret (Fernet).
    """

    __tablename__ = "controller_keys"
    __table_args__ = (
        # At most one active and one staged pair, however many hosts make one at once.
        Index("ux_controller_keys_state", "state", unique=True,
              sqlite_where=text("state IN ('active', 'staged')"),
              postgresql_where=text("state IN ('active', 'staged')")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(Text)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditEvent(Base):
    """One mutating request (audit.py): who asked, from where, for what, and how it ended."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    token_id: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(128))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (Index("ix_audit_events_object", "object_type", "object_id"),)


class LoginFailure(Base):
    """A failed login (auth.py's throttle): counted per (username, address) and per address, in the
    database so that every service host sees the same counts. The username is kept as its SHA-256:
    people type passwords into the username field."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    address: Mapped[str] = mapped_column(String(64))
    username_hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_login_failures_address_at", "address", "at"),)
