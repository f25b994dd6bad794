"""The data dir's link to this checkout as the hostedai.gpuaas collection (runner.collections_path):
made by whichever job threads start first on a fresh data dir, all at once."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from gpuaas_api.jobs import runner
from gpuaas_api.checkout import COLLECTION_ROOT

THREADS = 8


def _link(data_dir: Path) -> Path:
    return data_dir / "collections" / "ansible_collections" / "hostedai" / "gpuaas"


def test_job_threads_starting_together_on_a_fresh_data_dir_all_get_the_link(tmp_path, monkeypatch):
    # The rename is slowed so that every thread is between making its link and renaming it at
    # once: a temporary name shared by the threads of one process (pid only) then collides.
    real_replace = os.replace

    def slow_replace(source, target):
        time.sleep(0.05)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", slow_replace)
    barrier = threading.Barrier(THREADS)
    results: list = []

    def start_job() -> None:
        barrier.wait()
        try:
            results.append(runner.collections_path(tmp_path))
        except Exception as error:  # what failed the job on the old code: FileExistsError
            results.append(error)

    threads = [threading.Thread(target=start_job) for _thread in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [tmp_path / "collections"] * THREADS
    assert Path(os.readlink(_link(tmp_path))) == COLLECTION_ROOT
    assert [entry.name for entry in _link(tmp_path).parent.iterdir()] == ["gpuaas"]  # no temporary left


def test_a_link_to_another_checkout_is_pointed_at_this_one(tmp_path):
    other = tmp_path / "old-checkout"
    other.mkdir()
    _link(tmp_path).parent.mkdir(parents=True)
    _link(tmp_path).symlink_to(other)

    runner.collections_path(tmp_path)

    assert Path(os.readlink(_link(tmp_path))) == COLLECTION_ROOT
