"""``gpuaas-agent``: run the agent, or look at what a running one reports."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from . import __version__
from .config import ConfigError, load_settings, parse_sharing

DEFAULT_SETTINGS = "/etc/gpuaas/agent.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpuaas-agent",
        description="The hosted·ai GPUaaS node agent: a kubelet device plugin (API v1beta1) with one resource per "
                    "GPU pool on the node, each security level's isolation (time-slicing, MPS, exclusive use), and "
                    "status and readings over HTTP. See docs/agent.md.")
    parser.add_argument("--version", action="version", version=f"gpuaas-agent {__version__}")
    parser.add_argument("--config", default=DEFAULT_SETTINGS,
                        help=f"the agent's settings file (default {DEFAULT_SETTINGS}; missing: built-in defaults)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the agent in the foreground (the service's command)")
    commands.add_parser("status", help="print what the running agent last reported (its status file)")
    check = commands.add_parser("check-config", help="validate a sharing configuration; exit 1 with the reason")
    check.add_argument("path", nargs="?", help="the file (default: the settings' sharing_config)")
    args = parser.parse_args(argv)
    if args.command == "run":
        # A reload (SIGHUP) that comes while the agent is still starting must not end it; the
        # agent's own handler takes over once it runs.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        # No settings file at the default path means the built-in defaults; a named one must exist.
        settings = load_settings(args.config if args.config != DEFAULT_SETTINGS or os.path.exists(args.config) else None)
    except ConfigError as error:
        print(f"gpuaas-agent: {error}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        path = args.path or settings.sharing_config
        try:
            with open(path, encoding="utf-8") as handle:
                sharing = parse_sharing(handle.read(), path)
        except (OSError, ConfigError) as error:
            print(f"gpuaas-agent: {error}", file=sys.stderr)
            return 1
        print(f"{path}: version {sharing.version}, {len(sharing.gpus)} GPUs in {len(sharing.resources)} pool resources")
        return 0
    if args.command == "status":
        try:
            with open(settings.status_file, encoding="utf-8") as handle:
                print(json.dumps(json.load(handle), indent=2, sort_keys=True))
        except (OSError, ValueError) as error:
            print(f"gpuaas-agent: no status from a running agent ({settings.status_file}): {error}", file=sys.stderr)
            return 1
        return 0
    return run(settings)


def run(settings) -> int:
    from .agent import Agent, remove_quietly  # grpc is loaded only to run
    from .status_http import TokenMissing, read_token, serve

    remove_quietly(settings.status_file)  # an agent that does not start reports nothing
    agent = Agent(settings)
    if settings.http_listen:
        try:
            token = read_token(settings.http_token_file)
        except TokenMissing as error:
            print(f"gpuaas-agent: http_listen needs a token: {error}", file=sys.stderr)
            return 2
        try:
            serve(settings.http_listen, token, lambda: agent.status(readings=True))
        except OSError as error:
            print(f"gpuaas-agent: cannot listen on {settings.http_listen}: {error.strerror}", file=sys.stderr)
            return 2
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
