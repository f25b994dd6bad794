"""The MPS daemon keeper's decisions, without a daemon: how it reads the daemon's answers, and what
it does when they change under it (the process-level tests are in test_agent.py)."""
from __future__ import annotations

import subprocess

import pytest
from gpuaas_agent.config import GpuShare, Settings
from gpuaas_agent.mps import MpsDaemons, same_megabytes, same_percentage

UUID = "GPU-a9e00000-0000-4000-8000-000000000001"
SHARE = GpuShare(uuid=UUID, pool_id=3, resource="gpuaas.hosted.ai/pool-3", slots=2, security_level="medium",
                 compute_mode="EXCLUSIVE_PROCESS", memory_limit_mb=40779, compute_share_percent=50)


@pytest.mark.parametrize("answer, megabytes, same", [
    ("40779M", 40779, True),   # what was set, in M (NVIDIA: "an integer followed by ... G or M")
    ("39G", 40779, True),      # whole GiB, truncated ("3G" for 3840M in NVIDIA's GPU Operator guide)
    ("40G", 40960, True),      # exactly 40 GiB
    ("40G", 40779, False),     # rounded up is not the same
    ("1G", 40779, False),      # a tenant's 1G
    ("40779 MB", 40779, True),  # a unit spelt out
    ("0", 40779, False),       # none set ("By default, there is no memory limit set")
    ("", 40779, False),
    ("Invalid device", 40779, False),
], ids=["megabytes", "truncated-gib", "exact-gib", "rounded-up", "tenant", "spelt-out", "unset", "empty", "words"])
def test_a_memory_limit_is_compared_at_the_precision_the_daemon_answers_in(answer, megabytes, same):
    assert same_megabytes(answer, megabytes) is same


@pytest.mark.parametrize("answer, percent, same", [
    ("50.0", 50, True),  # "25.0" in NVIDIA's GPU Operator guide
    ("50", 50, True),
    ("100.0", 50, False),
    ("", 50, False),
])
def test_a_thread_percentage_is_compared_as_a_number(answer, percent, same):
    assert same_percentage(answer, percent) is same


class ScriptedDaemon(MpsDaemons):
    """Answers its defaults from a script: one dict of answers per read."""

    def __init__(self, reads: list):
        super().__init__(Settings(mps_root="/nonexistent"))
        self.reads, self.sent = list(reads), []

    def _control(self, uuid, *args, command=None, timeout=10):
        self.sent.append(command)
        return subprocess.CompletedProcess([], 0, "", "")

    def defaults(self, uuid):
        return self.reads.pop(0)


GOOD = {"get_default_active_thread_percentage": "50.0", "get_default_device_pinned_mem_limit 0": "39G",
        f"get_default_device_pinned_mem_limit {UUID}": "39G"}
TAMPERED = dict(GOOD, **{"get_default_active_thread_percentage": "100.0"})


def test_limits_a_tenant_changes_while_the_agent_sets_them_are_set_again_and_counted():
    daemon = ScriptedDaemon([TAMPERED, GOOD])
    daemon.set_limits(UUID, SHARE)
    assert len(daemon.sent) == 2 and daemon.errors == {} and daemon.limits[UUID] == (40779, 50)
    assert daemon.repairs[UUID] == {"stopped": 0, "defaults_changed": 1}
    assert "while the agent set them" in daemon.last_repair[UUID]["detail"]


def test_answers_that_differ_twice_are_an_error_not_a_repair():
    daemon = ScriptedDaemon([TAMPERED, TAMPERED])
    daemon.set_limits(UUID, SHARE)
    assert UUID not in daemon.limits and UUID not in daemon.repairs
    assert daemon.errors[UUID].startswith("the MPS daemon does not answer the limits it was given")


def test_the_limits_are_set_under_the_ordinal_and_the_uuid():
    daemon = ScriptedDaemon([GOOD])
    daemon.set_limits(UUID, SHARE)
    assert daemon.sent == [f"set_default_device_pinned_mem_limit 0 40779M\nset_default_device_pinned_mem_limit {UUID} 40779M\n"
                           "set_default_active_thread_percentage 50\n"]


class AnsweringFrontEnd(MpsDaemons):
    """The front-end as a function of what it is sent; records each call."""

    def __init__(self, reply):
        super().__init__(Settings(mps_root="/nonexistent"))
        self.reply, self.calls = reply, []

    def _control(self, uuid, *args, command=None, timeout=10):
        self.calls.append(command)
        return subprocess.CompletedProcess([], 0, self.reply(command), "")


def test_the_defaults_are_read_in_one_call_when_each_answer_is_a_line():
    answers = {"get_default_active_thread_percentage": "50.0\n", "get_default_device_pinned_mem_limit 0": "39G\n",
               f"get_default_device_pinned_mem_limit {UUID}": "39G\n"}
    daemon = AnsweringFrontEnd(lambda sent: "".join(answers[line] for line in sent.splitlines()))
    assert daemon.defaults(UUID) == GOOD
    assert len(daemon.calls) == 1


def test_answers_not_one_a_line_are_asked_again_one_query_a_call():
    # Positive control for the batching: a front-end that prints nothing for one query must not
    # shift the other answers onto the wrong queries.
    answers = {"get_default_active_thread_percentage": "50.0\n", "get_default_device_pinned_mem_limit 0": "",
               f"get_default_device_pinned_mem_limit {UUID}": "39G\n"}
    daemon = AnsweringFrontEnd(lambda sent: "".join(answers[line] for line in sent.splitlines()))
    read = daemon.defaults(UUID)
    assert read == {**GOOD, "get_default_device_pinned_mem_limit 0": ""}
    assert len(daemon.calls) == 4
