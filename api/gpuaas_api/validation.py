"""Values that end up in an inventory, an SSH command line or a kubeadm call.

Each accepted shape is narrow on purpose: nothing here can carry a space, a
newline, a leading dash, `=` or shell metacharacters, so no value can inject
inventory variables, SSH options or shell.
"""
from __future__ import annotations

import ipaddress
import re

from marshmallow import ValidationError

NODE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label, as Kubernetes node names
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # POSIX portable user names
VOLUME_GROUP = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")  # LVM's own rule, no leading dash
REGION_NAME = re.compile(r"^[A-Za-z0-9-]{1,12}$")


def _matches(pattern: re.Pattern, what: str):
    def check(value: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValidationError(f"not a valid {what}")
    return check


node_name = _matches(NODE_NAME, "node name (lower-case letters, digits and inner hyphens, at most 63)")
username = _matches(USERNAME, "user name (lower-case letters, digits, _ and -, at most 32)")
volume_group = _matches(VOLUME_GROUP, "LVM volume group name")
region_name = _matches(REGION_NAME, "region name (letters, digits and hyphens, at most 12)")


def ip_address(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError("not a valid IPv4 or IPv6 address") from None
