"""The documents the agent prints and reports: inventory, health and heartbeat.

Their JSON is stable (documented in the README); the server reads the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:  # the daemon uses this module without loading the config models
    from agent.config import AgentConfig


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def inventory_document(config: AgentConfig, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the named collectors (default: all) and return the inventory document."""
    from agent.collectors import COLLECTOR_NAMES, CollectContext, run_collectors

    context = CollectContext(config=config, state_dir=config.state_dir)
    results = run_collectors(list(names or COLLECTOR_NAMES), context)
    return {
        "agent_version": __version__,
        "generated_at": utc_now_iso(),
        "device": config.device.model_dump(),
        "collectors": {name: result.as_dict() for name, result in results.items()},
    }


def health_document(config: AgentConfig) -> dict[str, Any]:
    """Run the configured health checks and return the health document."""
    from agent.collectors.health import run_checks, worst_status

    results = run_checks(config.health)
    worst = worst_status(r.status for r in results)
    return {
        "generated_at": utc_now_iso(),
        "status": worst.name,
        "exit_code": int(worst),
        "checks": [r.as_dict() for r in results],
    }


def heartbeat_document(heartbeat_interval_s: float, **extra: Any) -> dict[str, Any]:
    """Return a heartbeat: the agent is alive, with its version and reporting interval."""
    return {
        "agent_version": __version__,
        "generated_at": utc_now_iso(),
        "heartbeat_interval_s": heartbeat_interval_s,
        **extra,
    }
