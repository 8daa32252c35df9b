"""Wires the agent together in one nursery and runs it until a signal."""

from __future__ import annotations

import gc
import signal
from typing import Any

import structlog
import trio

from agent.capabilities import Capabilities
from agent.config import Config
from agent.dispatcher import Dispatcher
from agent.events import EventBus
from agent.handlers import system
from agent.health import Health, Status
from agent.intake import Intake
from agent.registry import Registry
from agent.store import Store, count_by_status
from agent.transports import Transport
from agent.transports.http import HttpTransport
from agent.transports.spool import SpoolTransport

log = structlog.get_logger("agent.daemon")


def build_registry() -> Registry:
    """Every handler this agent ships."""
    return Registry(system.HANDLERS)


class Agent:
    """The running agent's parts, for the daemon and for tests."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = EventBus()
        self.registry = build_registry()
        self.store = Store(config.store_path)
        self.dispatcher = Dispatcher(
            self.store,
            self.registry,
            self.bus,
            max_concurrent=config.max_concurrent_jobs,
            default_timeout=config.default_timeout_seconds,
            max_timeout=config.max_timeout_seconds,
        )
        self.capabilities = Capabilities(config, self.registry)
        self.health = Health()
        self.health.add("store", self._store_health)
        self.intake = Intake(
            self.registry,
            self.store,
            self.dispatcher,
            self.bus,
            max_pending=config.max_pending_jobs,
            max_timeout=config.max_timeout_seconds,
            capabilities=self.capabilities,
            health=self.health,
        )
        self.transports: list[Transport] = []
        if config.spool.enabled:
            self.spool: SpoolTransport | None = SpoolTransport(config.spool_dir, config.spool)
            self.transports.append(self.spool)
        else:
            self.spool = None
        self.http: HttpTransport | None = None
        if config.http.enabled:
            # Checks the exposure rules (no open API off loopback) before anything starts.
            self.http = HttpTransport(config.http)
            self.transports.append(self.http)

    async def _store_health(self) -> tuple[Status, str, dict[str, Any]]:
        counts = await self.store.read(count_by_status)
        figures = {
            "queue_depth": self.dispatcher.queue_depth,
            "running": self.dispatcher.running_count,
            "jobs": counts,
        }
        return "healthy", "job store answers", figures

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; started() once every transport is taking jobs."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dispatcher.run)
                for transport in self.transports:
                    await nursery.start(transport.run, self.intake)
                log.info(
                    "agent.ready",
                    worker_id=self.config.worker_id,
                    operations=len(self.registry.operations),
                    max_concurrent_jobs=self.config.max_concurrent_jobs,
                    reruns=self.dispatcher.reruns,
                )
                task_status.started(self)
        finally:
            self.bus.close()
            self.store.close()


async def serve(config: Config) -> None:
    """The daemon's main: run the agent until SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Agent(config).run)
            # What start-up built lives as long as the process: keep it out of the
            # collector's full passes, which stalled requests for ~40 ms (bench/http.py).
            gc.freeze()
            async for signum in signals:
                log.info("agent.stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
