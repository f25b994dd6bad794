"""The agent's two inputs: its own settings file, and the node's sharing configuration.

- Settings (``/etc/gpuaas/agent.yaml``, written by the gpu_sharing role): where things are and
  how the agent behaves. Read once at start.
- The sharing configuration (``/etc/gpuaas/sharing.yaml``, written by the gpu_sharing module):
  which GPU is in which pool, with how many slots and at which security level. Read at start,
  and again on every change or SIGHUP.

Both are refused whole, with one line that says why, when anything in them is wrong; the
caller then keeps what it had (the last good sharing configuration stays in force).
"""
from __future__ import annotations

import dataclasses
import re

import yaml

from .nvml_access import COMPUTE_MODE_VALUES
from .sharing_policy import SECURITY_LEVELS, SHARING_RATIO_RANGE

ALLOCATION_POLICIES = ("binpack", "spread")
# How Allocate hands a container its GPUs, named as NVIDIA's device plugin names them
# (deviceListStrategy): /dev/null mounts under /var/run/nvidia-container-devices, which only the
# kubelet can set, so a Pod cannot widen them (the default); the NVIDIA container runtime's
# variable, which a Pod's own env overrides; or CDI device names for runtimes with CDI enabled
# (containerd >= 1.7, CRI-O).
DEVICE_LIST_STRATEGIES = ("volume-mounts", "envvar", "cdi-cri")


class ConfigError(Exception):
    """A settings or sharing file the agent refuses; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    sharing_config: str = "/etc/gpuaas/sharing.yaml"
    # The kubelet's device-plugin directory: its Registration socket and the plugins' sockets.
    device_plugin_dir: str = "/var/lib/kubelet/device-plugins"
    # GPUs in no pool are advertised whole under this name; empty to leave them to another plugin.
    whole_gpu_resource: str = "nvidia.com/gpu"
    allocation_policy: str = "binpack"
    device_list_strategy: tuple = ("volume-mounts",)
    cdi_kind: str = "nvidia.com/gpu"
    # Set compute modes and persistence mode; off on machines whose GPU settings must not change.
    manage_gpu_modes: bool = True
    mps_control: str = "nvidia-cuda-mps-control"
    # Each medium GPU's MPS pipe, log and shm directories live under <mps_root>/<uuid>/.
    mps_root: str = "/run/gpuaas/mps"
    # The size of each MPS daemon's private /dev/shm (a tmpfs `size=`: bytes, k/m/g, or a percentage
    # of RAM). Half the RAM, as NVIDIA's mount-shm sizes its own (a cap, not a reservation).
    mps_shm_size: str = "50%"
    # Where a medium slot's container finds its MPS pipe directory.
    mps_container_pipe_dir: str = "/run/nvidia-mps"
    # What the agent applied and advertises, for the role's check and for `gpuaas-agent status`.
    status_file: str = "/run/gpuaas/agent/status.json"
    # The last sharing configuration the agent accepted: in force at start if the file is bad.
    state_dir: str = "/var/lib/gpuaas-agent"
    # host:port for the HTTP status and readings; empty keeps it off. It requires a token.
    http_listen: str = ""
    http_token_file: str = "/etc/gpuaas/agent-token"
    poll_seconds: float = 1.0
    # Tenants (tenants.py): the kubelet's PodResources socket (<root-dir>/pod-resources/kubelet.sock)
    # and how long a List may take before the tenants are reported unknown.
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    pod_resources_timeout: float = 0.5
    # The node's Pods (UIDs, phases, container IDs) come from the API server through the kubelet's
    # own kubeconfig; node_name empty: the one its client certificate is for (system:node:<name>),
    # else the host name, lowercased, as the kubelet's default.
    kubeconfig: str = "/etc/kubernetes/kubelet.conf"
    node_name: str = ""
    api_timeout: float = 3.0
    # The Pod list is read again at least this often (and whenever PodResources or a cgroup says
    # something changed).
    api_relist_seconds: float = 30.0
    # Where the processes' cgroups are read (/proc/<pid>/cgroup); another root only for tests.
    proc_root: str = "/proc"


_SETTING_TYPES = {field.name: field.type for field in dataclasses.fields(Settings)}


def load_settings(path: str | None) -> Settings:
    if not path:
        return Settings()
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not YAML: {one_line(error)}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of settings")
    values = {}
    for key, value in raw.items():
        if key not in _SETTING_TYPES:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[key] = _setting(path, key, value)
    settings = Settings(**values)
    if settings.allocation_policy not in ALLOCATION_POLICIES:
        raise ConfigError(f"{path}: allocation_policy must be one of {', '.join(ALLOCATION_POLICIES)}")
    unknown = [item for item in settings.device_list_strategy if item not in DEVICE_LIST_STRATEGIES]
    if unknown or not settings.device_list_strategy:
        named = f" {', '.join(map(repr, unknown))} is unknown;" if unknown else ""
        raise ConfigError(f"{path}: device_list_strategy{named} it takes one or more of {', '.join(DEVICE_LIST_STRATEGIES)}")
    if not re.fullmatch(r"[1-9][0-9]*[kmgKMG%]?", settings.mps_shm_size):
        raise ConfigError(f"{path}: mps_shm_size must be a tmpfs size: a number, with k, m, g or %")
    if settings.http_listen and not re.fullmatch(r"\[?[0-9A-Za-z.:-]+\]?:\d{1,5}", settings.http_listen):
        raise ConfigError(f"{path}: http_listen must be host:port")
    return settings


def _setting(path, key, value):
    kind = _SETTING_TYPES[key]
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "tuple" and isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(f"{path}: {key} must be {'a positive number' if kind == 'float' else kind}")


@dataclasses.dataclass(frozen=True)
class GpuShare:
    """One GPU's place in a pool, as the gpu_sharing module recorded it."""
    uuid: str
    pool_id: int
    resource: str
    slots: int
    security_level: str
    compute_mode: str
    memory_limit_mb: int | None = None
    compute_share_percent: int | None = None


@dataclasses.dataclass(frozen=True)
class Sharing:
    version: int
    gpus: dict  # uuid -> GpuShare

    @property
    def resources(self) -> dict:
        """Each pool resource and the GPUs whose slots it advertises, in UUID order."""
        found: dict = {}
        for uuid in sorted(self.gpus):
            found.setdefault(self.gpus[uuid].resource, []).append(self.gpus[uuid])
        return found


EMPTY_SHARING = Sharing(version=0, gpus={})
# An extended resource name: a DNS subdomain prefix, then a name (k8s qualified-name rules).
_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def parse_sharing(text: str, source: str) -> Sharing:
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not YAML: {one_line(error)}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping with version and gpus")
    version = raw.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"{source}: version must be a whole number")
    gpus_raw = raw.get("gpus") or {}
    if not isinstance(gpus_raw, dict):
        raise ConfigError(f"{source}: gpus must be a mapping of GPU UUID to its pool")
    gpus, pools = {}, {}
    for uuid, entry in gpus_raw.items():
        share = _share(source, str(uuid), entry)
        other = pools.setdefault(share.resource, share)
        if (other.pool_id, other.security_level) != (share.pool_id, share.security_level):
            raise ConfigError(f"{source}: GPU {uuid}: resource {share.resource} is already pool "
                              f"{other.pool_id} ({other.security_level})")
        gpus[share.uuid] = share
    return Sharing(version=version, gpus=gpus)


def _share(source: str, uuid: str, entry) -> GpuShare:
    where = f"{source}: GPU {uuid}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping")

    def whole(key, low=None, high=None, required=True):
        value = entry.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{where}: {key} must be between {low} and {high}")
        return value

    pool_id = whole("pool_id", 1)
    slots = whole("slots", *SHARING_RATIO_RANGE)
    level = entry.get("security_level")
    if level not in SECURITY_LEVELS:
        raise ConfigError(f"{where}: security_level must be one of {', '.join(SECURITY_LEVELS)}")
    mode = entry.get("compute_mode")
    if mode not in COMPUTE_MODE_VALUES:
        raise ConfigError(f"{where}: compute_mode must be one of {', '.join(COMPUTE_MODE_VALUES)}")
    resource = entry.get("resource")
    if not isinstance(resource, str) or not _RESOURCE.fullmatch(resource):
        raise ConfigError(f"{where}: resource must be an extended resource name, domain/name")
    medium = level == "medium"
    memory = whole("memory_limit_mb", 1, required=medium)
    share = whole("compute_share_percent", 1, 100, required=medium)
    return GpuShare(uuid=uuid, pool_id=pool_id, resource=resource, slots=slots, security_level=level,
                    compute_mode=mode, memory_limit_mb=memory, compute_share_percent=share)


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())
