"""The collector reading the gpuaas agents over HTTP (GPUAAS_AGENT_PORT and its token).

Each node's agent is the agent's own HTTP server (gpuaas_agent.status_http.serve) serving the
agent's own status (Agent.status with readings) on a loopback address of its own (127.0.0.1x),
all on one port, as the nodes of a deployment each listen on their address and the one port.
"""
from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
import uuid as uuidlib

import pytest
from gpuaas_agent.agent import Agent
from gpuaas_agent.config import Settings
from gpuaas_agent.gpus import GpuState
from gpuaas_agent.status_http import serve
from sqlalchemy import select, update

from api_helpers import create, settle
from gpuaas_api import create_app
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.inventory import host_spec
from gpuaas_api.metrics.collector import SCHEDULE, STORAGE_SCHEDULE, AgentCollection, submit_collection, tick
from gpuaas_api.models import Gpu, Job, MetricSample, Node, Schedule
from gpuaas_api.states import GpuAssignment

TOKEN = "agent-token-for-the-tests"
ADDRESSES = {"w1": "127.0.0.11", "w2": "127.0.0.12", "x1": "127.0.0.13"}


def readings(utilization: int, power: float = 123.4) -> dict:
    """What nvml_access.gpu_metrics returns for one GPU."""
    return {"utilization_gpu_percent": utilization, "utilization_memory_percent": 5, "memory_used_mb": 2048,
            "temperature_c": 51, "power_w": power}


class NodeAgent:
    """One node's agent: the agent's status (its GPUs' probe results, set by the test) over its HTTP server."""

    def __init__(self, address: str, port: int, token: str = TOKEN):
        self.listen, self.token = f"{address}:{port}", token
        self.agent = Agent(Settings())
        self.httpd = None

    def report(self, gpus: dict) -> None:
        """uuid -> readings (healthy) or None (lost: NVML answers nothing for it)."""
        self.agent.gpu_states = {uuid: (GpuState(index, uuid, True, compute_mode="DEFAULT", readings=values,
                                                 memory_mb=81559) if values is not None
                                        else GpuState(index, uuid, False, "GPU is lost"))
                                 for index, (uuid, values) in enumerate(gpus.items())}

    def start(self) -> None:
        self.httpd = serve(self.listen, self.token, lambda: self.agent.status(readings=True))

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class SilentServer:
    """Accepts connections and never answers (a hung agent)."""

    def __init__(self, address: str, port: int):
        self.socket = socket.create_server((address, port))
        self.held: list = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            while True:
                self.held.append(self.socket.accept()[0])
        except OSError:
            pass

    def stop(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESSES["w1"], 0))
        return probe.getsockname()[1]


def agent_settings(config: Config, port: int) -> None:
    config.AGENT_PORT, config.AGENT_TOKEN = port, TOKEN
    config.AGENT_CONNECT_TIMEOUT_SECONDS, config.AGENT_READ_TIMEOUT_SECONDS = 1.0, 1.0


@pytest.fixture
def agents(app, fleet_db):
    """The agent settings on, each fleet node on its own loopback address; ``agents[name]`` its agent."""
    port = free_port()
    agent_settings(app.config["GPUAAS"], port)
    with app.app_context():
        for node in session().scalars(select(Node).where(Node.name.in_(ADDRESSES))):
            node.node_ip = ADDRESSES[node.name]
        session().commit()
    started = {name: NodeAgent(address, port) for name, address in ADDRESSES.items()}
    yield started
    for agent in started.values():
        agent.stop()


def pool_on(app, client, fleet_db, uuids: list) -> dict:
    reply = create(client, fleet_db, attach_gpu_ids=uuids).get_json()
    settle(app, reply)
    return reply


def collect_now(app) -> AgentCollection:
    """One collection from the agents, as the winning job worker runs it."""
    with app.app_context():
        due = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        session().execute(update(Schedule).where(Schedule.name == SCHEDULE).values(next_run_at=due))
        session().commit()
        result = tick(app.config["GPUAAS"])
        assert isinstance(result, AgentCollection), result
        return result


def assignment(app) -> dict:
    with app.app_context():
        return {gpu.uuid: gpu.assignment_status for gpu in session().scalars(select(Gpu))}


def stored(app) -> list[tuple]:
    with app.app_context():
        return [(s.gpu_id, s.pool_id, s.utilization_gpu_percent, s.memory_used_mb, s.temperature_c, s.power_w)
                for s in session().scalars(select(MetricSample).order_by(MetricSample.id))]


def test_the_agents_readings_are_stored_as_they_report_them(app, client, fleet_db, agents):
    uuids = fleet_db["uuids"]
    pool = pool_on(app, client, fleet_db, uuids["w1"] + uuids["w2"][:1])
    agents["w1"].report({uuids["w1"][0]: readings(10), uuids["w1"][1]: readings(30, power=99.5)})
    agents["w2"].report({uuids["w2"][0]: readings(50), uuids["w2"][1]: readings(99)})  # [1] is in no pool
    agents["w1"].start()
    agents["w2"].start()

    result = collect_now(app)

    assert (result.nodes, result.readings, result.failed, result.skipped) == (2, 3, {}, [])
    reply = client.get(f"/gpuaas/pool/{pool['id']}/metrics?time_grouping=minute").get_json()
    assert [(b["samples"], b["utilization_gpu_percent"]) for b in reply["series"]] == [(3, {"avg": 30.0, "max": 50.0})]
    assert {gpu["uuid"]: gpu["power_w"] for gpu in reply["usage"]["gpus"]} == {
        uuids["w1"][0]: 123.4, uuids["w1"][1]: 99.5, uuids["w2"][0]: 123.4}
    assert (reply["slots_assigned"], reply["slots_unavailable"]) == (12, 0)
    with app.app_context():  # no job: the collection is a log line
        assert session().scalars(select(Job).where(Job.operation == "collect_metrics")).all() == []


def test_the_same_readings_are_stored_alike_by_the_agents_and_by_ansible(app, client, fleet_db, agents):
    """For the same GPU state, the agent's path stores what the collect_metrics job's stores."""
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    state = {uuids["w1"][0]: readings(17, power=201.3), uuids["w1"][1]: readings(83, power=250.0)}
    config = app.config["GPUAAS"]
    port = config.AGENT_PORT
    config.AGENT_PORT = 0  # the Ansible path first
    with app.app_context():
        job = submit_collection()
        w1 = session().scalars(select(Node).where(Node.name == "w1")).one()
        artifact = {"gpuaas_gpu_scan": {w1.inventory_name: {"gpus": [
            {"uuid": uuid, "status": "ok", "metrics": values} for uuid, values in state.items()]}}}
        finalize(job.id, "successful", 0, "", artifact, host_outcomes={w1.id: True})
    by_ansible = stored(app)
    config.AGENT_PORT = port
    agents["w1"].report(state)
    agents["w1"].start()

    collect_now(app)

    by_agent = stored(app)[len(by_ansible):]
    assert len(by_ansible) == 2 and by_agent == by_ansible


def test_an_agent_down_or_a_lost_gpu_is_unavailable_until_it_answers(app, client, fleet_db, agents):
    uuids = fleet_db["uuids"]
    pool = pool_on(app, client, fleet_db, uuids["w1"] + uuids["w2"][:1])
    agents["w2"].report({uuids["w2"][0]: None, uuids["w2"][1]: readings(1)})  # its pool GPU is lost
    agents["w2"].start()  # w1's agent is down

    result = collect_now(app)

    (reason,) = result.failed.values()
    assert list(result.failed) == [f"node-{_node_id(app, 'w1')}"] and "connection refused" in reason
    after_outage = assignment(app)
    assert [after_outage[uuid] for uuid in uuids["w1"] + uuids["w2"]] == [
        GpuAssignment.UNAVAILABLE, GpuAssignment.UNAVAILABLE, GpuAssignment.UNAVAILABLE, GpuAssignment.UNASSIGNED]
    metrics = client.get(f"/gpuaas/pool/{pool['id']}/metrics").get_json()
    assert (metrics["slots_assigned"], metrics["slots_unavailable"]) == (0, 12)

    agents["w1"].report({uuid: readings(5) for uuid in uuids["w1"]})
    agents["w1"].start()
    agents["w2"].report({uuid: readings(5) for uuid in uuids["w2"]})
    collect_now(app)

    recovered = assignment(app)
    assert [recovered[uuid] for uuid in uuids["w1"] + uuids["w2"]] == [
        GpuAssignment.ASSIGNED, GpuAssignment.ASSIGNED, GpuAssignment.ASSIGNED, GpuAssignment.UNASSIGNED]


def _node_id(app, name: str) -> int:
    with app.app_context():
        return session().scalars(select(Node.id).where(Node.name == name)).one()


def test_an_agent_refusing_the_token_is_unavailable_and_logged(app, client, fleet_db, agents, caplog):
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    stranger = NodeAgent(ADDRESSES["w1"], app.config["GPUAAS"].AGENT_PORT, token="another-deployments-token")
    stranger.report({uuid: readings(5) for uuid in uuids["w1"]})
    stranger.start()
    try:
        with caplog.at_level(logging.INFO, logger="gpuaas_api.metrics.collector"):
            result = collect_now(app)
    finally:
        stranger.stop()

    assert "HTTP 401" in result.failed[f"node-{_node_id(app, 'w1')}"]
    assert [assignment(app)[uuid] for uuid in uuids["w1"]] == [GpuAssignment.UNAVAILABLE] * 2
    line = next(record.getMessage() for record in caplog.records if "metrics collection (agents)" in record.getMessage())
    assert "1 not answering" in line and "HTTP 401" in line and f"{ADDRESSES['w1']}:" in line
    assert TOKEN not in caplog.text and "another-deployments-token" not in caplog.text


def collect_while_silent(app, name: str):
    """One collection while node ``name``'s agent port accepts connections and never answers;
    the result and its wall time."""
    hung = SilentServer(ADDRESSES[name], app.config["GPUAAS"].AGENT_PORT)
    try:
        started = time.monotonic()
        return collect_now(app), time.monotonic() - started
    finally:
        hung.stop()


def test_a_hung_agent_costs_the_collection_its_read_timeout_only(app, client, fleet_db, agents):
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"] + uuids["w2"][:1])
    config = app.config["GPUAAS"]
    config.AGENT_READ_TIMEOUT_SECONDS = 0.5
    agents["w2"].report({uuid: readings(5) for uuid in uuids["w2"]})
    agents["w2"].start()
    result, elapsed = collect_while_silent(app, "w1")

    assert elapsed < 1.5, elapsed
    assert "timed out" in result.failed[f"node-{_node_id(app, 'w1')}"]
    status = assignment(app)
    assert [status[uuid] for uuid in uuids["w1"]] == [GpuAssignment.UNAVAILABLE] * 2
    assert status[uuids["w2"][0]] is GpuAssignment.ASSIGNED and result.readings == 1


def test_reads_still_in_flight_at_the_deadline_leave_their_gpus_as_they_were(app, client, fleet_db, agents):
    """The collection ends by half the interval; a node not heard from by then has no verdict."""
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    config = app.config["GPUAAS"]
    config.METRICS_INTERVAL_SECONDS, config.AGENT_READ_TIMEOUT_SECONDS = 0.6, 10.0
    result, elapsed = collect_while_silent(app, "w1")

    assert elapsed < 1.0, elapsed
    assert (result.failed, result.skipped) == ({}, [f"node-{_node_id(app, 'w1')}"])
    assert [assignment(app)[uuid] for uuid in uuids["w1"]] == [GpuAssignment.ASSIGNED] * 2


def test_one_collection_per_period_across_two_service_instances(app, client, fleet_db, agents,
                                                                migrated_database_url, tmp_path):
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    agents["w1"].report({uuid: readings(5) for uuid in uuids["w1"]})
    agents["w1"].start()
    other_config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "other"), "GPUAAS_DATABASE_URL": migrated_database_url})
    other_config.TESTING = True
    agent_settings(other_config, app.config["GPUAAS"].AGENT_PORT)
    other = create_app(other_config)
    results = []
    try:
        def run(application):
            with application.app_context():
                results.append(tick(application.config["GPUAAS"]))
        threads = [threading.Thread(target=run, args=(application,)) for application in (app, other, app, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.extensions["gpuaas_engine"].dispose()

    assert sum(isinstance(result, AgentCollection) for result in results) == 1
    assert len(stored(app)) == 2


def test_without_the_agent_settings_the_collect_metrics_job_reads_the_gpus(app, client, fleet_db):
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    config = app.config["GPUAAS"]
    assert not config.agent_http
    with app.app_context():
        job = tick(config)
        assert isinstance(job, Job) and job.extravars["vars"]["collect_metrics_gpu_hosts"] == [
            f"node-{_node_id(app, 'w1')}"]
        hostvars = host_spec(session().get(Node, _node_id(app, "w1"))).hostvars
    assert not {"gpu_sharing_agent_http_listen", "gpu_sharing_agent_token"} & set(hostvars)


def test_storage_nodes_stay_on_ansible_on_their_own_period(app, client, fleet_db, agents, storage_node):
    uuids = fleet_db["uuids"]
    pool_on(app, client, fleet_db, uuids["w1"])
    agents["w1"].report({uuid: readings(5) for uuid in uuids["w1"]})
    agents["w1"].start()
    storage_id = storage_node
    with app.app_context():
        config = app.config["GPUAAS"]

        first = tick(config)  # both periods are due: the storage job, then the agents' read
        jobs = session().scalars(select(Job).where(Job.operation == "collect_metrics")).all()
        assert isinstance(first, AgentCollection) and first.readings == 2
        assert [job.extravars["vars"] for job in jobs] == [
            {"collect_metrics_gpu_hosts": [], "collect_metrics_storage_hosts": [f"node-{storage_id}"]}]
        assert jobs[0].extravars["targets"] == [storage_id]
        finalize(jobs[0].id, "successful", 0, "", {"gpuaas_storage_metrics": {f"node-{storage_id}": {
            "volume_groups": [], "volume_group": None, "filesystems": []}}}, host_outcomes={storage_id: True})

    second = collect_now(app)  # the next GPU period; the storage period (300 s) is not over

    with app.app_context():
        assert second.readings == 2
        assert len(session().scalars(select(Job).where(Job.operation == "collect_metrics")).all()) == 1
        next_storage = session().get(Schedule, STORAGE_SCHEDULE).next_run_at
        assert next_storage.replace(tzinfo=next_storage.tzinfo or dt.timezone.utc) > \
            dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=290)


def test_the_roles_get_the_agents_address_and_token_on_each_node_and_nowhere_else(app, client, fleet_db, agents):
    reply = create(client, fleet_db).get_json()
    port = app.config["GPUAAS"].AGENT_PORT
    with app.app_context():
        hostvars = host_spec(session().get(Node, _node_id(app, "w1"))).hostvars
        job = session().get(Job, reply["job_id"])
        assert TOKEN not in str(job.extravars)  # a job's recorded variables never hold it
    assert hostvars["gpu_sharing_agent_http_listen"] == f"{ADDRESSES['w1']}:{port}"
    assert hostvars["gpu_sharing_agent_token"] == TOKEN
    assert app.config["GPUAAS"].agent_address("fd00::11") == f"[fd00::11]:{port}"


@pytest.mark.parametrize("environ, message", [
    ({"GPUAAS_AGENT_PORT": "9460"}, "go together"),
    ({"GPUAAS_AGENT_TOKEN": "t"}, "go together"),
    ({"GPUAAS_AGENT_PORT": "9460", "GPUAAS_AGENT_TOKEN": "t", "GPUAAS_AGENT_TOKEN_FILE": "/x"}, "not both"),
    ({"GPUAAS_AGENT_PORT": "9460", "GPUAAS_AGENT_TOKEN": "two words"}, "one printable word"),
    ({"GPUAAS_AGENT_PORT": "9460", "GPUAAS_AGENT_TOKEN_FILE": "/nonexistent/token"}, "No such file"),
    ({"GPUAAS_AGENT_PORT": "70000", "GPUAAS_AGENT_TOKEN": "t"}, "TCP port"),
    ({"GPUAAS_AGENT_PORT": "9460", "GPUAAS_AGENT_TOKEN": "t",
      "GPUAAS_ANSIBLE_EXTRA_VARS": '{"gpu_sharing_agent_http_listen": "0.0.0.0:9460"}'}, "GPUAAS_ANSIBLE_EXTRA_VARS"),
])
def test_impossible_agent_settings_are_refused_at_start(environ, message):
    with pytest.raises(ValueError, match=message):
        Config(environ)


def test_the_token_file_is_read_and_the_agents_stay_off_by_default(tmp_path):
    token_file = tmp_path / "agent-token"
    token_file.write_text("s3cret-token\n")
    config = Config({"GPUAAS_AGENT_PORT": "9460", "GPUAAS_AGENT_TOKEN_FILE": str(token_file)})
    assert (config.agent_http, config.AGENT_TOKEN, config.agent_address("10.0.0.5")) == (
        True, "s3cret-token", "10.0.0.5:9460")
    assert not Config({}).agent_http


def test_the_agents_tenants_are_stored_from_their_status_over_http(app, client, fleet_db, agents):
    """The agent's own status (its `tenants`, as its HTTP server serves it) reaches subscribed_teams."""
    with app.app_context():
        for gpu in session().scalars(select(Gpu)):
            gpu.uuid = f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_DNS, gpu.uuid)}"
        session().commit()
        uuids = [gpu.uuid for gpu in session().scalars(select(Gpu).join(Node).where(Node.name == "w1")
                                                       .order_by(Gpu.index))]
    pool = pool_on(app, client, fleet_db, uuids)
    agent = agents["w1"]
    agent.report({uuid: readings(40) for uuid in uuids})
    agent.agent.tenants.report = {"state": "ok", "reason": "", "slots": {f"{uuids[0]}::2": {
        "resource": pool["resource_name"], "gpu": uuids[0], "state": "running",
        "tenant": {"namespace": "team-a", "pod": "train-0", "container": "main", "uid": str(uuidlib.uuid4())},
        "processes": [], "vram_used_mb": 512.0, "gpu_seconds": 3.5, "shared_with": []}}}
    agent.start()

    collect_now(app)

    reply = client.get(f"/gpuaas/pool/{pool['id']}/subscribed_teams?sort_least_consumed=1&from_time_seconds=0"
                       "&page=0&limit=100").get_json()
    assert reply["total"] == 1
    assert [(team["team_id"], team["status"], team["gpu_seconds"]) for team in reply["data"]] == [("team-a", "running", 3.5)]
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["allocated_gpus"] == 1
