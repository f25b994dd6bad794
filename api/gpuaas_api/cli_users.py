"""gpuaas-api create-token | users … | tokens …: the users and tokens of /api/users and /api/tokens,
from the service host's shell (for the first tokens of automation, and for a locked-out fleet)."""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys

from .access import Role
from .config import Config
from .domain_errors import DomainError

ROLES = [role.value for role in Role]


def add_parsers(sub) -> None:
    token = sub.add_parser("create-token", help="issue an API token (creating the user, with --role, if needed)")
    token.add_argument("--user", required=True)
    token.add_argument("--role", choices=ROLES, help="a new user's role (required for one); for an existing user, "
                                                     "a narrower role for this token only")
    token.add_argument("--password", help="for a new user; asked for when omitted")
    token.add_argument("--description", default="create-token")
    lifetime = token.add_mutually_exclusive_group()
    lifetime.add_argument("--days", type=int, help="lifetime in days; 0: never expires (default: GPUAAS_API_TOKEN_TTL_DAYS, 365)")
    lifetime.add_argument("--hours", type=int, help="lifetime in hours")

    user_parser = sub.add_parser("users", help="list, create, change the role of, or delete users")
    user_actions = user_parser.add_subparsers(dest="action", required=True)
    user_actions.add_parser("list")
    create = user_actions.add_parser("create")
    create.add_argument("--user", required=True)
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--password", help="asked for when omitted")
    create.add_argument("--email", default="")
    set_role = user_actions.add_parser("set-role", help="the last admin can't be demoted")
    set_role.add_argument("--user", required=True)
    set_role.add_argument("--role", choices=ROLES, required=True)
    remove = user_actions.add_parser("delete", help="the user and their tokens; the last admin can't be deleted")
    remove.add_argument("--user", required=True)

    token_parser = sub.add_parser("tokens", help="list or revoke API tokens")
    token_actions = token_parser.add_subparsers(dest="action", required=True)
    listing = token_actions.add_parser("list")
    listing.add_argument("--user", help="only this user's")
    revoke = token_actions.add_parser("revoke")
    revoke.add_argument("token_id", type=int)


COMMANDS = frozenset({"create-token", "users", "tokens"})


def run(config: Config, args: argparse.Namespace) -> int:
    """Run one of COMMANDS in an app context; a refusal (an unknown user, the last admin) is one line and 1."""
    from .app import create_app
    from .migrate import upgrade

    upgrade(config.DATABASE_URL)
    with create_app(config).app_context():
        try:
            if args.command == "create-token":
                return _create_token(config, args)
            return (_users if args.command == "users" else _tokens)(args)
        except DomainError as refusal:
            print(f"gpuaas-api: {refusal.message}", file=sys.stderr)
            return 1


def _lifetime(config: Config, args) -> dt.timedelta | None:
    if args.hours is not None:
        return dt.timedelta(hours=args.hours) if args.hours else None
    days = config.API_TOKEN_TTL_DAYS if args.days is None else args.days
    return dt.timedelta(days=days) if days else None


def _create_token(config: Config, args) -> int:
    from . import users

    user = users.find_user(args.user)
    role = Role(args.role) if args.role else None
    if user is None:
        if role is None:
            print(f"gpuaas-api: no user {args.user!r}: give --role (viewer, operator or admin) to create one", file=sys.stderr)
            return 2
        password = args.password or getpass.getpass(f"password for new user {args.user}: ")
        user = users.create_user(args.user, password, role)
        role = None  # the token does what its new user may
    _row, token = users.create_token(user, args.description, role, _lifetime(config, args))
    print(token)
    return 0


def _users(args) -> int:
    from . import users

    if args.action == "list":
        for user in users.list_users():
            print(f"{user.id}\t{user.username}\t{user.role}")
        return 0
    if args.action == "create":
        password = args.password or getpass.getpass(f"password for new user {args.user}: ")
        users.create_user(args.user, password, Role(args.role), args.email)
        print(f"created user {args.user} ({args.role})")
        return 0
    user = users.find_user(args.user)
    if user is None:
        print(f"gpuaas-api: no user {args.user!r}", file=sys.stderr)
        return 1
    if args.action == "set-role":
        users.set_role(user, Role(args.role))
        print(f"{args.user} is now {args.role}")
    else:
        users.delete_user(user)
        print(f"deleted user {args.user} and their tokens")
    return 0


def _tokens(args) -> int:
    from . import users

    if args.action == "revoke":
        users.revoke_token(users.get_token(args.token_id))
        print(f"revoked token {args.token_id}")
        return 0
    user_id = None
    if args.user:
        user = users.find_user(args.user)
        if user is None:
            print(f"gpuaas-api: no user {args.user!r}", file=sys.stderr)
            return 1
        user_id = user.id
    for token in users.list_tokens(user_id):
        expires = token.expires_at.isoformat() if token.expires_at else "never"
        print(f"{token.id}\t{token.user.username}\t{token.role or token.user.role}\t{expires}\t{token.description}")
    return 0
