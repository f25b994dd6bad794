"""The operations that plug into the job engine (gpuaas_api.jobs.hooks).

nodes.py            init, deinit, enable, join, leave, disable, reboot, test_conn: the node's state machine
scans.py            scan_gpus, scan_npus, scan_resources, storage_metrics: what the node reports
pool_apply.py       a pool's change on its nodes (the pool domain, pools.py, records it)
collect_metrics.py  the periodic metrics collection (metrics/collector.py)
"""
from . import collect_metrics, nodes, pool_apply, scans


def register_all() -> None:
    """Give the job engine every operation's hooks (create_app does; registering again changes nothing)."""
    for module in (nodes, scans, pool_apply, collect_metrics):
        module.register_hooks()
