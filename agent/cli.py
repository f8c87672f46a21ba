"""``telemaint``: argument parsing and printing only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    format_duration,
    load_config,
)
from agent.identity import CredentialsError, IdentityError
from agent.reports import health_document, inventory_document, utc_now_iso

logger = logging.getLogger("telemaint")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECK_UNKNOWN = 3
MAX_LIST_IN_CELL = 4
EXIT_QUEUED = 75  # EX_TEMPFAIL: the report is safe in the outbox and will be sent later


# --- commands --------------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    checks = len(config.health.checks)
    print(f"{config.source}: OK (device {config.device.name!r}, {checks} health check{'s' * (checks != 1)})")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    data = config.as_dict_secure()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_inventory(args: argparse.Namespace) -> int:
    from agent.collectors import COLLECTOR_NAMES, get_collector

    names = _parse_only(args.only, COLLECTOR_NAMES)
    if args.fields:
        for name in names:
            collector = get_collector(name)
            print(f"{name}: {collector.description}")
            for field in collector.fields:
                unit = f" [{field.unit}]" if field.unit else ""
                print(f"  {field.path}{unit}  {field.description}")
        return EXIT_OK
    config = load_config(args.config)
    inventory = inventory_document(config, names)
    if args.json:
        print(json.dumps(inventory, indent=2, sort_keys=False))
    else:
        for name, result in inventory["collectors"].items():
            print(render_collector(name, result, get_collector(name).fields))
    failed = [n for n, r in inventory["collectors"].items() if r["status"] == "failed"]
    for name in failed:
        logger.error("collector %s failed: %s", name, inventory["collectors"][name]["message"])
    return EXIT_FAILED if failed else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # Monitoring tools read exit 2 as CRITICAL; a check that cannot run is UNKNOWN.
        _print_config_error(exc)
        return EXIT_CHECK_UNKNOWN
    health = health_document(config)
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(render_health(health))
    return health["exit_code"]


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.daemon import prepare_state_dir
    from agent.identity import (
        Credentials,
        ensure_device_key,
        load_credentials,
        save_credentials,
        sign_with_device_key,
    )
    from agent.uplink import Uplink, UplinkError

    config = load_config(args.config)
    try:
        existing = load_credentials(config.state_dir)
    except CredentialsError:
        if not args.force:
            raise
        existing = None  # broken: enrolling again replaces it
    if existing is not None and not args.force:
        raise UsageError(
            f"already enrolled as device {existing.device_id} with {existing.server_url}; use --force to enroll again"
        )
    ca_file = args.ca_file or config.server.ca_file
    try:
        uplink = Uplink(args.server, ca_file=str(ca_file) if ca_file else None, proxy=config.server.proxy)
        prepare_state_dir(config.state_dir)
        public_key = ensure_device_key(config.state_dir)
        reply = uplink.enroll(
            args.code,
            config.device.model_dump(),
            public_key,
            sign=lambda message: sign_with_device_key(config.state_dir, message),
        )
    except UplinkError as exc:
        print(f"telemaint: enrollment failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    credentials = Credentials(
        device_id=str(reply["device_id"]),
        token=reply["token"],
        server_url=uplink.base_url,
        enrolled_at=utc_now_iso(),
        ca_file=str(ca_file) if ca_file else None,
    )
    save_credentials(config.state_dir, credentials)
    print(f"enrolled as device {credentials.device_id} with {credentials.server_url}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from agent.daemon import DaemonSettings, exec_service

    config = load_config(args.config)
    settings = DaemonSettings.from_config(config)
    verbosity = getattr(args, "verbose", 0)
    if verbosity:
        settings = dataclasses.replace(settings, log_level="info" if verbosity == 1 else "debug")
    exec_service(settings)  # does not return
    return EXIT_OK


def offline_status(config: AgentConfig) -> dict[str, Any]:
    """Return what can be known without the daemon: enrollment and the outbox. A broken outbox
    is reset on the way; raises StateFileError when it cannot be opened at all."""
    import sqlite3

    from agent.daemon import outbox_path, status_document
    from agent.outbox import Outbox

    depth = {"total": 0}
    path = outbox_path(config.state_dir)
    if path.exists():
        try:
            with Outbox(path) as outbox:
                depth = outbox.depth()
        except (OSError, sqlite3.Error) as exc:  # permissions, or busy for longer than its timeout
            raise StateFileError(f"cannot open the outbox {path}: {exc}") from None
    return status_document(config.state_dir, config.server.url, depth)


def cmd_status(args: argparse.Namespace) -> int:
    from agent.daemon import ask_daemon

    config = load_config(args.config)
    if args.ack:
        acknowledged = acknowledge_state_problems(config)
        if not args.json:
            print(f"acknowledged {acknowledged} state problem{'s' * (acknowledged != 1)}")
    reply = ask_daemon(config.state_dir, {"action": "status"}, timeout_s=10)
    status = reply["status"] if reply and reply.get("ok") else offline_status(config)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render_status(status))
    return EXIT_OK if status["daemon"]["running"] else EXIT_FAILED


def acknowledge_state_problems(config: AgentConfig) -> int:
    """Dismiss the recorded state problems (through the daemon when it runs, so that members
    of group telemaint may); return how many there were. Raises StateFileError."""
    from agent import outbox
    from agent.daemon import ask_daemon

    reply = ask_daemon(config.state_dir, {"action": "ack_state_problems"}, timeout_s=10)
    if reply and reply.get("ok"):
        return int(reply["acknowledged"])
    try:
        return outbox.acknowledge_state_problems(config.state_dir)
    except OSError as exc:
        raise StateFileError(f"cannot acknowledge the state problems in {config.state_dir}: {exc}") from None


def render_status(status: dict[str, Any]) -> str:
    daemon = status["daemon"]
    reachable = {True: "yes", False: "no", None: "unknown"}[status["server_reachable"]]
    rows = [
        (
            "daemon",
            f"running (pid {daemon['pid']}, since {daemon['started_at']})" if daemon["running"] else "not running",
        ),
        ("enrolled", f"yes, device {status['device_id']}" if status["enrolled"] else "no (telemaint enroll)"),
        ("server", status["server_url"] or "-"),
        ("server reachable", reachable + (f" ({status['last_error']})" if status["last_error"] else "")),
        ("last contact", status["last_contact_at"] or "-"),
        ("last report sent", status["last_sent_at"] or "-"),
        ("outbox", f"{status['outbox']['total']} queued"),
        ("health", status["health"]["status"] or "-"),
    ]
    for problem in status.get("state_problems", []):
        dismiss = " (telemaint status --ack dismisses it)" if problem.get("until") == "acknowledged" else ""
        rows.append(("state problem", f"{problem['message']}{dismiss}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def cmd_report(args: argparse.Namespace) -> int:
    from agent.daemon import (
        NOT_ENROLLED,
        DaemonSettings,
        ask_daemon,
        delivery_reply,
        flush_outbox,
        make_uplink,
        outbox_path,
        prepare_state_dir,
    )
    from agent.identity import load_credentials
    from agent.outbox import Outbox, new_report
    from agent.reports import heartbeat_document

    config = load_config(args.config)
    reply = ask_daemon(config.state_dir, {"action": "report", "kind": args.kind})
    if reply is None:
        documents = {
            "heartbeat": lambda: heartbeat_document(config.server.intervals.heartbeat),
            "inventory": lambda: inventory_document(config),
            "health": lambda: health_document(config),
        }
        prepare_state_dir(config.state_dir)
        with Outbox(outbox_path(config.state_dir)) as outbox:
            outbox.put(new_report(args.kind, documents[args.kind]()))
            try:
                credentials, unsent_reason = load_credentials(config.state_dir), NOT_ENROLLED
            except CredentialsError as exc:
                credentials, unsent_reason = None, str(exc)
            uplink = make_uplink(DaemonSettings.from_config(config), credentials) if credentials else None
            reply = delivery_reply(outbox, flush_outbox(outbox, uplink) if uplink else None, unsent_reason)
    if not reply.get("ok"):
        raise UsageError(reply.get("error", "the daemon refused the request"))
    if reply["sent"]:
        print(f"{args.kind} report sent")
        return EXIT_OK
    print(f"{args.kind} report queued ({reply['queued']} in the outbox): {reply['error']}")
    return EXIT_QUEUED


def _parse_only(only: str | None, known: Sequence[str]) -> list[str]:
    if not only:
        return list(known)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"--only: unknown collector {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


# --- human output ----------------------------------------------------------------------------


def format_value(value: Any, unit: str | None) -> str:
    """Return ``value`` for a person: bytes as KiB/MiB/GiB, seconds as 2d3h, percentages with %."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return ", ".join(str(v) for v in value) or "-"
        return f"{len(value)} items"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v, None)}" for k, v in value.items()) or "-"
    if unit == "B" and isinstance(value, int | float):
        size = float(value)
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(size) < 1024 or suffix == "TiB":
                return f"{size:.0f} {suffix}" if suffix == "B" else f"{size:.1f} {suffix}"
            size /= 1024
    if unit == "s" and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, float):
        value = f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return f"{value} {unit}" if unit and unit not in ("count",) else str(value)


def format_cell(value: Any, unit: str | None) -> str:
    """Return ``value`` for a table cell: like :func:`format_value`, long lists as a count."""
    if isinstance(value, list) and len(value) > MAX_LIST_IN_CELL:
        return f"{len(value)} items"
    return format_value(value, unit)


def _get_path(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Return rows as aligned columns under ``headers``; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def render_collector(name: str, result: dict[str, Any], fields: Sequence[Any]) -> str:
    """Return one collector's result as a section: its scalar fields, then a table per list."""
    header = f"== {name} ({result['status']}, {result['duration_ms']:.0f} ms) =="
    lines = [header]
    if result.get("message"):
        lines.append(f"  {result['message']}")
    data = result.get("data") or {}
    scalars = [f for f in fields if "[]" not in f.path]
    if scalars:
        width = max(len(f.description) for f in scalars)
        for field in scalars:
            value = _get_path(data, field.path)
            if value is None and result["status"] != "ok":
                continue
            lines.append(f"  {field.description.ljust(width)}  {format_value(value, field.unit)}")
    tables: dict[str, list[Any]] = {}
    for field in fields:
        if "[]" in field.path:
            prefix, _, rest = field.path.partition("[].")
            if rest and "[]" not in rest:
                tables.setdefault(prefix, []).append((rest, field))
    for prefix, columns in tables.items():
        rows = _get_path(data, prefix)
        if not isinstance(rows, list) or not rows:
            continue
        headers = [sub.replace("_", " ") for sub, _ in columns]
        cells = [[format_cell(_get_path(row, sub), f.unit) for sub, f in columns] for row in rows]
        lines.append(f"  {prefix}:")
        lines.append(render_table(headers, cells, indent="    "))
    return "\n".join(lines) + "\n"


def render_health(health: dict[str, Any]) -> str:
    rows = [
        [c["status"], c["name"], c["type"], format_value(c["value"], c["unit"]), c["message"] or ""]
        for c in health["checks"]
    ]
    if not rows:
        return "No health checks configured (health.checks in agent.yaml).\nOverall: OK"
    table = render_table(["STATUS", "CHECK", "TYPE", "VALUE", "MESSAGE"], rows, indent="")
    return f"{table}\nOverall: {health['status']}"


# --- parsing ---------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


class StateFileError(Exception):
    """A file in the agent's state directory cannot be used: printed as one line, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"agent config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (-vv: debug)"
    )

    parser = argparse.ArgumentParser(
        prog="telemaint",
        parents=[common],
        description="Remote maintenance agent: inventory, health checks, backups, support sessions.",
    )
    parser.add_argument("--version", action="version", version=f"telemaint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = sub.add_parser("config", help="check or show the agent config")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    validate = config_sub.add_parser(
        "validate", parents=[common], help="validate the config file; exit 2 if it has problems"
    )
    validate.set_defaults(func=cmd_config_validate)
    show = config_sub.add_parser("show", parents=[common], help="print the effective config, secrets masked")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(func=cmd_config_show)

    inventory = sub.add_parser("inventory", parents=[common], help="collect and print the machine's inventory")
    inventory.add_argument("--json", action="store_true", help="print the stable JSON document (see README)")
    inventory.add_argument("--only", metavar="NAMES", help="comma-separated collectors: system,versions,network,logs")
    inventory.add_argument("--fields", action="store_true", help="describe each collector's fields and units")
    inventory.set_defaults(func=cmd_inventory)

    check = sub.add_parser(
        "check", parents=[common], help="run the health checks; exit 0/1/2/3 like a monitoring plugin"
    )
    check.add_argument("--json", action="store_true", help="print the stable JSON document (see README)")
    check.set_defaults(func=cmd_check)

    enroll = sub.add_parser("enroll", parents=[common], help="enroll this device with the server (one-time code)")
    enroll.add_argument("--server", required=True, metavar="URL", help="the server, e.g. https://telemaint.example.com")
    enroll.add_argument("--code", required=True, help="the one-time enrollment code from the server")
    enroll.add_argument(
        "--ca-file", type=Path, help="trust this CA for the server (default: server.ca_file or system CAs)"
    )
    enroll.add_argument("--force", action="store_true", help="enroll again even if already enrolled")
    enroll.set_defaults(func=cmd_enroll)

    run = sub.add_parser("run", parents=[common], help="run the agent service (systemd starts this)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser(
        "status", parents=[common], help="show the agent's state; exit 1 if the daemon is not running"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--ack", action="store_true", help="dismiss the state problems reported (an outbox reset), then show the state"
    )
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", parents=[common], help="send one report now, or queue it; say which")
    report.add_argument("--kind", choices=("heartbeat", "inventory", "health"), default="heartbeat")
    report.set_defaults(func=cmd_report)
    return parser


def _print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="telemaint: %(levelname)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    _setup_logging(getattr(args, "verbose", 0))
    try:
        return args.func(args)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"telemaint: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StateFileError, IdentityError) as exc:
        print(f"telemaint: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
