"""The composition root: `Agent` builds the store, libvirt, the dispatcher, the
intake and each transport from the settings, and runs them in one nursery."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol, runtime_checkable

import structlog
import trio

from agent.config import Config, restart_keys
from agent.core import metrics
from agent.core import periodic as background
from agent.core.capabilities import Capabilities
from agent.core.children import Children
from agent.core.context import ChildJobs
from agent.core.diskspace import SpaceFloor
from agent.core.dispatcher import Dispatcher
from agent.core.events import EventBus
from agent.core.health import Health, Status
from agent.core.intake import Intake
from agent.core.jobstore import JobStore
from agent.core.registry import Handler, Registry
from agent.core.services import Services
from agent.handlers import guestkit, image, network, storage, system, vm, vm_screen, vm_snapshot
from agent.handlers.runbook import runbook_handler
from agent.handlers.storage_roots import refresh_pool_roots
from agent.hypervisor import LibvirtConnection
from agent.hypervisor.facts import libvirt_facts
from agent.policy.paths import Policy
from agent.runbooks import RunbookLibrary
from agent.service.logs import set_log_level
from agent.service.settings import (
    Settings,
    SettingsT,
    as_settings,
    section_of,
    settings_model,
)
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
from agent.view.templates import TemplateCatalog, TemplateRows

log = structlog.get_logger("agent.service.agent")


@runtime_checkable
class Reloadable(Protocol):
    """A part of the agent that applies reloaded settings (SIGHUP): the core's
    parts get the settings, a transport its own section."""

    def reload(self, config: Any) -> object:
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
    """The running agent's parts, for the daemon and for tests.

    `transports` is the transport table; a transport added to it brings its own
    section (load the settings with `load_settings(path, transports=...)`).
    `config` may lack sections (a core `Config`): those take their defaults.
    """

    def __init__(
        self,
        config: Config,
        *,
        extra_handlers: Iterable[Handler] = (),
        transports: Iterable[TransportSpec[Any]] = TRANSPORTS,
        store: JobStore | None = None,
    ) -> None:
        specs = tuple(transports)
        self._model = settings_model(specs)
        self.config: Settings = as_settings(config, self._model)
        config = self.config
        self.bus = EventBus()
        self.policy = Policy(config)
        self.registry = build_registry()
        self.registry.policy = self.policy  # every handler's intake check (admit) uses it
        for extra in extra_handlers:
            self.registry.add(extra)
        # Installed runbooks, checked whole at intake against the operations above.
        self.runbooks = RunbookLibrary(config.runbooks.dirs)
        self.runbooks.load()
        self.registry.add(runbook_handler(self.runbooks, self.registry, lambda: self.config))
        self.store: JobStore = store if store is not None else SqliteStore(config.store_path)
        self.libvirt = LibvirtConnection(config.libvirt)
        self.services = Services()
        self.services.register(Config, config, name="config")
        self.services.register(Policy, self.policy, name="policy")
        self.services.register(Registry, self.registry, name="registry")  # GET /policy's operations
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
        self._register_views(config)
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
        self.capabilities.contribute(self.runbooks.describe)
        self.runbooks.on_change(self.capabilities.request_refresh)  # reloaded: listed anew
        self.capabilities.contribute(partial(refresh_pool_roots, self.libvirt, self.policy))
        self.libvirt.on_change(self.capabilities.request_refresh)
        self.space = SpaceFloor(config.state_dir, config.state_min_free_bytes)
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
            space=self.space,
        )
        self.services.register(
            ChildJobs,  # type: ignore[type-abstract]  # a Protocol names the service
            Children(self.intake, self.dispatcher),
            name="children",
        )
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
        # Each transport its section turns on; it brings its health, features and outbox.
        self.transports: list[Transport] = []
        self._spec_of: dict[str, TransportSpec[Any]] = {}
        for spec in specs:
            transport = spec.build(section_of(config, spec), self.services)
            if transport is None:
                continue
            self.transports.append(transport)
            self._spec_of[transport.name] = spec
            self.health.add(transport.name, transport.health)
            self.capabilities.contribute(partial(_features_of, transport))
            if transport.outbox is not None:
                self.store.register_consumer(transport.name, transport.outbox)

    def _register_views(self, config: Settings) -> None:
        """Direct reads of VMs, pools, networks and the host (the HTTP API's; their
        actions still come in through the intake as jobs), and the VM templates."""
        self.services.register(ResourceView, ResourceView(self.libvirt, config), name="resources")
        if isinstance(self.store, TemplateRows):  # VM templates live in the job store
            templates = TemplateCatalog(self.store, self.policy, config)
            self.services.register(TemplateCatalog, templates, name="templates")

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
        labels, and whatever each transport reloads from its own section
        (tokens, certificates)."""
        applied, changed, kept = _reconcile(self.config, as_settings(config, self._model))
        self.config = applied
        self.services.replace(Config, applied)
        set_log_level(applied.log_level)
        core = (
            self.dispatcher,
            self.intake,
            self.capabilities,
            self.policy,
            self.space,
            self.runbooks,
        )
        parts: list[tuple[object, object]] = [(part, applied) for part in core]
        parts += [
            (transport, section_of(applied, self._spec_of[transport.name]))
            for transport in self.transports
            if transport.name in self._spec_of  # one not built from the table has no section
        ]
        for part, given in parts:
            if not isinstance(part, Reloadable):
                continue
            try:
                outcome = part.reload(given)
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


def _reconcile(old: SettingsT, new: SettingsT) -> tuple[SettingsT, list[str], list[str]]:
    """The config to apply (restart-only keys keep their old values), the keys
    that changed, and the changed keys that wait for a restart."""
    before, after = _flatten(old.model_dump()), _flatten(new.model_dump())
    changed = sorted(
        key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
    )
    model = type(new)
    restart_only = restart_keys(model)
    kept = [key for key in changed if key in restart_only]
    data = new.model_dump()
    for key in kept:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = before[key]
    return model.model_validate(data), changed, kept
