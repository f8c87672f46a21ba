"""The one way telemaint runs an external command.

No shell, a timeout that kills the whole process group, an output cap that keeps the tail,
``LC_ALL=C.UTF-8``; the result says what happened instead of raising.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TIMEOUT_STATUS = 124
NOT_EXECUTABLE_STATUS = 126
NOT_FOUND_STATUS = 127
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_OUTPUT_CAP_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 65536
SECRET_ARG_MARKERS = ("password", "passwd", "token", "secret", "key=")


@dataclass(frozen=True)
class CommandResult:
    """What a command did: exit status (124 on timeout, 126/127 when it could not start),
    its combined output (the tail, when over the cap), whether that was cut, and how long it ran.
    """

    argv: tuple[str, ...]
    status: int
    output: str
    truncated: bool
    duration_s: float
    timed_out: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    def as_dict(self) -> dict:
        return {
            "command": mask_command(self.argv),
            "status": self.status,
            "output": self.output,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
            "duration_ms": round(self.duration_s * 1000, 1),
            "error": self.error,
        }


def mask_command(argv: Sequence[str]) -> str:
    """Return the command line for logs, with values of secret-looking arguments masked."""
    shown: list[str] = []
    mask_next = False
    for arg in argv:
        lowered = arg.lower()
        if mask_next:
            shown.append("***")
            mask_next = False
        elif "=" in arg and any(m in lowered.split("=", 1)[0] for m in SECRET_ARG_MARKERS):
            shown.append(arg.split("=", 1)[0] + "=***")
        elif lowered.startswith("-") and any(m.rstrip("=") in lowered for m in SECRET_ARG_MARKERS):
            shown.append(arg)
            mask_next = True
        else:
            shown.append(arg)
    return " ".join(shown)


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment commands run with: ours, in the C.UTF-8 locale, plus ``extra``."""
    env = dict(os.environ)
    env.pop("LANGUAGE", None)
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run_command(
    argv: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    merge_stderr: bool = True,
    inherit_stderr: bool = False,
) -> CommandResult:
    """Run ``argv`` without a shell and return its :class:`CommandResult`; never raises for the
    command's own failures. On timeout the command's process group is killed and the status is 124.
    With ``merge_stderr`` false, stderr is discarded, or goes to our own stderr with ``inherit_stderr``.
    """
    argv = tuple(str(a) for a in argv)
    if not argv:
        raise ValueError("empty command")
    logger.debug("running %s (timeout %.1fs)", mask_command(argv), timeout_s)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else None if inherit_stderr else subprocess.DEVNULL,
            env=command_env(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        return _failed_to_start(argv, NOT_FOUND_STATUS, f"command not found: {exc.filename}", started)
    except PermissionError as exc:
        return _failed_to_start(argv, NOT_EXECUTABLE_STATUS, f"not executable: {exc.filename}", started)
    except OSError as exc:
        return _failed_to_start(argv, NOT_EXECUTABLE_STATUS, f"cannot run: {exc}", started)

    tail = bytearray()
    truncated = False
    timed_out = False
    deadline = started + timeout_s
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not selector.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), READ_CHUNK_BYTES)
            if not chunk:
                break
            tail += chunk
            if len(tail) > output_cap_bytes:
                del tail[: len(tail) - output_cap_bytes]
                truncated = True
    if timed_out:
        _kill_group(proc)
    proc.stdout.close()
    try:
        status = proc.wait(timeout=max(0.0, deadline - time.monotonic()) if not timed_out else 5)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait()
    if timed_out:
        status = TIMEOUT_STATUS
    elif status < 0:
        status = 128 - status
    duration = time.monotonic() - started
    output = bytes(tail).decode("utf-8", errors="replace")
    if truncated:
        # The cut may fall inside a line; drop the partial first line.
        newline = output.find("\n")
        if 0 <= newline < len(output) - 1:
            output = output[newline + 1 :]
    error = f"timed out after {timeout_s:g}s" if timed_out else None
    if timed_out:
        logger.warning("%s %s", mask_command(argv), error)
    return CommandResult(argv, status, output, truncated, duration, timed_out, error)


def _failed_to_start(argv: tuple[str, ...], status: int, error: str, started: float) -> CommandResult:
    logger.debug("%s: %s", mask_command(argv), error)
    return CommandResult(argv, status, "", False, time.monotonic() - started, error=error)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
