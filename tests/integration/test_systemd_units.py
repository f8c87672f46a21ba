"""The shipped systemd units parse cleanly (`systemd-analyze verify`): no unknown keys or bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.realparts import require

UNITS = Path(__file__).parents[2] / "systemd"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(unit, tmp_path):
    analyze = require("systemd-analyze", "systemd")
    text = (UNITS / unit).read_text()
    # Point ExecStart at the installed commands of this checkout.
    text = text.replace("/usr/bin/telemaint-server", str(BIN / "telemaint-server"))
    text = text.replace("/usr/bin/telemaint ", f"{BIN / 'telemaint'} ")
    (tmp_path / unit).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == []
    assert result.returncode == 0
