"""Unit tests run each module as Ansible runs it: a subprocess fed its arguments as JSON
(tests/support/module_runner.py).

The NVML tests load the project's fake libnvidia-ml.so.1 (the same C library the
fleet nodes use) through nvidia-ml-py, so the real code path is exercised.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from module_runner import REPO


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory) -> Path:
    """Build the fleet's fake libnvidia-ml.so.1 once."""
    out = tmp_path_factory.mktemp("fake-nvml")
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wno-format-truncation", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
         "-o", str(out / "libnvidia-ml.so.1"), str(REPO / "tests/fleet/fake_nvml/fake_nvml.c")],
        check=True)
    return out


@pytest.fixture
def nvml_host(fake_nvml_dir, tmp_path):
    """A host whose driver reports the GPUs written to its profile."""

    class Host:
        profile = tmp_path / "profile"
        state_dir = tmp_path / "state"
        # The driver is loaded while this file exists (the fleet's boot unit makes it at boot).
        loaded_marker = tmp_path / "driver-loaded"

        def write_profile(self, gpus, driver="550.54.15", cuda=12040):
            lines = [f"driver_version={driver}", f"cuda_version={cuda}"]
            lines += [f"gpu={uuid}|{model}|{memory}|{bus}|{mig}" for uuid, model, memory, bus, mig in gpus]
            self.profile.write_text("\n".join(lines) + "\n")

        @property
        def env(self):
            return {"LD_LIBRARY_PATH": str(fake_nvml_dir), "FAKE_NVML_PROFILE": str(self.profile),
                    "FAKE_NVML_STATE_DIR": str(self.state_dir), "FAKE_NVML_LOADED_MARKER": str(self.loaded_marker)}

    host = Host()
    host.state_dir.mkdir()
    host.loaded_marker.touch()
    return host
