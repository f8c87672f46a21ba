"""``telemaint-server``: init, run, user, enrollment-code, device. Parsing and printing only."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.config import (
    ENV_PREFIX,
    ServerSettings,
    SettingsError,
    ensure_secret_key,
    load_settings,
    parse_duration_s,
    read_secret_key,
)

log = logging.getLogger("telemaint-server")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Idle keep-alive TLS connections would otherwise hold a stop for asyncio's 30 s TLS shutdown.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 5
MAX_CODE_TTL_S = 365 * 86400  # a code is for one machine's installation, not for keeps


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


def _common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir",
        type=Path,
        help=f"state directory (default /var/lib/telemaint-server; {ENV_PREFIX}DATA_DIR)",
    )
    parent.add_argument(
        "--db",
        metavar="URL",
        help="database URL, e.g. sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        f"(default: server.db in the data directory; {ENV_PREFIX}DB)",
    )
    parent.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parent


def _row_id(text: str) -> int:
    """Return ``text`` as a row id (1 to 2**31 - 1); raise ArgumentTypeError otherwise."""
    from server.models import MAX_ROW_ID

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= MAX_ROW_ID:
        raise argparse.ArgumentTypeError(f"{text} is not an id (1 to {MAX_ROW_ID})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``telemaint-server``."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="telemaint-server",
        description="Central server of telemaint: devices report here; support looks here.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "init",
        parents=[common],
        help="create or upgrade the database schema; create the secret key",
    )

    run = commands.add_parser("run", parents=[common], help="serve the API (uvicorn)")
    run.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST})")
    run.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    run.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this cert")
    run.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert")
    run.add_argument("--public-url", help=f"URL clients use ({ENV_PREFIX}PUBLIC_URL)")
    run.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="ADDR",
        help="a reverse proxy (address or network) whose X-Forwarded-For/-Proto are believed; "
        f"repeatable ({ENV_PREFIX}TRUSTED_PROXIES, comma separated)",
    )

    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    add = user_commands.add_parser("add", parents=[common], help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "support", "customer"])
    add.add_argument("--customer", help="the customer a customer viewer may see")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (also the default when stdin is not a terminal)",
    )
    passwd = user_commands.add_parser(
        "passwd", parents=[common], help="set a user's password; ends their sessions and API tokens"
    )
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (also the default when stdin is not a terminal)",
    )
    for command, text in (
        ("disable", "disable a user; ends their sessions and API tokens"),
        ("enable", "enable a disabled user again"),
    ):
        user_commands.add_parser(command, parents=[common], help=text).add_argument("name")
    user_list = user_commands.add_parser("list", parents=[common], help="list the users")
    user_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    tokens = user_commands.add_parser("tokens", parents=[common], help="list a user's API tokens")
    tokens.add_argument("name")
    tokens.add_argument("--json", action="store_true", help="print JSON for scripts")
    revoke = user_commands.add_parser("revoke-token", parents=[common], help="revoke one of a user's API tokens")
    revoke.add_argument("name")
    revoke.add_argument("token_id", type=_row_id, metavar="TOKEN_ID")

    code = commands.add_parser("enrollment-code", parents=[common], help="print a one-time enrollment code")
    code_for = code.add_mutually_exclusive_group()
    code_for.add_argument("--customer", help="the customer a new device enrolled with it belongs to")
    code_for.add_argument(
        "--device",
        type=_row_id,
        metavar="ID",
        help="re-enroll this device (a reinstall that kept nothing): same id and customer, new key",
    )
    code.add_argument("--ttl", default="24h", help="how long the code is valid (24h)")
    code.add_argument("--json", action="store_true", help="print JSON for scripts")

    device = commands.add_parser("device", help="list devices, assign them to customers")
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    device_list = device_commands.add_parser("list", parents=[common], help="list the enrolled devices")
    device_list.add_argument("--unassigned", action="store_true", help="only devices without a customer")
    device_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    assign = device_commands.add_parser("assign", parents=[common], help="assign a device to a customer")
    assign.add_argument("device_id", type=_row_id, metavar="ID")
    assign_to = assign.add_mutually_exclusive_group(required=True)
    assign_to.add_argument("--customer", metavar="NAME", help="the customer (created when new)")
    assign_to.add_argument("--unassign", action="store_true", help="leave the device without a customer")
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> ServerSettings:
    return load_settings({"data_dir": args.data_dir, "db_url": args.db, **extra})


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _cmd_init(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from server.db import display_url, make_engine
    from server.migrations import LATEST_SCHEMA_VERSION, upgrade_schema

    settings = _settings(args)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings, created = ensure_secret_key(settings)
    if created:
        print(f"created secret key {settings.secret_key_path} (mode 0600)")
    engine = make_engine(settings.database_url)
    try:
        applied = upgrade_schema(engine)
    finally:
        engine.dispose()
    where = display_url(settings.database_url)
    if applied:
        print(f"{where}: schema at version {LATEST_SCHEMA_VERSION} (applied {applied})")
    else:
        print(f"{where}: schema already at version {LATEST_SCHEMA_VERSION}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.db import make_engine
    from server.migrations import require_current_schema

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not os.access(path, os.R_OK):
            raise CliError(f"{path}: cannot read")
    if not 0 < args.port < 65536:
        raise CliError(f"--port {args.port}: not a port number")
    settings = read_secret_key(_settings(args, public_url=args.public_url, trusted_proxies=args.trusted_proxy))
    engine = make_engine(settings.database_url)
    require_current_schema(engine)
    app = create_app(settings, engine=engine)
    scheme = "https" if args.tls_cert else "http"
    log.info("serving on %s://%s:%d", scheme, args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        proxy_headers=False,  # the app believes X-Forwarded-* from --trusted-proxy only
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT_S,
        log_level="debug" if args.verbose else "info",
    )
    return EXIT_OK


def _read_password(from_stdin: bool) -> str:
    from server.auth import password_problem

    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise CliError("the passwords do not match")
    problem = password_problem(password)
    if problem:
        raise CliError(problem)
    return password


def _cmd_user_add(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from server.audit import record_audit
    from server.auth import hash_password
    from server.clock import utc_now
    from server.customers import customer_name_problem, get_or_create_customer
    from server.db import make_engine, make_sessionmaker
    from server.migrations import require_current_schema
    from server.models import NAME_MAX_CHARS, User
    from server.names import name_problem

    name = args.name.strip()
    if not name or len(name) > NAME_MAX_CHARS or not name.isprintable():
        raise CliError(f"user name {args.name!r}: 1 to {NAME_MAX_CHARS} printable characters")
    if name_problem(name):
        raise CliError(f"user name {args.name!r}: {name_problem(name)}")
    if args.role == "customer" and not args.customer:
        raise CliError("a customer viewer needs --customer")
    if args.role != "customer" and args.customer:
        raise CliError("--customer is only for --role customer")
    if args.customer and customer_name_problem(args.customer):
        raise CliError(f"--customer {args.customer!r}: {customer_name_problem(args.customer)}")
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        with make_sessionmaker(engine)() as session:
            # The login limiter counts names without case: "Root" and "root" would share it.
            same = session.scalar(select(User).where(func.lower(User.name) == name.lower()))
            if same is not None:
                raise CliError(
                    f"user {same.name!r} exists already" + (" (names differ in case only)" if same.name != name else "")
                )
            password = _read_password(args.password_stdin)
            now = utc_now()
            customer = get_or_create_customer(session, args.customer, now) if args.customer else None
            session.add(
                User(
                    name=name,
                    role=args.role,
                    customer_id=customer.id if customer else None,
                    password_hash=hash_password(password),
                    created_at=now,
                )
            )
            record_audit(
                session,
                at=now,
                actor=_cli_actor(),
                action="user.add",
                target=f"user:{name}",
                details={"role": args.role, "customer": args.customer},
            )
            session.commit()
    finally:
        engine.dispose()
    print(f"added {args.role} {name}" + (f" of customer {args.customer}" if args.customer else ""))
    return EXIT_OK


def _cmd_user(args: argparse.Namespace) -> int:
    if args.user_command == "add":
        return _cmd_user_add(args)
    from server.clock import utc_now
    from server.db import make_engine, make_sessionmaker
    from server.migrations import require_current_schema
    from server.users import (
        UserChangeRefused,
        UserNotFound,
        disable_user,
        enable_user,
        find_user,
        list_users,
        revoke_token,
        set_password,
        user_tokens,
    )

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        with make_sessionmaker(engine)() as session:
            now, actor = utc_now(), _cli_actor()
            try:
                if args.user_command == "list":
                    _print_users(list_users(session, now), as_json=args.json)
                    return EXIT_OK
                user = find_user(session, args.name)
                if args.user_command == "tokens":
                    _print_tokens(user_tokens(session, user), as_json=args.json)
                    return EXIT_OK
                if args.user_command == "passwd":
                    revoked = set_password(session, user, _read_password(args.password_stdin), now=now, actor=actor)
                    done = f"password of {user.name} set"
                elif args.user_command == "disable":
                    revoked = disable_user(session, user, now=now, actor=actor)
                    done = f"disabled {user.name}"
                elif args.user_command == "enable":
                    enable_user(session, user, now=now, actor=actor)
                    revoked, done = None, f"enabled {user.name}"
                else:
                    revoke_token(session, user, args.token_id, now=now, actor=actor)
                    revoked, done = None, f"revoked API token {args.token_id} of {user.name}"
            except UserNotFound as exc:
                raise CliError(str(exc) if args.user_command != "revoke-token" else f"{exc} of {args.name!r}") from None
            except UserChangeRefused as exc:
                raise CliError(str(exc)) from None
            session.commit()
    finally:
        engine.dispose()
    if revoked is not None:
        done += f"; ended {revoked.sessions} session(s) and revoked {revoked.tokens} API token(s)"
    print(done)
    return EXIT_OK


def _print_table(headers: Sequence[str], table: list[tuple[str, ...]]) -> None:
    widths = [max([len(h), *(len(row[i]) for row in table)]) for i, h in enumerate(headers)]
    for row in (tuple(headers), *table):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _print_users(summaries: list[Any], *, as_json: bool) -> None:
    rows = [
        {
            "id": s.user.id,
            "name": s.user.name,
            "role": s.user.role,
            "customer": s.customer,
            "created_at": s.user.created_at.isoformat(),
            "disabled_at": s.user.disabled_at.isoformat() if s.user.disabled_at else None,
            "sessions": s.sessions,
            "tokens": s.tokens,
        }
        for s in summaries
    ]
    if as_json:
        print(json.dumps({"users": rows}, indent=2))
        return
    _print_table(
        ("ID", "NAME", "ROLE", "CUSTOMER", "STATE", "SESSIONS", "TOKENS"),
        [
            (
                str(r["id"]),
                r["name"],
                r["role"],
                r["customer"] or "",
                "disabled" if r["disabled_at"] else "enabled",
                str(r["sessions"]),
                str(r["tokens"]),
            )
            for r in rows
        ],
    )


def _print_tokens(tokens: list[Any], *, as_json: bool) -> None:
    rows = [
        {
            "id": t.id,
            "name": t.name,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        }
        for t in tokens
    ]
    if as_json:
        print(json.dumps({"tokens": rows}, indent=2))
        return
    _print_table(
        ("ID", "NAME", "CREATED", "LAST USED"),
        [(str(r["id"]), r["name"], r["created_at"], r["last_used_at"] or "never") for r in rows],
    )


def _cmd_enrollment_code(args: argparse.Namespace) -> int:
    from server.audit import record_audit
    from server.clock import utc_now
    from server.db import make_engine, make_sessionmaker
    from server.enrollment import create_enrollment_code
    from server.migrations import require_current_schema

    try:
        ttl_s = parse_duration_s(args.ttl)
    except ValueError as exc:
        raise CliError(f"--ttl: {exc}") from None
    if not 0 < ttl_s <= MAX_CODE_TTL_S:
        raise CliError(f"--ttl must be positive and at most {MAX_CODE_TTL_S // 86400} days")
    customer = args.customer.strip() if args.customer else None
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        with make_sessionmaker(engine)() as session:
            now = utc_now()
            actor = _cli_actor()
            try:
                code, row = create_enrollment_code(
                    session,
                    now=now,
                    ttl_s=ttl_s,
                    customer_name=customer,
                    for_device_id=args.device,
                    created_by=actor,
                )
            except ValueError as exc:
                raise CliError(str(exc)) from None
            record_audit(
                session,
                at=now,
                actor=actor,
                action="enrollment_code.create",
                target=f"enrollment_code:{row.id}",
                details={"customer": customer, "device_id": args.device, "expires_at": row.expires_at.isoformat()},
            )
            session.commit()
            expires_at = row.expires_at
    finally:
        engine.dispose()
    if args.json:
        bound = {"device_id": args.device} if args.device is not None else {}
        print(json.dumps({"code": code, "customer": customer, **bound, "expires_at": expires_at.isoformat()}))
    else:
        print(code)
        print(f"valid until {expires_at.isoformat(timespec='seconds')}", file=sys.stderr)
    return EXIT_OK


def _cmd_device(args: argparse.Namespace) -> int:
    from server.clock import utc_now
    from server.customers import assign_device, devices_with_customers
    from server.db import make_engine, make_sessionmaker
    from server.migrations import require_current_schema
    from server.models import Device

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        require_current_schema(engine)
        with make_sessionmaker(engine)() as session:
            if args.device_command == "list":
                rows = [
                    {
                        "id": device.id,
                        "name": device.name,
                        "serial": device.serial,
                        "model": device.model,
                        "customer": customer,
                        "claimed_customer": device.claimed_customer,
                        "enrolled_at": device.enrolled_at.isoformat(),
                        "last_seen_at": device.last_seen_at.isoformat() if device.last_seen_at else None,
                    }
                    for device, customer in devices_with_customers(session, unassigned_only=args.unassigned)
                ]
                _print_devices(rows, as_json=args.json)
                return EXIT_OK
            device = session.get(Device, args.device_id)
            if device is None:
                raise CliError(f"there is no device {args.device_id}")
            name = None if args.unassign else args.customer.strip()
            try:
                before, after = assign_device(session, device, name, now=utc_now(), actor=_cli_actor())
            except ValueError as exc:
                raise CliError(f"--customer {args.customer!r}: {exc}") from None
            session.commit()
    finally:
        engine.dispose()
    now_text = f"assigned to customer {after}" if after else "unassigned"
    print(f"device {args.device_id}: {now_text} (was {before or 'unassigned'})")
    return EXIT_OK


def _print_devices(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"devices": rows}, indent=2))
        return
    headers = ("ID", "NAME", "SERIAL", "CUSTOMER", "CLAIMED")
    table = [
        (str(r["id"]), r["name"], r["serial"], r["customer"] or "(unassigned)", r["claimed_customer"] or "")
        for r in rows
    ]
    _print_table(headers, table)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``telemaint-server``; return the exit status (0 ok, 1 error, 2 usage)."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.migrations import SchemaError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers = {
        "init": _cmd_init,
        "run": _cmd_run,
        "user": _cmd_user,
        "enrollment-code": _cmd_enrollment_code,
        "device": _cmd_device,
    }
    try:
        return handlers[args.command](args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"telemaint-server: {problem}", file=sys.stderr)
    except (CliError, SchemaError) as exc:
        print(f"telemaint-server: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"telemaint-server: database error: {reason}", file=sys.stderr)
    except OSError as exc:
        print(f"telemaint-server: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("telemaint-server: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
