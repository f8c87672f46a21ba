"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def sleeper() -> Iterator[str]:
    """A real `sleep` process with a unique argument; yields that argument."""
    argument = f"3600.{uuid.uuid4().int % 10**9:09d}"
    proc = subprocess.Popen(["sleep", argument])
    try:
        yield argument
    finally:
        proc.kill()
        proc.wait()
