"""nvidia_toolkit_config sets the toolkit's top-level settings in its config.toml and keeps
everything else; a file it cannot parse is left untouched."""
from __future__ import annotations

import tomllib

import pytest
from module_runner import run_module

SETTINGS = {"accept-nvidia-visible-devices-as-volume-mounts": True,
            "accept-nvidia-visible-devices-envvar-when-unprivileged": False}

# The head of the file `nvidia-ctk config` writes (nvidia-container-toolkit v1.17.8, the package's
# postinst runs `nvidia-ctk --quiet config --config-file=... --in-place`): both keys commented out.
SHIPPED = '''#accept-nvidia-visible-devices-as-volume-mounts = false
#accept-nvidia-visible-devices-envvar-when-unprivileged = true
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"

[nvidia-container-cli]
environment = []
ldconfig = "@/sbin/ldconfig.real"
load-kmods = true

[nvidia-container-runtime]
log-level = "info"
mode = "auto"
runtimes = ["runc", "crun"]
'''


def configure(path, check_mode=False, settings=None):
    return run_module("nvidia_toolkit_config", {"path": str(path), "settings": settings or SETTINGS,
                                                "_ansible_check_mode": check_mode, "_ansible_diff": True})


def test_sets_the_keys_at_the_top_level_and_keeps_the_rest(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(SHIPPED)
    result = configure(path)
    assert result["changed"] and result["changed_keys"] == list(SETTINGS)
    text = path.read_text()
    loaded = tomllib.loads(text)
    assert {key: loaded[key] for key in SETTINGS} == SETTINGS
    assert loaded["nvidia-container-runtime"]["runtimes"] == ["runc", "crun"]
    assert text.startswith("#accept-nvidia-visible-devices-as-volume-mounts = false\n")  # comments stay
    assert text.index("accept-nvidia-visible-devices-as-volume-mounts = true") < text.index("[nvidia-container-cli]")
    assert result["diff"]["before"] == SHIPPED and result["diff"]["after"] == text


def test_a_second_run_changes_nothing(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(SHIPPED)
    configure(path)
    written = path.read_text()
    again = configure(path)
    assert not again["changed"] and again["changed_keys"] == []
    assert path.read_text() == written


def test_a_value_of_another_type_is_corrected(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('accept-nvidia-visible-devices-envvar-when-unprivileged = "false"\n')
    assert configure(path)["changed_keys"] == list(SETTINGS)
    assert tomllib.loads(path.read_text())["accept-nvidia-visible-devices-envvar-when-unprivileged"] is False


def test_check_mode_shows_the_change_and_writes_nothing(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(SHIPPED)
    result = configure(path, check_mode=True)
    assert result["changed"] and "accept-nvidia-visible-devices-as-volume-mounts = true" in result["diff"]["after"]
    assert path.read_text() == SHIPPED


def test_a_missing_file_is_created_with_the_settings(tmp_path):
    path = tmp_path / "nvidia-container-runtime" / "config.toml"
    assert configure(path)["changed"]
    assert tomllib.loads(path.read_text()) == SETTINGS
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("text, says", [
    ("accept-nvidia-visible-devices-as-volume-mounts = \n", "not TOML"),
    ("[nvidia-container-cli\n", "not TOML"),
    ("[accept-nvidia-visible-devices-as-volume-mounts]\nx = 1\n", "is not a top-level setting of one value"),
])
def test_a_file_it_cannot_read_is_left_untouched(tmp_path, text, says):
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = configure(path)
    assert result.get("failed") and says in result["msg"] and "left untouched" in result["msg"]
    assert "\n" not in result["msg"]
    assert path.read_text() == text
