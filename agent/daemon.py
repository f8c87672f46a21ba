"""The agent service (``telemaint run``): scheduled jobs, a sender with backoff, a control socket.

Jobs (APScheduler, jittered intervals from ``server.intervals``): heartbeat, inventory, health and
command polling. Every report goes to the :class:`~agent.outbox.Outbox` first; one sender thread
delivers the outbox in order, backing off exponentially (with jitter, up to 5 minutes) while the
server is unreachable, and up to an hour while it answers 429 (the device's daily storage budget
is used up), resetting on success. A report the server refuses as it is (413, 422) is held back,
never deleted, so that it cannot block the ones behind it. A failing job is logged and the
daemon goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import grp
import json
import logging
import os
import pwd
import random
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.defaults import STATE_DIR_ENV
from agent.identity import (
    CREDENTIALS_FILE,
    PRIVATE_KEY_FILE,
    Credentials,
    CredentialsError,
    check_device_key,
    load_credentials,
)
from agent.outbox import Outbox, Report, acknowledge_state_problems, new_report, read_state_problems
from agent.reports import heartbeat_document, utc_now_iso
from agent.runner import run_command
from agent.uplink import MAX_BATCH_REPORTS, Uplink, UplinkError

if TYPE_CHECKING:  # the service process never loads the config models: see DaemonSettings
    from agent.config import AgentConfig

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
CONTROL_SOCKET_FILE = "control.sock"
CONTROL_GROUP = "telemaint"
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
CONTROL_TIMEOUT_S = 120.0
MAX_CONTROL_REQUEST_BYTES = 64 * 1024
# Commands the server may ask for: a fixed allowlist, never a shell.
ALLOWED_COMMANDS = ("run_checks", "collect_inventory")
M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
MALLOC_ARENAS = 2
INVENTORY_TIMEOUT_S = 900.0
HEALTH_TIMEOUT_S = 300.0
CHILD_OUTPUT_CAP_BYTES = 32 * 1024 * 1024
HTTP_UNAUTHORIZED = 401
HTTP_TOO_MANY_REQUESTS = 429
# The server will never take this batch as it is: too large, or malformed.
HTTP_REFUSED_AS_IS = (413, 422)
BATCH_MAX_BYTES = 4 * 1024 * 1024
HELD_RETRY_S = 24 * 3600.0
# After a 429 (the device's daily storage budget is used up): 5 minutes, doubling up to an hour.
OVER_BUDGET_BACKOFF_BASE_S = 300.0
OVER_BUDGET_BACKOFF_MAX_S = 3600.0
SETTINGS_PIPE_MAX_BYTES = 60 * 1024  # below the pipe's buffer, so the write cannot block
NOT_ENROLLED = "not enrolled"


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's per-thread malloc arenas: the daemon's threads are mostly idle, and every
    arena keeps freed memory resident (a few MB each)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Give memory freed by a job back to the system (glibc ``malloc_trim``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


@dataclass(frozen=True)
class DaemonSettings:
    """What the running service needs of ``agent.yaml``, as plain data.

    ``telemaint run`` validates the whole file with the config models, then hands these settings
    to a fresh interpreter (:func:`exec_service`) that never loads pydantic: the service stays
    small, and collectors and checks run in child processes that read the file themselves.
    """

    config_path: str
    state_dir: str
    server_url: str | None = None
    ca_file: str | None = None
    proxy: str | None = None
    timeout_s: float = 30.0
    heartbeat_s: float = 60.0
    inventory_s: float = 6 * 3600.0
    health_s: float = 300.0
    commands_s: float = 30.0
    jitter: float = 0.1
    log_level: str = "info"

    @classmethod
    def from_config(cls, config: AgentConfig) -> DaemonSettings:
        server, intervals = config.server, config.server.intervals
        return cls(
            config_path=str(Path(config.source).resolve()) if config.source else "",
            state_dir=str(Path(config.state_dir).resolve()),
            server_url=server.url,
            ca_file=str(server.ca_file) if server.ca_file else None,
            proxy=server.proxy,
            timeout_s=server.timeout,
            heartbeat_s=intervals.heartbeat,
            inventory_s=intervals.inventory,
            health_s=intervals.health,
            commands_s=intervals.commands,
            jitter=intervals.jitter,
            log_level=config.log_level,
        )

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def outbox_path(state_dir: Path) -> Path:
    return state_dir / OUTBOX_FILE


def control_socket_path(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET_FILE


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory (0750, group ``telemaint`` when that group exists)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(state_dir, -1, grp.getgrnam(CONTROL_GROUP).gr_gid)


def make_uplink(settings: DaemonSettings, credentials: Credentials) -> Uplink:
    return Uplink(
        settings.server_url or credentials.server_url,
        token=credentials.token,
        ca_file=settings.ca_file or credentials.ca_file,
        proxy=settings.proxy,
        timeout_s=settings.timeout_s,
    )


@dataclass
class Backoff:
    """Exponential backoff with jitter: 5 s, 10 s, 20 s ... up to 5 minutes; reset on success."""

    base_s: float = BACKOFF_BASE_S
    max_s: float = BACKOFF_MAX_S
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.base_s * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self.failures = 0


@dataclass
class DeliveryResult:
    sent: int = 0
    remaining: int = 0
    error: str | None = None
    http_status: int | None = None  # the server's answer when it refused the batch
    held: int = 0  # reports kept in the outbox but not sent: the server refuses them


class HeldReports:
    """Reports the server will never take as they are: answered 413 or 422 when sent alone, or
    not JSON at all (NaN, Infinity). They stay in the outbox (nothing unacknowledged is deleted)
    but are not sent again for ``retry_after_s`` (or until the daemon restarts), so that they do
    not block the reports behind them; the server's limits may have been raised by then."""

    def __init__(self, retry_after_s: float = HELD_RETRY_S):
        self.retry_after_s = retry_after_s
        self._until: dict[str, tuple[float, int]] = {}  # report id -> (monotonic deadline, bytes)

    def hold(self, report: Report, reason: str) -> None:
        """Keep ``report`` back, logging why."""
        size = len(json.dumps(report.payload, separators=(",", ":")))
        self._until[report.id] = (time.monotonic() + self.retry_after_s, size)
        logger.error(
            "report %s (%s, %d bytes) held back, retried in %.0f h: %s",
            report.id,
            report.kind,
            size,
            self.retry_after_s / 3600,
            reason,
        )

    def holds(self, report_id: str) -> bool:
        """Return True while ``report_id`` is held back."""
        entry = self._until.get(report_id)
        if entry is not None and entry[0] <= time.monotonic():
            del self._until[report_id]
            return False
        return entry is not None

    @property
    def count(self) -> int:
        return len(self._until)

    @property
    def bytes(self) -> int:
        return sum(size for _deadline, size in self._until.values())


def _sendable(report: Report) -> bool:
    try:
        json.dumps(report.payload, allow_nan=False)
    except ValueError:
        return False
    return True


def _next_batch(outbox: Outbox, limit: int, held: HeldReports) -> list[Report]:
    """Return the oldest reports not held back: at most ``limit`` and about
    :data:`BATCH_MAX_BYTES` of payload (always at least one when there is one)."""
    candidates = outbox.peek(limit=limit + held.count, max_bytes=BATCH_MAX_BYTES + held.bytes)
    batch = [r for r in candidates if not held.holds(r.id)][:limit]
    if not batch and len(candidates) < outbox.depth()["total"]:
        # Held reports came first and the next one is larger than a batch: it goes alone.
        more = outbox.peek(limit=len(candidates) + 1, max_bytes=sys.maxsize)
        batch = [r for r in more if not held.holds(r.id)][:1]
    return batch


def flush_outbox(
    outbox: Outbox, uplink: Uplink, stop: threading.Event | None = None, held: HeldReports | None = None
) -> DeliveryResult:
    """Send queued reports in order, batch by batch, deleting each one the server acknowledges.

    A batch the server refuses as it is (413 too large, 422 malformed) is sent again in halves;
    a report refused alone is held back (see :class:`HeldReports`) and the ones behind it go on.
    Stops at any other failure (unreachable, 429 over budget, 5xx) and returns what happened
    (never raises for the server's faults); ``held`` carries held reports from call to call.
    """
    held = held if held is not None else HeldReports()
    result = DeliveryResult()
    limit = MAX_BATCH_REPORTS
    while not (stop and stop.is_set()):
        batch = _next_batch(outbox, limit, held)
        if not batch:
            break
        unsendable = [r for r in batch if not _sendable(r)]
        for report in unsendable:
            held.hold(report, "its payload is not JSON (NaN or Infinity)")
        if unsendable:
            continue
        try:
            acked = set(uplink.send_reports([r.as_wire() for r in batch]))
        except UplinkError as exc:
            if exc.status in HTTP_REFUSED_AS_IS:
                if len(batch) > 1:
                    limit = max(1, len(batch) // 2)
                else:
                    held.hold(batch[0], str(exc))
                continue
            result.error, result.http_status = str(exc), exc.status
            break
        result.sent += outbox.ack(r.id for r in batch if r.id in acked)
        if not acked.intersection(r.id for r in batch):
            result.error = "the server acknowledged none of the reports sent"
            break
        limit = min(MAX_BATCH_REPORTS, limit * 2)
    result.remaining = outbox.depth()["total"]
    result.held = held.count
    return result


@dataclass
class DaemonState:
    started_at: str = field(default_factory=utc_now_iso)
    last_contact_at: str | None = None
    last_sent_at: str | None = None
    last_error: str | None = None
    server_reachable: bool | None = None
    health_status: str | None = None
    health_at: str | None = None
    held_reports: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


class AgentDaemon:
    """The running agent. :meth:`run` blocks until :meth:`stop` (SIGTERM/SIGINT)."""

    def __init__(self, settings: DaemonSettings):
        self.settings = settings
        self.state_dir = settings.state_path
        prepare_state_dir(self.state_dir)
        self.outbox = Outbox(outbox_path(self.state_dir))
        self.state = DaemonState()
        self._credentials_problem: str | None = None
        if key_problem := check_device_key(self.state_dir):
            logger.error("%s", key_problem)
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self._server_back = threading.Event()
        self._send_lock = threading.RLock()
        self._held = HeldReports()
        self._uplink: Uplink | None = None
        self._uplink_lock = threading.Lock()
        # A job that ends after the stop (a check child not waited for) finds the outbox closed.
        self._outbox_lock = threading.Lock()
        self._outbox_closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        limit_malloc_arenas()
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        settings = self.settings
        scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        now = datetime.now(UTC)
        for name, interval_s, func in (
            ("heartbeat", settings.heartbeat_s, self.job_heartbeat),
            ("inventory", settings.inventory_s, self.job_inventory),
            ("health", settings.health_s, self.job_health),
            ("commands", settings.commands_s, self.job_commands),
        ):
            scheduler.add_job(
                self._guarded(name, func),
                IntervalTrigger(seconds=interval_s, jitter=interval_s * settings.jitter, timezone=UTC),
                id=name,
                name=name,
                next_run_time=now,
            )
        sender = threading.Thread(target=self._sender_loop, name="sender", daemon=True)
        control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self._install_signal_handlers()
        self._queue_event("agent_started", f"telemaint agent started (pid {os.getpid()})")
        scheduler.start()
        sender.start()
        control.start()
        logger.info("telemaint agent running; state in %s", self.state_dir)
        self._stop.wait()
        logger.info("stopping")
        # A job still running (a check child) is not waited for; the outbox is transactional.
        scheduler.shutdown(wait=False)
        self._wake_sender.set()
        sender.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            control_socket_path(self.state_dir).unlink()
        with self._outbox_lock:
            self._outbox_closed = True
            self.outbox.close()

    def stop(self, *_: object) -> None:
        self._stop.set()
        self._wake_sender.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)

    def _guarded(self, name: str, func: Any) -> Any:
        def job() -> None:
            started = time.monotonic()
            record = self.state.jobs.setdefault(name, {})
            try:
                func()
                record.update(last_ok_at=utc_now_iso(), last_error=None)
            except Exception as exc:
                logger.error("job %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
                record.update(last_error=f"{type(exc).__name__}: {exc}", last_error_at=utc_now_iso())
            record["last_duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            gc.collect()
            release_free_memory()

        return job

    # --- jobs --------------------------------------------------------------------------------

    def queue(self, kind: str, payload: dict[str, Any]) -> str:
        """Put a report in the outbox and wake the sender; return its UUID."""
        report = new_report(kind, payload)
        with self._outbox_lock:
            if self._outbox_closed:
                logger.info("stopping: a %s report finished after the stop is not queued", kind)
                return report.id
            self.outbox.put(report)
        logger.debug("queued %s report %s", kind, report.id)
        self._wake_sender.set()
        return report.id

    def _queue_event(self, event_type: str, message: str, **details: Any) -> None:
        event = {"time": utc_now_iso(), "type": event_type, "message": message, **details}
        self.queue("events", {"events": [event]})

    def job_heartbeat(self) -> None:
        self.queue(
            "heartbeat", heartbeat_document(self.settings.heartbeat_s, outbox_depth=self.outbox.depth()["total"])
        )

    def collect_in_child(self, args: list[str], timeout_s: float) -> dict[str, Any]:
        """Run ``telemaint ARGS --json`` in a child process and return its JSON document.

        Collectors and checks run apart from the daemon: a hung check or a leaking collector
        cannot stall or bloat the service, and the child is killed at ``timeout_s``.
        Raises RuntimeError when the child fails to produce its document.
        """
        if not self.settings.config_path:
            raise RuntimeError("the daemon needs its config file to run collectors")
        argv = [sys.executable, "-m", "agent.cli", *args, "--json", "--config", self.settings.config_path]
        result = run_command(
            argv,
            timeout_s=timeout_s,
            output_cap_bytes=CHILD_OUTPUT_CAP_BYTES,
            env={STATE_DIR_ENV: str(self.state_dir)},
            merge_stderr=False,
            inherit_stderr=True,
        )
        if result.timed_out or result.truncated:
            raise RuntimeError(f"telemaint {args[0]} {result.error or 'output exceeded its cap'}")
        try:
            return json.loads(result.output)
        except ValueError:
            raise RuntimeError(f"telemaint {args[0]} exited {result.status} without its JSON document") from None

    def job_inventory(self) -> None:
        self.queue("inventory", self.collect_in_child(["inventory"], INVENTORY_TIMEOUT_S))

    def job_health(self) -> dict[str, Any]:
        health = self.collect_in_child(["check"], HEALTH_TIMEOUT_S)
        previous = self.state.health_status
        self.state.health_status = health["status"]
        self.state.health_at = health["generated_at"]
        self.queue("health", health)
        if previous is not None and previous != health["status"]:
            self._queue_event(
                "health_changed", f"health {previous} -> {health['status']}", old=previous, new=health["status"]
            )
        return health

    def job_commands(self) -> None:
        uplink = self._get_uplink()
        if uplink is None:
            return
        try:
            commands = uplink.fetch_commands()
        except UplinkError as exc:
            self._note_failure(str(exc), exc.status)
            return
        self._note_contact()
        for command in commands:
            self._run_server_command(uplink, command)

    def _run_server_command(self, uplink: Uplink, command: dict[str, Any]) -> None:
        kind = command.get("kind")
        command_id = command.get("id")
        logger.info("server command %s: %s", command_id, kind)
        if kind not in ALLOWED_COMMANDS:
            status, message, result = "failed", f"command {kind!r} is not allowed on this device", None
        else:
            try:
                if kind == "run_checks":
                    health = self.job_health()
                    status = "done"
                    message = f"{health['status']}: {len(health['checks'])} checks"
                    result = {"status": health["status"], "generated_at": health["generated_at"]}
                else:
                    self.job_inventory()
                    status, message, result = "done", "inventory collected and queued", None
            except Exception as exc:
                status, message, result = "failed", f"{type(exc).__name__}: {exc}", None
        # Deliver the reports first, so support sees the data when the command shows done.
        self._deliver_now(uplink)
        try:
            uplink.send_command_result(command_id, status, message, result)
        except UplinkError as exc:
            logger.warning("could not report the result of command %s: %s", command_id, exc)

    # --- delivery ----------------------------------------------------------------------------

    def _get_uplink(self) -> Uplink | None:
        with self._uplink_lock:
            if self._uplink is None:
                try:
                    credentials = load_credentials(self.state_dir)
                except CredentialsError as exc:
                    self._note_credentials_problem(str(exc))
                    return None
                self._note_credentials_problem(None)
                if credentials is None:
                    return None
                self._uplink = make_uplink(self.settings, credentials)
            return self._uplink

    def _note_credentials_problem(self, problem: str | None) -> None:
        """Log a broken ``credentials.json`` once (the daemon reads it again at every poll and
        runs on, unenrolled, until it is fixed), and log when it is readable again."""
        if problem == self._credentials_problem:
            return
        if problem:
            logger.error("%s; not sending reports until then", problem)
        else:
            logger.info("%s is readable again", self.state_dir / CREDENTIALS_FILE)
        self._credentials_problem = problem

    def _note_contact(self) -> None:
        if self.state.server_reachable is False:
            self._server_back.set()
            self._wake_sender.set()
        self.state.server_reachable = True
        self.state.last_contact_at = utc_now_iso()
        self.state.last_error = None

    def _note_failure(self, error: str, http_status: int | None = None) -> None:
        """Record a failed exchange; ``http_status`` is set when the server answered."""
        self.state.server_reachable = http_status is not None
        self.state.last_error = error
        if http_status == HTTP_UNAUTHORIZED:
            # The token was replaced (enrolled again) or revoked: read the credentials anew.
            with self._uplink_lock:
                self._uplink = None

    def _deliver_now(self, uplink: Uplink) -> DeliveryResult:
        with self._send_lock:
            result = flush_outbox(self.outbox, uplink, self._stop, self._held)
        self.state.held_reports = result.held
        if result.error:
            self._note_failure(result.error, result.http_status)
        else:
            self._note_contact()
        if result.sent:
            self.state.last_sent_at = utc_now_iso()
        return result

    def _sender_loop(self) -> None:
        backoff = Backoff()
        over_budget = Backoff(base_s=OVER_BUDGET_BACKOFF_BASE_S, max_s=OVER_BUDGET_BACKOFF_MAX_S)
        retry_at: float | None = None
        while not self._stop.is_set():
            self._wake_sender.wait(timeout=None if retry_at is None else max(0.0, retry_at - time.monotonic()))
            if self._stop.is_set():
                break
            self._wake_sender.clear()
            if retry_at is not None and time.monotonic() < retry_at and not self._server_back.is_set():
                continue  # new reports do not cut a backoff short; the server answering again does
            self._server_back.clear()
            uplink = self._get_uplink()
            if uplink is None:
                retry_at = None
                continue
            try:
                result = self._deliver_now(uplink)
            except Exception as exc:  # a bug must not stop delivery for good
                logger.exception("sender failed")
                result = DeliveryResult(error=f"{type(exc).__name__}: {exc}")
            if result.error:
                delay = (over_budget if result.http_status == HTTP_TOO_MANY_REQUESTS else backoff).next_delay()
                retry_at = time.monotonic() + delay
                logger.warning(
                    "delivery failed (%s); %d queued; retrying in %.0fs", result.error, result.remaining, delay
                )
            else:
                backoff.reset()
                over_budget.reset()
                retry_at = None

    # --- control socket ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        running = {"running": True, "pid": os.getpid(), "started_at": self.state.started_at}
        return status_document(self.state_dir, self.settings.server_url, self.outbox.depth(), running, self.state)

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        if action == "status":
            return {"ok": True, "status": self.status()}
        if action == "report":
            kind = request.get("kind", "heartbeat")
            jobs = {"heartbeat": self.job_heartbeat, "inventory": self.job_inventory, "health": self.job_health}
            if kind not in jobs:
                return {"ok": False, "error": f"unknown report kind {kind!r}"}
            jobs[kind]()
            uplink = self._get_uplink()
            result = self._deliver_now(uplink) if uplink else None
            return delivery_reply(self.outbox, result, self._credentials_problem or NOT_ENROLLED)
        if action == "ack_state_problems":
            return {"ok": True, "acknowledged": acknowledge_state_problems(self.state_dir)}
        return {"ok": False, "error": f"unknown action {action!r}"}

    def _control_loop(self) -> None:
        path = control_socket_path(self.state_dir)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            server.bind(str(path))
        finally:
            os.umask(old_umask)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, -1, grp.getgrnam(CONTROL_GROUP).gr_gid)
        server.listen(8)
        server.settimeout(1.0)
        with server:
            while not self._stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()

    def _serve_client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CONTROL_TIMEOUT_S)
            try:
                if not peer_allowed(conn):
                    reply: dict[str, Any] = {"ok": False, "error": "permission denied: root or group telemaint only"}
                else:
                    data = _read_line(conn)
                    reply = self.handle_request(json.loads(data))
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")


def status_document(
    state_dir: Path,
    server_url: str | None,
    outbox_depth: dict[str, int],
    daemon: dict[str, Any] | None = None,
    state: DaemonState | None = None,
) -> dict[str, Any]:
    """Return ``telemaint status --json``: from the running daemon's ``state``, or (without one)
    what the state directory tells."""
    credentials, problems = state_files_status(state_dir)
    state = state or DaemonState(started_at="")
    return {
        "daemon": daemon or {"running": False},
        "enrolled": credentials is not None,
        "device_id": credentials.device_id if credentials else None,
        "server_url": server_url or (credentials.server_url if credentials else None),
        "server_reachable": state.server_reachable,
        "last_contact_at": state.last_contact_at,
        "last_sent_at": state.last_sent_at,
        "last_error": state.last_error,
        "outbox": outbox_depth,
        "held_reports": state.held_reports,
        "health": {"status": state.health_status, "at": state.health_at},
        "jobs": state.jobs,
        "state_problems": problems,
    }


def state_files_status(state_dir: Path) -> tuple[Credentials | None, list[dict[str, Any]]]:
    """Return the credentials (None when not enrolled or broken) and the state problems:
    broken identity files (``until: fixed``) and recorded ones such as an outbox reset
    (``until: acknowledged``, see :func:`agent.outbox.acknowledge_state_problems`)."""
    problems: list[dict[str, Any]] = []
    try:
        credentials = load_credentials(state_dir)
    except CredentialsError as exc:
        credentials = None
        problems.append({"file": CREDENTIALS_FILE, "message": str(exc), "until": "fixed"})
    if key_problem := check_device_key(state_dir):
        problems.append({"file": PRIVATE_KEY_FILE, "message": key_problem, "until": "fixed"})
    problems += [{**problem, "until": "acknowledged"} for problem in read_state_problems(state_dir)]
    return credentials, problems


def delivery_reply(outbox: Outbox, result: DeliveryResult | None, unsent_reason: str = NOT_ENROLLED) -> dict[str, Any]:
    """Return the answer to "send a report now": ``{ok, sent, queued, error}``; ``result`` is
    None when nothing could be sent, for ``unsent_reason`` (not enrolled, broken credentials)."""
    if result is None:
        return {"ok": True, "sent": False, "queued": outbox.depth()["total"], "error": unsent_reason}
    error = result.error or (
        f"{result.held} report(s) held back: the server refuses them as they are" if result.held else None
    )
    return {"ok": True, "sent": error is None, "queued": result.remaining, "error": error}


def peer_allowed(conn: socket.socket) -> bool:
    """Return True when the peer is root, the daemon's own user, or in the ``telemaint`` group."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, os.geteuid()):
        return True
    try:
        group_id = grp.getgrnam(CONTROL_GROUP).gr_gid
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid == group_id or group_id in os.getgrouplist(user.pw_name, user.pw_gid)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_CONTROL_REQUEST_BYTES:
            raise ValueError("request too large")
    return data


def ask_daemon(state_dir: Path, request: dict[str, Any], timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, Any] | None:
    """Send ``request`` to the daemon keeping its state in ``state_dir``; return its reply, or
    None when no daemon is listening."""
    path = control_socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        client.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(_read_line(client) or b"null")


def exec_service(settings: DaemonSettings) -> None:
    """Replace this process with the service (same PID, for systemd), passing ``settings``
    through a pipe; the new interpreter loads only what the service needs. Does not return."""
    read_fd, write_fd = os.pipe()
    payload = json.dumps(asdict(settings)).encode()
    if len(payload) > SETTINGS_PIPE_MAX_BYTES:
        raise ValueError("daemon settings too large for the pipe")
    os.write(write_fd, payload)
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "agent.daemon", "--settings-fd", str(read_fd)])  # noqa: S606


def main(argv: list[str] | None = None) -> int:
    """Entry point of the service process started by :func:`exec_service`."""
    import argparse

    parser = argparse.ArgumentParser(prog="telemaint run", description="the telemaint agent service")
    parser.add_argument("--settings-fd", type=int, required=True)
    args = parser.parse_args(argv)
    with os.fdopen(args.settings_fd, "rb") as pipe:
        settings = DaemonSettings(**json.loads(pipe.read()))
    logging.basicConfig(level=settings.log_level.upper(), format="telemaint: %(levelname)s: %(message)s")
    if settings.log_level != "debug":
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        daemon = AgentDaemon(settings)
    except (OSError, sqlite3.Error) as exc:  # a broken outbox is reset; this is what remains
        logger.error("cannot open the agent's state in %s: %s", settings.state_dir, exc)
        return 1
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
