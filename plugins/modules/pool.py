#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pool
short_description: Declare a GPUaaS pool through the REST service
version_added: "0.2.0"
description:
  - Makes a pool of a GPUaaS cluster, found by O(pool_name), match what is declared here (its sharing ratio,
    time quantum, security level and GPUs). The service applies each change on the nodes holding the affected
    GPUs (the M(hostedai.gpuaas.gpu_sharing) role); this module only talks to the service.
  - A pool that is missing is created; settings that differ are updated (C(PUT)); GPUs are added and removed to
    match O(gpus); O(state=absent) deletes the pool, whose GPUs then return to their defaults on their nodes.
  - A pool left in C(ERROR_WHILE_DEPLOYING) by an earlier change is retried, so that running the play again
    finishes what a node outage interrupted.
  - With O(wait=true) (the default) each change is waited for until the pool is C(ACTIVE) (or gone), and the
    module fails when the pool ends in C(ERROR_WHILE_DEPLOYING).
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  gpuaas_id:
    description: The GPUaaS cluster (its id in the service) that holds the pool.
    type: int
    required: true
  pool_name:
    description: The pool's name, unique within the cluster; it identifies the pool.
    type: str
    required: true
    aliases: [name]
  sharing_ratio:
    description:
      - Virtual-GPU slots per physical GPU, 1 to 10. Needed to create a pool; when omitted, an existing pool keeps its own.
    type: int
  time_quantum_in_sec:
    description:
      - Seconds each tenant holds a shared GPU, 10 to 120. When omitted, a new pool gets the service's default (30)
        and an existing pool keeps its own.
    type: int
  security_level:
    description:
      - The isolation of the pool's GPUs (see the collection's docs/gpu-sharing.md). Needed to create a pool;
        when omitted, an existing pool keeps its own.
    type: str
    choices: [low, medium, high]
  gpus:
    description:
      - UUIDs of the physical GPUs the pool must hold, exactly. When omitted, the pool's GPUs are left as they are
        (a new pool starts with none).
    type: list
    elements: str
  state:
    description: Whether the pool exists.
    type: str
    choices: [present, absent]
    default: present
  wait:
    description: Wait for each change to be applied on the nodes.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for one change.
    type: int
    default: 600
extends_documentation_fragment:
  - hostedai.gpuaas.api
attributes:
  check_mode:
    support: full
    description: Reads the pool and reports what would change, without changing it.
  diff_mode:
    support: full
    description: Shows the pool's settings and GPUs before and after.
  idempotent:
    support: full
    description: A pool that already matches is left alone.
"""

EXAMPLES = r"""
- name: Keep the inference pool under version control
  hostedai.gpuaas.pool:
    api_url: https://gpuaas.example.internal
    api_token: "{{ gpuaas_api_token }}"
    gpuaas_id: 1
    pool_name: inference
    sharing_ratio: 4
    time_quantum_in_sec: 30
    security_level: medium
    gpus:
      - GPU-4d1c8f3e-0000-4000-8000-000000000001
      - GPU-4d1c8f3e-0000-4000-8000-000000000002
  delegate_to: localhost

- name: Remove a pool
  hostedai.gpuaas.pool:
    api_url: https://gpuaas.example.internal
    gpuaas_id: 1
    pool_name: scratch
    state: absent
  delegate_to: localhost
"""

RETURN = r"""
pool:
  description: The pool as the service shows it after the change (its C(GET /gpuaas/pool/{id})); empty when absent.
  returned: always
  type: dict
  sample: {id: 7, pool_name: inference, sharing_ratio: 4, time_quantum_in_sec: 30, security_level: medium,
           status: ACTIVE, physical_gpu_count: 2}
job_ids:
  description: The service's jobs that applied the changes on the nodes, in order.
  returned: always
  type: list
  elements: int
  sample: [41, 42]
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostedai.gpuaas.plugins.module_utils.gpuaas_api import (
    API_ARGUMENT_SPEC, ApiError, GpuaasApi, explain)
from ansible_collections.hostedai.gpuaas.plugins.module_utils.sharing_policy import (
    DEFAULT_TIME_QUANTUM_SECONDS, SECURITY_LEVELS, sharing_errors)

SETTINGS = ("sharing_ratio", "time_quantum_in_sec", "security_level")
SETTLED = ("ACTIVE", "ERROR_WHILE_DEPLOYING")
# GPUs on their way out of the pool are no longer its members.
LEAVING = "UNASSIGNING"


class PoolManager(object):
    def __init__(self, module, api):
        self.module, self.api = module, api
        self.params = module.params
        self.job_ids = []

    def find(self):
        for pool in self.api.call("GET", "/gpuaas/%d/pool/list" % self.params["gpuaas_id"])["items"]:
            if pool["pool_name"] == self.params["pool_name"]:
                return pool
        return None

    def members(self, pool):
        gpus = self.api.call("GET", "/gpuaas/pool/%d/gpus" % pool["id"])["items"]
        return sorted(gpu["uuid"] for gpu in gpus if gpu["assignment_status"] != LEAVING)

    def state_of(self, pool):
        if pool is None:
            return {}
        return dict([("pool_name", pool["pool_name"])] + [(key, pool[key]) for key in SETTINGS]
                    + [("gpus", self.members(pool))])

    def desired(self, before):
        if self.params["state"] == "absent":
            return {}
        after = dict(before)
        if not before:
            after = {"pool_name": self.params["pool_name"], "time_quantum_in_sec": DEFAULT_TIME_QUANTUM_SECONDS,
                     "gpus": []}
        for key in SETTINGS:
            if self.params[key] is not None:
                after[key] = self.params[key]
        if self.params["gpus"] is not None:
            after["gpus"] = sorted(set(self.params["gpus"]))
        return after

    def settle(self, pool_id, reply, gone_ok=False):
        """Wait for the change to end; the pool afterwards, or None when it is gone."""
        if reply.get("job_id") is not None:
            self.job_ids.append(reply["job_id"])
        if not self.params["wait"]:
            return self.get(pool_id)
        deadline = time.monotonic() + self.params["wait_timeout"]
        if reply.get("job_id") is not None:
            # Its pool settles when the job ends: learn that at once, then read the pool.
            self.api.wait_for_job(reply["job_id"], self.params["wait_timeout"])
        pool = self.api.wait(lambda: self._settled_or_gone(pool_id), max(0, deadline - time.monotonic()))
        if pool is None:
            self.module.fail_json(msg="pool %d did not settle within %d s" % (pool_id, self.params["wait_timeout"]),
                                  job_ids=self.job_ids)
        if pool.get("gone"):
            if gone_ok:
                return None
            self.module.fail_json(msg="pool %d disappeared while it was being changed" % pool_id, job_ids=self.job_ids)
        if pool["status"] in ("ERROR_WHILE_DEPLOYING", "DELETING"):
            self.module.fail_json(msg="pool %d: the change failed on some nodes (%s); run again to retry"
                                  % (pool_id, self.job_explanation()), pool=pool, job_ids=self.job_ids)
        return pool

    def get(self, pool_id):
        try:
            return self.api.call("GET", "/gpuaas/pool/%d" % pool_id)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def last_job_finished(self):
        if not self.job_ids:
            return False
        return self.api.call("GET", "/jobs/%d" % self.job_ids[-1])["status"] not in ("pending", "running")

    def job_explanation(self):
        if not self.job_ids:
            return "no job"
        job = self.api.call("GET", "/jobs/%d" % self.job_ids[-1])
        return job.get("explanation") or "job %d %s" % (job["id"], job["status"])

    def wait_until_settled(self, pool):
        """Let a change still running (from another run or client) end first; the pool then, or None if gone.

        A pool being deleted is awaited until it is gone, except when it is to be deleted anyway
        (a failed delete stays DELETING until it is deleted again).
        """
        if pool["status"] in SETTLED or pool["status"] == "DELETING" and self.params["state"] == "absent":
            return pool
        if not self.params["wait"]:
            self.module.fail_json(msg="pool %d is %s; wait for it or set wait=true" % (pool["id"], pool["status"]))
        found = self.api.wait(lambda: self._settled_or_gone(pool["id"]), self.params["wait_timeout"])
        if found is None:
            self.module.fail_json(msg="pool %d stayed %s for %d s"
                                  % (pool["id"], pool["status"], self.params["wait_timeout"]))
        return None if found.get("gone") else found

    def _settled_or_gone(self, pool_id):
        """The pool once no change of it runs, {"gone": True} once deleted, None meanwhile."""
        pool = self.get(pool_id)
        if pool is None:
            return {"gone": True}
        if pool["status"] in SETTLED:
            return pool
        if pool["status"] == "DELETING" and self.last_job_finished():
            # Read again: the job may have ended (and removed the pool) since the first read.
            # Still DELETING with its job over: the delete failed on some node.
            return self.get(pool_id) or {"gone": True}
        return None

    def apply(self, pool, before, after):
        """Make the pool match ``after``; each step is one change on the service, waited for in turn."""
        if not after:
            try:
                reply = self.api.call("DELETE", "/gpuaas/pool/%d" % pool["id"])
            except ApiError as error:
                if not (error.status == 409 and pool["status"] == "DELETING"):
                    raise
                reply = {}  # its delete is still running: wait for it
            self.settle(pool["id"], reply, gone_ok=True)
            return {}
        if pool is None:
            missing = [key for key in ("sharing_ratio", "security_level") if after.get(key) is None]
            if missing:
                self.module.fail_json(msg="creating pool %s needs %s" % (after["pool_name"], " and ".join(missing)))
            body = dict((key, after[key]) for key in ("pool_name",) + SETTINGS)
            body["attach_gpu_ids"] = after["gpus"]
            reply = self.api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": self.params["gpuaas_id"], "pool": body})
            return self.settle(reply["id"], reply)
        pool_id = pool["id"]
        changes = dict((key, after[key]) for key in SETTINGS if before.get(key) != after[key])
        if changes:
            pool = self.settle(pool_id, self.api.call("PUT", "/gpuaas/pool/%d" % pool_id, changes))
        joining = sorted(set(after["gpus"]) - set(before["gpus"]))
        leaving = sorted(set(before["gpus"]) - set(after["gpus"]))
        if joining:
            pool = self.settle(pool_id, self.api.call("POST", "/gpuaas/pool/%d/add_gpus" % pool_id,
                                                      {"gpu_uuids": joining}))
        if leaving:
            pool = self.settle(pool_id, self.api.call("POST", "/gpuaas/pool/%d/remove_gpus" % pool_id,
                                                      {"gpu_uuids": leaving}))
        if pool["status"] == "ERROR_WHILE_DEPLOYING":
            pool = self.settle(pool_id, self.api.call("POST", "/gpuaas/pool/%d/retry" % pool_id))
        return pool


def main():
    argument_spec = dict(
        gpuaas_id=dict(type="int", required=True),
        pool_name=dict(type="str", required=True, aliases=["name"]),
        sharing_ratio=dict(type="int"),
        time_quantum_in_sec=dict(type="int"),
        security_level=dict(type="str", choices=list(SECURITY_LEVELS)),
        gpus=dict(type="list", elements="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=600),
    )
    argument_spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    # The ranges are the service's own (sharing_policy): a bad value fails here, before any call.
    errors = [error for error in sharing_errors(params["sharing_ratio"] or 1,
                                                params["time_quantum_in_sec"] or DEFAULT_TIME_QUANTUM_SECONDS,
                                                params["security_level"] or SECURITY_LEVELS[0])
              if params[error[0]] is not None]
    if errors:
        module.fail_json(msg="; ".join("%s %s" % error for error in errors))

    try:
        manager = PoolManager(module, GpuaasApi(module))
        pool = manager.find()
        if pool is not None:
            pool = manager.wait_until_settled(pool)
        before = manager.state_of(pool)
        after = manager.desired(before)
        retry = pool is not None and pool["status"] == "ERROR_WHILE_DEPLOYING" and params["state"] == "present"
        changed = before != after or retry
        result = dict(changed=changed, pool=pool or {}, job_ids=[])
        if module._diff:
            result["diff"] = dict(before=before, after=after)
        if changed and not module.check_mode:
            final = manager.apply(pool, before, after)
            result["pool"] = final or {}
            result["job_ids"] = manager.job_ids
    except ApiError as error:
        module.fail_json(msg=explain(error), status=error.status, errors=error.errors)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
