"""The logs collector against a real journal file: entries written in journal export format,
turned into a .journal file by systemd-journal-remote, read back through journalctl --file.
(PID 1 is not systemd on these machines, so there is no live journal to read.)"""

import struct
import subprocess
import time
import uuid

import pytest

from agent.collectors import CollectContext, run_collector
from agent.config import AgentConfig
from tests.realparts import require

pytestmark = pytest.mark.integration

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
BINARY_MESSAGE = b"firmware image \xff\xfe checksum failed\x00 at block 7"
NOW_US = int(time.time() * 1_000_000)
BOOT_ID = uuid.uuid4().hex

# (seconds ago, priority, unit, identifier, pid, message)
ENTRIES = [
    (2 * 86400, 3, "camera.service", "camd", 401, "error: old fault outside the window"),
    (50, 3, "camera.service", "camd", 401, "error: sensor timeout on channel 2"),
    (40, 6, "camera.service", "camd", 401, "frame rate 30 fps"),
    (30, 4, "plc.service", "plcd", 812, "temperature high: 71 C"),
    (20, 2, "plc.service", "fwupd-tb", 990, BINARY_MESSAGE),
    (10, 4, None, "kernel", None, "usb 1-1: reset high-speed USB device"),
]


def export_format(entries) -> bytes:
    """Journal export format: FIELD=value lines, a blank line after each entry; a value that is
    not plain text is written as FIELD, newline, its length as 64-bit little-endian, the bytes."""
    out = bytearray()
    for monotonic, (ago_s, priority, unit, identifier, pid, message) in enumerate(entries, 1):
        fields = [
            ("__REALTIME_TIMESTAMP", str(NOW_US - ago_s * 1_000_000)),
            ("__MONOTONIC_TIMESTAMP", str(monotonic * 1_000_000)),
            ("_BOOT_ID", BOOT_ID),
            ("PRIORITY", str(priority)),
            ("SYSLOG_IDENTIFIER", identifier),
            ("MESSAGE", message),
        ]
        if unit is not None:
            fields.append(("_SYSTEMD_UNIT", unit))
        if pid is not None:
            fields.append(("_PID", str(pid)))
        for name, value in fields:
            if isinstance(value, bytes):
                out += name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
            else:
                out += f"{name}={value}\n".encode()
        out += b"\n"
    return bytes(out)


@pytest.fixture(scope="module")
def journal_file(tmp_path_factory):
    require("journalctl", "systemd")
    remote = require(JOURNAL_REMOTE, "systemd-journal-remote")
    out = tmp_path_factory.mktemp("journal") / "equipment.journal"
    done = subprocess.run([remote, "-o", str(out), "-"], input=export_format(ENTRIES), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert out.is_file()
    return out


def collect_journal(tmp_path, journal_file, **journal):
    config = AgentConfig.model_validate({"collect": {"logs": {"journal": {"files": [str(journal_file)], **journal}}}})
    result = run_collector("logs", CollectContext(config, tmp_path / "state"))
    assert result.status == "ok", result.message
    return result.data


def test_journal_entries_come_back_with_units_priorities_and_decoded_binary(tmp_path, journal_file):
    data = collect_journal(tmp_path, journal_file)
    journal = data["journal"]
    assert journal["available"] is True
    assert journal["error"] is None
    assert journal["malformed"] == 0
    summary = [(e["priority"], e["priority_name"], e["unit"], e["identifier"], e["pid"]) for e in journal["entries"]]
    assert summary == [
        (3, "err", "camera.service", "camd", 401),
        (4, "warning", "plc.service", "plcd", 812),
        (2, "crit", "plc.service", "fwupd-tb", 990),
        (4, "warning", None, "kernel", None),
    ]
    messages = [e["message"] for e in journal["entries"]]
    assert messages[0] == "error: sensor timeout on channel 2"
    assert messages[2] == BINARY_MESSAGE.decode("utf-8", errors="replace")
    assert "\ufffd\ufffd checksum failed\x00 at block 7" in messages[2]
    assert journal["count"] == 4
    expected_time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((NOW_US - 50_000_000) // 1_000_000))
    assert journal["entries"][0]["time"].startswith(expected_time)
    assert journal["entries"][0]["time"].endswith("Z")

    # "error: sensor timeout" and "checksum failed" match the default error patterns.
    assert journal["error_count"] == 2
    assert [e["error"] for e in journal["entries"]] == [True, False, True, False]
    assert data["summary"] == {"errors": 2, "by_source": {"journal": 2}}


def test_priority_filter(tmp_path, journal_file):
    errors_only = collect_journal(tmp_path, journal_file, priority="err")["journal"]
    assert [e["priority"] for e in errors_only["entries"]] == [3, 2]
    everything = collect_journal(tmp_path, journal_file, priority="debug")["journal"]
    assert "frame rate 30 fps" in [e["message"] for e in everything["entries"]]
    assert everything["count"] == 5


def test_since_window_units_and_line_limit(tmp_path, journal_file):
    week = collect_journal(tmp_path, journal_file, since="7d")["journal"]
    assert week["entries"][0]["message"] == "error: old fault outside the window"
    plc = collect_journal(tmp_path, journal_file, units=["plc.service"])["journal"]
    assert {e["unit"] for e in plc["entries"]} == {"plc.service"}
    assert plc["count"] == 2
    newest = collect_journal(tmp_path, journal_file, max_lines=1)["journal"]
    assert [e["message"] for e in newest["entries"]] == ["usb 1-1: reset high-speed USB device"]
