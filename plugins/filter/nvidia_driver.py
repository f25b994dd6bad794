# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nvidia_driver_diagnosis filter (documented in nvidia_driver_diagnosis.yml beside it)."""
from __future__ import annotations

from ansible_collections.hostedai.gpuaas.plugins.module_utils._nvidia_driver import diagnose


def nvidia_driver_diagnosis(output):
    """One sentence naming why the driver does not answer."""
    return diagnose(str(output or ""))


class FilterModule:
    """hostedai.gpuaas's NVIDIA driver filters."""

    def filters(self):
        return {"nvidia_driver_diagnosis": nvidia_driver_diagnosis}
