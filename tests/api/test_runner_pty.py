"""The runner's pty closes without ptyprocess's fixed pause, and still ends a child that is alive."""
from __future__ import annotations

import time

import pexpect

from gpuaas_api.jobs.runner import _close_ptys_without_pause


def test_a_finished_child_closes_at_once():
    _close_ptys_without_pause()
    child = pexpect.spawn("true")
    child.expect(pexpect.EOF)
    while child.isalive():  # as ansible-runner does: the child has exited and been reaped
        time.sleep(0.01)

    start = time.monotonic()
    child.close()

    assert time.monotonic() - start < 0.05  # ptyprocess alone sleeps 0.1 s here
    assert child.exitstatus == 0


def test_a_child_still_running_at_close_is_ended():
    _close_ptys_without_pause()
    _close_ptys_without_pause()  # idempotent
    child = pexpect.spawn("sleep", ["30"])

    child.close(force=True)

    assert not child.isalive() and child.signalstatus is not None
