"""`make demo`'s script: the whole local stack comes up and the demo device reports."""

import subprocess
import sys
from pathlib import Path

from tests.processes import free_port

DEMO = Path(__file__).parents[2] / "scripts" / "demo.py"


def test_demo_stack_comes_up_and_the_device_reports(tmp_path):
    port = free_port()
    first = subprocess.run(
        [sys.executable, str(DEMO), "--dir", str(tmp_path), "--port", str(port), "--check"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"dashboard: http://127.0.0.1:{port}/" in first.stdout
    assert "log in as: admin / " in first.stdout
    assert "demo device reported: health " in first.stdout
    # A second run reuses the enrolled agent and the admin password.
    again = subprocess.run(
        [sys.executable, str(DEMO), "--dir", str(tmp_path), "--port", str(port), "--check"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "enrolled as device" not in again.stdout
    password = (tmp_path / "admin-password").read_text().strip()
    assert f"log in as: admin / {password}" in again.stdout
