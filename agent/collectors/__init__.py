"""Collectors: one module per source of facts about the machine, registered by name.

A collector declares the fields it yields (description and unit), says whether its source is
present on this machine (:meth:`Collector.skip_reason`), and gathers. :func:`run_collectors` runs
them side by side; one that fails is reported in its result and never stops the others.
"""

from __future__ import annotations

import importlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from agent.config import AgentConfig

logger = logging.getLogger(__name__)

COLLECTOR_NAMES = ("system", "versions", "network", "logs")
MAX_PARALLEL_COLLECTORS = 4

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class Field:
    """One value a collector yields: ``path`` is dotted into its data (``memory.percent``);
    ``[]`` marks a list (``disks[].percent``)."""

    path: str
    description: str
    unit: str | None = None


@dataclass
class CollectContext:
    """What a collector may use: the validated config and the agent's state directory (for facts
    remembered between runs, such as the package list)."""

    config: AgentConfig
    state_dir: Path

    def state_file(self, name: str) -> Path:
        return self.state_dir / name


@dataclass
class CollectorResult:
    name: str
    status: Status
    data: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "duration_ms": round(self.duration_s * 1000, 1),
            "data": self.data,
        }


class Collector:
    """Base of every collector. Subclasses set ``name``, ``description`` and ``fields`` and
    implement :meth:`collect`; they override :meth:`skip_reason` when their source may be absent."""

    name: ClassVar[str]
    description: ClassVar[str]
    fields: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, context: CollectContext):
        self.context = context
        self.config = context.config

    def skip_reason(self) -> str | None:
        """Return why this collector cannot run on this machine, or None when it can."""
        return None

    def collect(self) -> dict[str, Any]:
        """Return the collected data; raise on failure (the runner records it)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Collector]] = {}


def register(cls: type[Collector]) -> type[Collector]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def get_collector(name: str) -> type[Collector]:
    """Return the collector class registered as ``name``, importing its module on first use.

    Raises KeyError for an unknown name.
    """
    if name not in REGISTRY:
        if name not in COLLECTOR_NAMES:
            raise KeyError(name)
        importlib.import_module(f"agent.collectors.{name}")
    return REGISTRY[name]


def run_collector(name: str, context: CollectContext) -> CollectorResult:
    """Run one collector and return its result; never raises."""
    started = time.monotonic()
    try:
        collector = get_collector(name)(context)
        reason = collector.skip_reason()
        if reason is not None:
            logger.info("collector %s skipped: %s", name, reason)
            return CollectorResult(name, "skipped", message=reason, duration_s=time.monotonic() - started)
        data = collector.collect()
        return CollectorResult(name, "ok", data, duration_s=time.monotonic() - started)
    except Exception as exc:
        logger.warning("collector %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
        return CollectorResult(
            name, "failed", message=f"{type(exc).__name__}: {exc}", duration_s=time.monotonic() - started
        )


def run_collectors(names: list[str] | tuple[str, ...], context: CollectContext) -> dict[str, CollectorResult]:
    """Run the named collectors side by side; return their results in the order asked."""
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_COLLECTORS, max(1, len(names)))) as pool:
        results = list(pool.map(lambda n: run_collector(n, context), names))
    return dict(zip(names, results, strict=True))
