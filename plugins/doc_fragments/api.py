# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment(object):
    """How the modules that manage the fleet through the REST service reach it."""

    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of the hosted·ai GPUaaS REST service, with or without the C(/api) suffix.
      - Read from E(GPUAAS_API_URL) when not set.
    type: str
    required: true
  api_token:
    description:
      - An API token (C(gpuaas-api create-token) or C(POST /api/login)), sent as a Bearer header.
      - Its role must allow what the module does; changing a pool needs an operator's (or an admin's).
      - Read from E(GPUAAS_API_TOKEN) when not set. Takes precedence over O(api_username)/O(api_password).
    type: str
  api_username:
    description:
      - User to log in as when no O(api_token) is given. Read from E(GPUAAS_API_USERNAME) when not set.
    type: str
  api_password:
    description:
      - Password of O(api_username). Read from E(GPUAAS_API_PASSWORD) when not set.
    type: str
  validate_certs:
    description: Verify the service's TLS certificate.
    type: bool
    default: true
  api_timeout:
    description: Seconds to wait for each HTTP request.
    type: int
    default: 30
notes:
  - The module runs where it is called (usually C(localhost)) and only talks HTTP to the service,
    which runs the playbooks on the nodes.
"""
