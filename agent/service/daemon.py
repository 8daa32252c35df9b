"""The daemon's main: run the agent until a signal, reload on SIGHUP, drain on SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any

import structlog
import trio

from agent.config import Config
from agent.errors import AgentError
from agent.service.agent import Agent, build_registry
from agent.service.statelock import hold_state_lock
from agent.service.systemd import Notifier, Notify, feed_watchdog, monotonic_usec, report_status
from agent.transports import TRANSPORTS, TransportSpec

# Agent and build_registry are imported from here by tests and tools too.
__all__ = ["Agent", "build_registry", "serve"]

log = structlog.get_logger("agent.service.daemon")


async def _reload(agent: Agent, load_config: Callable[[], Config] | None, notify: Notify) -> None:
    if load_config is None:
        log.warning("agent.reload_unsupported", reason="no way to read the config again")
        return
    await notify.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
    try:
        config = await trio.to_thread.run_sync(load_config)
    except AgentError as exc:
        # A mistake in the file: its message says which key; a traceback would not help.
        log.error("agent.reload_failed", error=exc.message, **exc.details)  # noqa: TRY400
    else:
        await agent.reload(config)
    await notify.send("READY=1", f"STATUS={agent.status_line()}")


async def _hurry_on_signal(agent: Agent, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.warning("agent.reload_ignored", reason="draining for shutdown")
            continue
        log.warning("agent.drain_cut_short", signal=signal.Signals(signum).name)
        agent.hurry()


async def serve(
    config: Config,
    *,
    load_config: Callable[[], Config] | None = None,
    notify: Notify | None = None,
    transports: Iterable[TransportSpec[Any]] = TRANSPORTS,
    task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's main: run the agent until SIGTERM or SIGINT, then drain.

    SIGHUP applies `load_config()` (the configuration read again the way the
    command line first read it). A second SIGTERM/SIGINT ends the drain at once.
    `notify` defaults to systemd's notification socket, if the environment names one.
    `transports` is the agent's transport table (see Agent).
    """
    build = partial(Agent, transports=tuple(transports))
    # Before the store opens: a second agent on this directory would run its jobs again.
    with hold_state_lock(config.state_dir):
        if notify is not None:
            await _serve(config, build, load_config, notify, task_status)
            return
        notifier = Notifier.from_environment(os.environ)
        try:
            await _serve(config, build, load_config, notifier, task_status)
        finally:
            notifier.close()


async def _serve(
    config: Config,
    build: Callable[[Config], Agent],
    load_config: Callable[[], Config] | None,
    notifier: Notify,
    task_status: trio.TaskStatus[Agent],
) -> None:
    began = trio.current_time()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await notifier.send("STATUS=Starting: recovering jobs, scanning the spool")
            agent: Agent = await nursery.start(build(config).run)
            # What start-up built lives as long as the process: keep it out of the
            # collector's full passes, which stalled requests for ~40 ms (bench/http.py).
            # `hostagent run` starts with the collector off (agent.cli.command): start-up's few
            # thousand garbage objects are frozen with the rest, cheaper than the ~50 ms
            # full collection that would find them.
            gc.freeze()
            gc.enable()
            # Every child said started: store open, spool scanned, listeners bound.
            status = agent.status_line()
            await notifier.send("READY=1", f"STATUS={status}")
            log.info("agent.notified_ready", startup_seconds=round(trio.current_time() - began, 3))
            every = config.service.status_interval_seconds
            nursery.start_soon(
                partial(report_status, notifier, agent.status_line, every=every, last=status)
            )
            if notifier.watchdog_interval is not None:
                nursery.start_soon(
                    partial(feed_watchdog, notifier, agent.wedged, every=notifier.watchdog_interval)
                )
            task_status.started(agent)
            async for signum in signals:
                if signum != signal.SIGHUP:
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    break
                await _reload(agent, load_config, notifier)
            await notifier.send(
                "STOPPING=1", f"STATUS=Draining: {agent.dispatcher.running_count} running"
            )
            async with trio.open_nursery() as draining:
                draining.start_soon(_hurry_on_signal, agent, signals)
                await agent.drain()
                draining.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
