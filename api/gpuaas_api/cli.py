"""gpuaas-api: serve | prepare | db upgrade | create-token | users | tokens | set-password | ssh-key."""
from __future__ import annotations

import argparse
import getpass
import logging
import math
import socket
import subprocess
import sys

from . import cli_users
from .config import Config

# The gunicorn master imports none of the application (it only forks and watches workers), and
# each worker builds its own app after the fork: the service's memory is the workers' plus a
# small master, instead of three copies of the application (bench/api_reads.py).


def _prepare(config: Config) -> int:
    """Before serving, in a process of its own: migrate, create the first admin, finalise orphaned jobs."""
    from .app import create_app
    from .credentials import ensure_admin
    from .jobs.runner import AnsibleNotFound, ansible_bin_dir
    from .jobs.housekeeper import reconcile
    from .migrate import upgrade

    if bool(config.ADMIN_USER) != bool(config.ADMIN_PASSWORD):
        print("gpuaas-api: set both GPUAAS_ADMIN_USER and GPUAAS_ADMIN_PASSWORD, or neither "
              "(then the first start creates 'admin' with a random password)", file=sys.stderr)
        return 2
    try:
        ansible_bin_dir()
    except AnsibleNotFound as missing:  # reads still work; say at once why every job will fail
        print(f"gpuaas-api: warning: {missing}; every job will fail", file=sys.stderr)
    upgrade(config.DATABASE_URL)
    app = create_app(config)
    with app.app_context():
        generated = ensure_admin(config.ADMIN_USER, config.ADMIN_PASSWORD)
    if generated:
        # Shown this once, like Grafana's and Jenkins' first admin; only its hash is stored.
        print(f"gpuaas-api: no user existed: created user 'admin' with password {generated} (shown only now; "
              f"change it with `gpuaas-api set-password --user admin`). Log in: curl -X POST "
              f"http://{config.BIND}/api/login -H 'Content-Type: application/json' "
              f"-d '{{\"username\": \"admin\", \"password\": \"{generated}\"}}'", file=sys.stderr, flush=True)
    # Jobs left running by a process of this host that is gone: finalise them, fix their nodes.
    for job_id in reconcile(app):
        print(f"gpuaas-api: job {job_id} was left running by a stopped process; finalised", file=sys.stderr)
    return 0


M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _bound_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread its own malloc arena (up to 8 per CPU), and memory freed in one is
    rarely returned: with 8 request threads a worker grew by about 80 MB under load, 40 MB with 2."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except OSError:  # not glibc: nothing to bound
        pass


# The app of this gunicorn worker process (load() runs in the worker, after the fork).
served_apps: list = []
# gunicorn's graceful timeout covers the drain and then the hand-over of what still runs.
HAND_OVER_MARGIN_SECONDS = 15


def gunicorn_timeouts(config: Config) -> dict:
    """gunicorn's timeouts, agreeing with the jobs'. A worker silent for `timeout` is killed by the
    master; were that shorter than the lease, a worker paused past it (a stalled host) would be killed
    while its jobs' leases still held. A stop waits `graceful_timeout` for the workers: the drain,
    then the hand-over. The unit's TimeoutStopSec is longer still (deploy/systemd/gpuaas-api.service)."""
    return {"timeout": max(30, math.ceil(config.JOB_LEASE_SECONDS)),
            "graceful_timeout": math.ceil(config.JOB_DRAIN_SECONDS) + HAND_OVER_MARGIN_SECONDS}


def drain_job_workers(_arbiter, _worker) -> None:
    """gunicorn's worker_exit, in the worker that is stopping: its job runs end, or are handed over."""
    for app in served_apps:
        workers = app.extensions.get("gpuaas_job_workers")
        if workers is not None:
            handed = workers.drain(app.config["GPUAAS"].JOB_DRAIN_SECONDS)
            if handed:
                logging.getLogger("gpuaas_api").warning("jobs %s were handed over: pending again, to run anew", handed)


def end_dead_workers_runs(_arbiter, worker) -> None:
    """gunicorn's child_exit, in the master, once a worker is gone (killed past its timeout, or crashed):
    the Ansible processes it started die with it, before any process can take its jobs for orphans."""
    from .jobs.identity import Claimant, namespace_scope
    from .jobs.runner import end_processes_of_worker

    killed = end_processes_of_worker(Claimant(socket.gethostname(), worker.pid, namespace_scope(), 0))
    if killed:
        logging.getLogger("gpuaas_api").warning("worker %s is gone: ended %d processes of its job runs", worker.pid, killed)


def _serve(config: Config, workers: int) -> int:
    from gunicorn.app.base import BaseApplication

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    prepared = subprocess.run([sys.executable, "-m", "gpuaas_api.cli", "prepare"], check=False)
    if prepared.returncode != 0:
        return prepared.returncode
    from .ssh_keys import shared_identity_warning

    if warning := shared_identity_warning(config):
        logging.getLogger("gpuaas_api").warning(warning)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", config.BIND)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 8)
            self.cfg.set("accesslog", config.ACCESS_LOG)
            for name, value in gunicorn_timeouts(config).items():
                self.cfg.set(name, value)
            self.cfg.set("worker_exit", drain_job_workers)
            self.cfg.set("child_exit", end_dead_workers_runs)
            # gunicorn's largest request line (its default is 4094): a query the OpenAPI document allows
            # (remove_gpus's gpu_uuids, up to 2,048 characters, percent-encoded) and one just beyond it
            # reach the app, which answers in the JSON error shape rather than gunicorn's HTML 414.
            self.cfg.set("limit_request_line", 8190)
            # gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl):
            # two services on one machine would take each other's, and a system user has no home.
            # Nothing here uses gunicornc; systemd (or the terminal) controls the service.
            self.cfg.set("control_socket_disable", True)
            # gunicorn itself trusts X-Forwarded-Proto from loopback peers by default: the app's ProxyFix,
            # set by GPUAAS_TRUSTED_PROXY_HOPS, is the one place that decides which forwarded headers count.
            self.cfg.set("forwarded_allow_ips", "")

        def load(self):
            # In the worker, after the fork: its own app, engine and job workers.
            _bound_malloc_arenas()
            from .app import create_app
            from .jobs.worker import start_workers
            from .version_listener import start_listener

            app = create_app(config)
            start_listener(app)  # PostgreSQL only: cached reads without a round trip
            start_workers(app, config.JOB_WORKERS)
            served_apps.append(app)
            return app

    Server().run()
    return 0


def _set_password(config: Config, username: str, password: str | None) -> int:
    from .app import create_app
    from .credentials import set_password
    from .migrate import upgrade

    upgrade(config.DATABASE_URL)
    password = password or getpass.getpass(f"new password for {username}: ")
    app = create_app(config)
    with app.app_context():
        if not set_password(username, password):
            print(f"gpuaas-api: no user {username!r}", file=sys.stderr)
            return 1
    print(f"password of {username} changed; its login sessions ended")
    return 0


def _ssh_key(config: Config, action: str, staged: bool) -> int:
    """The deployment's SSH identity (ssh_keys.py): show it, or rotate it step by step."""
    from .app import create_app
    from .migrate import upgrade
    from .ssh_keys import IdentityError, activate, public_keys, retire, stage

    upgrade(config.DATABASE_URL)
    app = create_app(config)
    with app.app_context():
        try:
            if action == "show":
                print("\n".join(public_keys(config)))
            elif action == "stage":
                print(stage(config))
                print("gpuaas-api: staged; GET /gpuaas/node/{id}/ssh_keys lists it beside the active key. Add it to every "
                      "node's authorized_keys, then `gpuaas-api ssh-key activate`.", file=sys.stderr)
            elif action == "activate":
                print(activate(config))
                print("gpuaas-api: active; jobs on every host use it from now. Remove the old key from the nodes' "
                      "authorized_keys, then `gpuaas-api ssh-key retire`.", file=sys.stderr)
            else:
                print(f"gpuaas-api: removed {retire(config, staged)} key pair(s)", file=sys.stderr)
        except IdentityError as error:
            print(f"gpuaas-api: {error}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuaas-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the production WSGI server (gunicorn) in the foreground")
    serve.add_argument("--workers", type=int, default=2)
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    cli_users.add_parsers(sub)
    reset = sub.add_parser("set-password", help="give an existing user a new password (a lost admin password)")
    reset.add_argument("--user", required=True)
    reset.add_argument("--password", help="asked for when omitted")
    sub.add_parser("prepare", help="what serve does before it listens: migrate, first admin, orphaned jobs")
    key = sub.add_parser("ssh-key", help="the controller's SSH identity: show, or rotate (stage, activate, retire)")
    key.add_argument("action", choices=["show", "stage", "activate", "retire"])
    key.add_argument("--staged", action="store_true", help="with retire: remove the staged key instead of the retired ones")
    args = parser.parse_args(argv)
    try:
        config = Config()
    except ValueError as error:
        print(f"gpuaas-api: {error}", file=sys.stderr)
        return 2
    config.DATA_DIR.mkdir(parents=True, exist_ok=True)
    if args.command == "serve":
        return _serve(config, args.workers)
    if args.command == "prepare":
        return _prepare(config)
    if args.command == "db":
        from .migrate import upgrade

        upgrade(config.DATABASE_URL)
        print(f"database at head: {config.DATABASE_URL.split('@')[-1]}")
        return 0
    if args.command == "set-password":
        return _set_password(config, args.user, args.password)
    if args.command == "ssh-key":
        return _ssh_key(config, args.action, args.staged)
    return cli_users.run(config, args)


if __name__ == "__main__":
    sys.exit(main())
