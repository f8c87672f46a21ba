"""Real parts the integration tests need (sshd, apache2, plugins, ...): installed when missing.

Under CI=true a part that cannot be had fails the test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(executable: str, package: str) -> str:
    """Return the path of ``executable`` (a path or a name on PATH), apt-installing Debian
    ``package`` first when it is missing and we are root. Fails under CI, skips elsewhere."""
    found = _find(executable)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            subprocess.run(cmd, env=env, capture_output=True, check=False)
        found = _find(executable)
    if found is None:
        reason = f"{executable} (Debian package {package}) is not installed"
        if IN_CI:
            pytest.fail(reason + " and could not be installed")
        pytest.skip(reason)
    return found


def _find(executable: str) -> str | None:
    if "/" in executable:
        return executable if Path(executable).exists() else None
    return shutil.which(executable)
