"""structlog set-up: JSON lines for journald, or a console renderer for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from agent.service.journald import PrefixedLoggerFactory

_LEVELS = logging.getLevelNamesMapping()


class _LevelFilter:
    """Drops events below a level that can change while the agent runs (SIGHUP).

    A filtering bound logger fixes its level when a logger is first used
    (loggers are cached), so the level is checked here instead.
    """

    def __init__(self) -> None:
        self.level = logging.INFO

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = "error" if method_name == "exception" else method_name
        if _LEVELS.get(name.upper(), logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


_LEVEL_FILTER = _LevelFilter()


def set_log_level(level: str) -> None:
    """Change the level of every logger, including those already in use."""
    _LEVEL_FILTER.level = _LEVELS[level.upper()]


class _WorkerId:
    """Adds the agent's worker_id to every event (none when it is not known)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def __call__(
        self, logger: object, method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        if self.worker_id:
            event.setdefault("worker_id", self.worker_id)
        return event


def configure_logging(fmt: str = "json", level: str = "info", *, worker_id: str = "") -> None:
    """Log lines as `fmt`; each names the agent that wrote it (`worker_id`), so a fleet's
    log pipeline can tell agents apart."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    set_log_level(level)
    structlog.configure(
        processors=[
            _LEVEL_FILTER,
            structlog.contextvars.merge_contextvars,
            _WorkerId(worker_id),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        # <N> priority prefixes when stderr is the journal (agent/service/journald.py).
        logger_factory=PrefixedLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
