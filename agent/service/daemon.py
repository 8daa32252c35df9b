"""Wires the agent together in one nursery and runs it until a signal."""

from __future__ import annotations

import gc
import inspect
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any, Protocol, runtime_checkable

import structlog
import trio

from agent.config import Config, restart_keys
from agent.core import metrics
from agent.core import periodic as background
from agent.core.capabilities import Capabilities
from agent.core.diskspace import SpaceFloor
from agent.core.dispatcher import Dispatcher
from agent.core.events import EventBus
from agent.core.health import Health, Status
from agent.core.intake import Intake
from agent.core.jobstore import JobStore
from agent.core.registry import Handler, Registry
from agent.core.services import Services
from agent.errors import AgentError
from agent.handlers import guestkit, image, network, storage, system, vm, vm_screen, vm_snapshot
from agent.handlers.storage_roots import refresh_pool_roots
from agent.hypervisor import LibvirtConnection
from agent.hypervisor.facts import libvirt_facts
from agent.policy.paths import Policy
from agent.service.logs import set_log_level
from agent.service.statelock import hold_state_lock
from agent.service.systemd import Notifier, Notify, feed_watchdog, monotonic_usec, report_status
from agent.store import SqliteStore
from agent.store.retention import (
    ForgetsJobs,
    Prunable,
    Pruner,
    RetentionPolicy,
    remove_artifacts,
)
from agent.transports import TRANSPORTS, Transport, TransportSpec
from agent.view.reads import ResourceView

log = structlog.get_logger("agent.service.daemon")


@runtime_checkable
class Reloadable(Protocol):
    """A part of the agent (or a transport) that applies a reloaded config (SIGHUP)."""

    def reload(self, config: Config) -> object:
        """Apply `config`; may be a coroutine function."""


def build_registry() -> Registry:
    """Every handler this agent ships."""
    return Registry(
        (
            *system.HANDLERS,
            *vm.HANDLERS,
            *vm_snapshot.HANDLERS,
            *vm_screen.HANDLERS,
            *storage.HANDLERS,
            *network.HANDLERS,
            *image.HANDLERS,
            *guestkit.available_handlers(),  # only where libguestfs works (looks at files)
        )
    )


class Agent:
    """The running agent's parts, for the daemon and for tests."""

    def __init__(
        self,
        config: Config,
        *,
        extra_handlers: Iterable[Handler] = (),
        transports: Iterable[TransportSpec] = TRANSPORTS,
        store: JobStore | None = None,
    ) -> None:
        self.config = config
        self.bus = EventBus()
        self.policy = Policy(config)
        self.registry = build_registry()
        self.registry.policy = self.policy  # every handler's intake check (admit) uses it
        for extra in extra_handlers:
            self.registry.add(extra)
        self.store: JobStore = store if store is not None else SqliteStore(config.store_path)
        self.libvirt = LibvirtConnection(config.libvirt)
        self.services = Services()
        self.services.register(Config, config, name="config")
        self.services.register(Policy, self.policy, name="policy")
        self.services.register(
            type(self.store),
            self.store,
            name="store",
            ping=self._store_health,
            close=self.store.aclose,
        )
        self.services.register(
            LibvirtConnection, self.libvirt, name="libvirt", ping=self.libvirt.health
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.registry,
            self.bus,
            max_concurrent=config.max_concurrent_jobs,
            default_timeout=config.default_timeout_seconds,
            max_timeout=config.max_timeout_seconds,
            services=self.services,
        )
        self.capabilities = Capabilities(config, self.registry, self.bus)
        self.capabilities.contribute(partial(libvirt_facts, self.libvirt))
        self.capabilities.contribute(partial(refresh_pool_roots, self.libvirt, self.policy))
        self.libvirt.on_change(self.capabilities.request_refresh)
        self.health = Health()
        for name, check in self.services.pings().items():
            self.health.add(name, check)
        self.health.add("background", background.health)
        guestkit.contribute(self.capabilities, self.health)  # feature `inspect`, health `guestfs`
        image.contribute(self.capabilities, self.health)  # qemu-img facts, health `sandbox`
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
        self.intake.resources = ResourceView(self.libvirt, config)
        self.space = SpaceFloor(config.state_dir, config.state_min_free_bytes)
        self.intake.space = self.space
        self.pruner = (
            Pruner(
                self.store,
                lambda: RetentionPolicy(
                    self.config.store.retention_days, self.config.store.max_jobs
                ),
                every=lambda: self.config.store.prune_interval_seconds,
                forget=self._forget_jobs,
            )
            if isinstance(self.store, Prunable)
            else None
        )
        # Each transport the config turns on; it brings its health, features and outbox.
        self.transports: list[Transport] = []
        for spec in transports:
            transport = spec.build(config)
            if transport is None:
                continue
            self.transports.append(transport)
            self.health.add(transport.name, transport.health)
            self.capabilities.contribute(partial(_features_of, transport))
            if transport.outbox is not None:
                self.store.register_consumer(transport.name, transport.outbox)

    def transport(self, name: str) -> Transport:
        """The running transport called `name` (KeyError when it is off)."""
        for transport in self.transports:
            if transport.name == name:
                return transport
        raise KeyError(name)

    async def _forget_jobs(self, job_ids: list[str]) -> None:
        """Retention pruned these jobs: transports and artifacts let go of them too."""
        for transport in self.transports:
            if isinstance(transport, ForgetsJobs):
                await transport.forget_jobs(job_ids)
        artifacts = self.config.state_dir / "artifacts"
        await trio.to_thread.run_sync(remove_artifacts, artifacts, job_ids)

    async def _store_health(self) -> tuple[Status, str, dict[str, Any]]:
        full = self.space.status(getattr(self.store, "disk_full", False))
        if full is not None:
            return full  # named first: a full disk is what an operator must see
        counts = await self.store.count_by_status()
        figures = {
            "queue_depth": self.dispatcher.queue_depth,
            "running": self.dispatcher.running_count,
            "jobs": counts,
        }
        return "healthy", "job store answers", figures

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        queued, running = self.dispatcher.queue_depth, self.dispatcher.running_count
        if self.dispatcher.draining:
            return f"Draining: {running} running, {queued} queued for the next start"
        limit = self.config.max_concurrent_jobs
        return f"Taking jobs: {queued} queued, {running} running (max {limit})"

    async def wedged(self) -> str | None:
        """Why the agent cannot make progress, or None (the watchdog's probe)."""
        return await self.dispatcher.wedged(stall_after=self.config.service.watchdog_stall_seconds)

    async def drain(self) -> list[str]:
        """Take no new jobs; give running ones the drain budget to finish, then
        interrupt them, leaving them Running for restart recovery to resolve.

        Answers the ids of the interrupted jobs.
        """
        service = self.config.service
        self.intake.stop_accepting()
        began = trio.current_time()
        deadline = began + service.drain_seconds
        log.info(
            "agent.draining",
            running=self.dispatcher.running_count,
            queued=self.dispatcher.queue_depth,
            budget_seconds=service.drain_seconds,
        )
        interrupted: list[str] = []
        with trio.move_on_at(deadline + service.cancel_grace_seconds) as grace:
            interrupted = await self.dispatcher.drain(deadline)
        if grace.cancelled_caught:
            # Handlers that ignore cancellation; recovery treats them as after a crash.
            log.error("agent.drain_abandoned", still_running=self.dispatcher.running_count)
            interrupted = list(self.dispatcher.interrupted)
        log.info(
            "agent.drained",
            seconds=round(trio.current_time() - began, 3),
            interrupted=interrupted,
            left_queued=self.dispatcher.queue_depth,
        )
        return interrupted

    def hurry(self) -> None:
        """End the drain now: interrupt whatever still runs."""
        self.dispatcher.set_drain_deadline(trio.current_time())

    async def reload(self, config: Config) -> None:
        """Apply a reloaded config without dropping jobs: log level, limits,
        labels, and whatever each transport reloads (tokens, certificates)."""
        applied, changed, kept = _reconcile(self.config, config)
        self.config = applied
        self.services.replace(Config, applied)
        set_log_level(applied.log_level)
        for part in (
            self.dispatcher,
            self.intake,
            self.capabilities,
            self.policy,
            self.space,
            *self.transports,
        ):
            if not isinstance(part, Reloadable):
                continue
            try:
                outcome = part.reload(applied)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # one part failing to reload must not stop the agent
                log.exception("agent.reload_part_failed", part=type(part).__name__)
        if kept:
            log.warning("agent.reload_restart_required", keys=kept)
        log.info("agent.reloaded", changed=changed)

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; started() once every transport is taking jobs."""
        untrack = metrics.track(
            metrics.Sources(
                queue_depth=lambda: self.dispatcher.queue_depth,
                running=lambda: self.dispatcher.running_count,
            ),
            transports=[transport.name for transport in self.transports],
            operations=self.registry.operations,
        )
        try:
            await self.store.open()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.libvirt.run)
                await nursery.start(self.capabilities.run)
                await nursery.start(self.dispatcher.run)
                for transport in self.transports:
                    await nursery.start(transport.run, self.intake)
                if self.pruner is not None:
                    await nursery.start(self.pruner.run)
                log.info(
                    "agent.ready",
                    worker_id=self.config.worker_id,
                    operations=len(self.registry.operations),
                    max_concurrent_jobs=self.config.max_concurrent_jobs,
                    reruns=self.dispatcher.reruns,
                )
                task_status.started(self)
        finally:
            untrack()
            self.bus.close()
            with trio.CancelScope(shield=True):
                await self.services.aclose()


async def _features_of(transport: Transport) -> dict[str, Any]:
    return {"features": transport.features()}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _reconcile(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config to apply (restart-only keys keep their old values), the keys
    that changed, and the changed keys that wait for a restart."""
    before, after = _flatten(old.model_dump()), _flatten(new.model_dump())
    changed = sorted(
        key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
    )
    restart_only = restart_keys()
    kept = [key for key in changed if key in restart_only]
    data = new.model_dump()
    for key in kept:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = before[key]
    return Config.model_validate(data), changed, kept


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
    task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's main: run the agent until SIGTERM or SIGINT, then drain.

    SIGHUP applies `load_config()` (the configuration read again the way the
    command line first read it). A second SIGTERM/SIGINT ends the drain at once.
    `notify` defaults to systemd's notification socket, if the environment names one.
    """
    # Before the store opens: a second agent on this directory would run its jobs again.
    with hold_state_lock(config.state_dir):
        if notify is not None:
            await _serve(config, load_config, notify, task_status)
            return
        notifier = Notifier.from_environment(os.environ)
        try:
            await _serve(config, load_config, notifier, task_status)
        finally:
            notifier.close()


async def _serve(
    config: Config,
    load_config: Callable[[], Config] | None,
    notifier: Notify,
    task_status: trio.TaskStatus[Agent],
) -> None:
    began = trio.current_time()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await notifier.send("STATUS=Starting: recovering jobs, scanning the spool")
            agent: Agent = await nursery.start(Agent(config).run)
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
