"""gpuaas-api: serve | db upgrade | create-token."""
from __future__ import annotations

import argparse
import getpass
import logging
import sys

from sqlalchemy import select

from . import create_app
from .auth import ensure_admin, hash_password, issue_token
from .config import Config
from .db import session
from .jobs.worker import reconcile, start_workers
from .migrate import upgrade
from .models import User


def _serve(config: Config, workers: int) -> int:
    from gunicorn.app.base import BaseApplication

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    upgrade(config.DATABASE_URL)
    app = create_app(config)
    with app.app_context():
        ensure_admin(config.ADMIN_USER, config.ADMIN_PASSWORD)
    # Jobs left running by a process of this host that is gone: finalise them, fix their nodes.
    for job_id in reconcile(app):
        print(f"gpuaas-api: job {job_id} was left running by a stopped process; finalised", file=sys.stderr)

    def post_fork(_server, _worker):
        # Connections must not be shared across fork; each worker process runs its own job workers.
        app.extensions["gpuaas_engine"].dispose(close=False)
        start_workers(app, config.JOB_WORKERS)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", config.BIND)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 8)
            self.cfg.set("accesslog", config.ACCESS_LOG)
            self.cfg.set("post_fork", post_fork)
            self.cfg.set("graceful_timeout", 10)

        def load(self):
            return app

    Server().run()
    return 0


def _create_token(config: Config, username: str, password: str | None, hours: int | None) -> int:
    upgrade(config.DATABASE_URL)
    app = create_app(config)
    with app.app_context():
        db = session()
        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            password = password or getpass.getpass(f"password for new user {username}: ")
            user = User(username=username, password_hash=hash_password(password))
            db.add(user)
        token = issue_token(user, hours, "create-token")
        db.commit()
    print(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuaas-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the production WSGI server (gunicorn) in the foreground")
    serve.add_argument("--workers", type=int, default=2)
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    token = sub.add_parser("create-token", help="issue an API token (creating the user if needed)")
    token.add_argument("--user", required=True)
    token.add_argument("--password", help="for a new user; asked for when omitted")
    token.add_argument("--hours", type=int, help="lifetime; no expiry when omitted")
    args = parser.parse_args(argv)
    config = Config()
    config.DATA_DIR.mkdir(parents=True, exist_ok=True)
    if args.command == "serve":
        return _serve(config, args.workers)
    if args.command == "db":
        upgrade(config.DATABASE_URL)
        print(f"database at head: {config.DATABASE_URL.split('@')[-1]}")
        return 0
    return _create_token(config, args.user, args.password, args.hours)


if __name__ == "__main__":
    sys.exit(main())
