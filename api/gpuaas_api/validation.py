"""The shapes of accepted values, each defined once (the OpenAPI document publishes these patterns).

Values that end up in an inventory, an SSH command line or a kubeadm call are narrow on purpose:
nothing there can carry a space, a newline, a leading dash, `=` or shell metacharacters, so no
value can inject inventory variables, SSH options or shell. A node's name is the exception: it
is a display name only, and never reaches any of those (the inventory uses models.inventory_name).
"""
from __future__ import annotations

import ipaddress
import re

from marshmallow import ValidationError

# A display name: printable text (no control characters), as clients build it from a company and a
# hostname ("Acme Corp.gpu-01.example.com", "10.0.0.7").
NODE_NAME_MAX_LENGTH = 128
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f]"  # no C0 or C1 control character
PRINTABLE_TEXT = re.compile(rf"^{_PRINTABLE}*$")
# Printable, and not only spaces (the character class spelt out: Python's \s and ECMA-262's differ).
NODE_NAME = re.compile(rf"^{_PRINTABLE}*[^\x00-\x20\x7f-\x9f]{_PRINTABLE}*$")
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # POSIX portable user names
VOLUME_GROUP = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")  # LVM's own rule, no leading dash
REGION_NAME = re.compile(r"^[A-Za-z0-9-]{1,12}$")
# Ids are 64-bit signed integers in the database: a larger one names nothing (404 or a field error).
MAX_ID = 2**63 - 1
MAX_INT32 = 2**31 - 1  # the integer columns that are 32-bit (an index, MiB of memory or disk)
MAX_GPU_INDEX = MAX_INT32
MAX_PAGE = 2**31 - 1  # a page beyond this would overflow the OFFSET


def _matches(pattern: re.Pattern, what: str):
    def check(value: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValidationError(f"not a valid {what}")
    return check


def node_name(value: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= NODE_NAME_MAX_LENGTH or not NODE_NAME.fullmatch(value):
        raise ValidationError(f"not a valid node name (printable text, 1 to {NODE_NAME_MAX_LENGTH} characters)")


username = _matches(USERNAME, "user name (lower-case letters, digits, _ and -, at most 32)")
volume_group = _matches(VOLUME_GROUP, "LVM volume group name")
region_name = _matches(REGION_NAME, "region name (letters, digits and hyphens, at most 12)")


def is_ip_address(value) -> bool:
    """An IPv4 or IPv6 address, never with an IPv6 zone ID: Python accepts after the `%` any text but
    `%` and `/` (`::1%{{ lookup('pipe', …) }}`), and an address becomes a node's `ansible_host`."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return getattr(address, "scope_id", None) is None


def ip_address(value: str) -> None:
    if not is_ip_address(value):
        raise ValidationError("not a valid IPv4 or IPv6 address (an IPv6 zone ID, after %, is not accepted)")


# What nodes report (roles' scans and facts), checked against the real formats before anything is
# stored: a node's root (a tenant who escaped a container) controls every one of these strings.
# NVML's UUIDs: `GPU-` and a UUID; a MIG device's `MIG-` and a UUID (R470 and later) or, before,
# `MIG-GPU-<uuid>/<gi>/<ci>` (NVML API reference, nvmlDeviceGetUUID; CUDA_VISIBLE_DEVICES docs).
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GPU_UUID = re.compile(rf"^(GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]{{1,2}}/[0-9]{{1,2}})$")
GPU_UUID_MAX_LENGTH = 64
# Product names as NVML and npu-smi print them ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-32GB",
# "NVIDIA RTX A6000", "910B3"), and CPU models as /proc/cpuinfo does ("Intel(R) Xeon(R) CPU E5-2680
# v4 @ 2.40GHz", "AMD EPYC 9654 96-Core Processor"): no braces, quotes, %, $ or control characters.
PRODUCT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()@/+,:#-]*$")
PCI_BUS_ID = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")  # NVML's busId
VERSION = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){1,3}$")  # a driver's "550.54.15", CUDA's "12.4"
WORD = re.compile(r"^[A-Za-z][A-Za-z_ ]*$")  # a vendor, a compute or MIG mode, an NPU's health
# An absolute path as statvfs(3) takes it (PATH_MAX 4096), printable.
ABSOLUTE_PATH = re.compile(r"^/[^\x00-\x1f\x7f-\x9f]{0,4094}$")
# What an agent's tenant report names (Kubernetes' own rules, k8s.io/apimachinery validation):
# a namespace and a container name are DNS-1123 labels, a Pod name a DNS-1123 subdomain, a Pod's
# UID a UUID; a slot's device ID is `<GPU UUID>::<slot>`, a whole GPU's its UUID (gpuaas_agent.devices).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
POD_UID = re.compile(rf"^{_UUID}$")
SLOT_DEVICE_ID = re.compile(rf"^(?P<uuid>GPU-{_UUID}|MIG-{_UUID})(::(?P<slot>[1-9][0-9]{{0,2}}))?$")
# An RFC 1123 host name (uname -n), at most 253 characters.
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
