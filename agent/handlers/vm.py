"""vm.*: the lifecycle of libvirt domains.

Every action that moves a domain to a state answers `changed: false` when
the domain is already there (starting a running domain succeeds), so those
jobs are safe to run again; reboot and reset are not.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable
from typing import Any, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import HandlerError
from agent.handlers import connection, missing_is_done, vm_create
from agent.handlers.domain_checks import check_disk_images, check_networks
from agent.handlers.domain_xml import (
    VmSpec,
    describe_devices,
    domain_name,
    pick_domain_type,
    spec_to_xml,
    with_uuid,
)
from agent.hypervisor import (
    domain_state,
    lookup_domain,
    undefine_domain,
    volume_by_path,
)
from agent.policy.domain import DOMAIN_XML_RULES, admit_define

DomainState = Literal[
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
]


class DomainRef(BaseModel):
    """A domain, by name or by UUID."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str | None = Field(default=None, min_length=1)
    uuid: uuid_module.UUID | None = None

    @model_validator(mode="after")
    def _named(self) -> DomainRef:
        if self.name is None and self.uuid is None:
            raise ValueError("give the domain's name or uuid")
        return self

    def lookup(self, conn: Any) -> Any:
        """The virDomain (blocking: call it inside `LibvirtConnection.call`)."""
        return lookup_domain(conn, self.name, None if self.uuid is None else str(self.uuid))


def domain_resource(ref: DomainRef) -> str:
    # Jobs on one domain serialise; a fleet addresses a domain one way (name or uuid).
    return f"domain:{ref.name or ref.uuid}"


def summary(dom: Any, **extra: Any) -> dict[str, Any]:
    return {"name": dom.name(), "uuid": dom.UUIDString(), "state": domain_state(dom), **extra}


class ListPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    state: DomainState | None = Field(default=None, description="only domains in this state")


@handler("vm.list", payload=ListPayload, rerun_safe=True)
async def list_domains(payload: ListPayload, ctx: JobContext) -> dict[str, Any]:
    """Every domain with its state, persistence and autostart."""

    def run(conn: Any) -> list[dict[str, Any]]:
        return [
            summary(
                dom,
                id=dom.ID() if dom.isActive() else None,
                persistent=bool(dom.isPersistent()),
                autostart=bool(dom.autostart()) if dom.isPersistent() else False,
            )
            for dom in conn.listAllDomains(0)
        ]

    domains = await connection(ctx).call(run)
    if payload.state is not None:
        domains = [d for d in domains if d["state"] == payload.state]
    domains.sort(key=lambda d: d["name"])
    return {"domains": domains, "total": len(domains)}


@handler("vm.info", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def info(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """State, vcpus, memory, cpu time, disks, nics and runtime stats of a domain."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        _state, max_kib, memory_kib, vcpus, cpu_time = dom.info()
        stats: dict[str, Any] = {}
        if dom.isActive():
            stats = dict(conn.domainListGetStats([dom], 0)[0][1])
        return summary(
            dom,
            id=dom.ID() if dom.isActive() else None,
            persistent=bool(dom.isPersistent()),
            autostart=bool(dom.autostart()) if dom.isPersistent() else False,
            vcpus=vcpus,
            memory_kib=memory_kib,
            max_memory_kib=max_kib,
            cpu_time_ns=cpu_time,
            **describe_devices(dom.XMLDesc(0)),
            stats=stats,
        )

    return await connection(ctx).call(run)


class DefinePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    xml: str | None = Field(default=None, description=DOMAIN_XML_RULES)
    spec: VmSpec | None = Field(
        default=None, description="Or a small spec the agent turns into XML"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DefinePayload:
        if (self.xml is None) == (self.spec is None):
            raise ValueError("give exactly one of xml or spec")
        if self.xml is not None:
            domain_name(self.xml)
        return self

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else domain_name(self.xml or "")


@handler(
    "vm.define",
    payload=DefinePayload,
    rerun_safe=True,
    resource=lambda p: f"domain:{p.name}",
    admit=admit_define,
)
async def define(payload: DefinePayload, ctx: JobContext) -> dict[str, Any]:
    """Define (or redefine) a persistent domain from XML or from a small JSON spec."""
    await check_disk_images(ctx, payload.spec, payload.xml)

    def run(conn: Any) -> dict[str, Any]:
        existing = {dom.name(): dom.UUIDString() for dom in conn.listAllDomains(0)}
        xml = payload.xml or ""
        check_networks(conn, payload.spec, xml)
        if payload.spec is not None:
            try:
                kind, arch = pick_domain_type(conn.getCapabilities(), payload.spec.arch)
            except ValueError as exc:
                raise HandlerError(str(exc), field="payload.data.spec.arch") from exc
            xml = spec_to_xml(payload.spec, payload.spec.domain_type or kind, arch)
        if payload.name in existing:
            xml = with_uuid(xml, existing[payload.name])
        dom = conn.defineXML(xml)
        if payload.spec is not None and payload.spec.autostart:
            dom.setAutostart(1)
        return summary(dom, created=payload.name not in existing)

    return await connection(ctx).call(run)


@handler("vm.start", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def start(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Start a defined domain (its disks' images checked first); a running (or paused)
    one is left as it is."""
    xml = await connection(ctx).call(lambda conn: payload.lookup(conn).XMLDesc(0))
    await check_disk_images(ctx, None, xml, defined=True)

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        if dom.isActive():
            return summary(dom, changed=False)
        dom.create()
        return summary(dom, changed=True)

    return await connection(ctx).call(run)


class ShutdownPayload(DomainRef):
    timeout_seconds: float = Field(default=120, gt=0, le=3600)
    force: bool = Field(default=False, description="destroy the domain if it is still up")


@handler("vm.shutdown", payload=ShutdownPayload, rerun_safe=True, resource=domain_resource)
async def shutdown(payload: ShutdownPayload, ctx: JobContext) -> dict[str, Any]:
    """Ask the guest to power off, wait up to timeout_seconds, then destroy if force."""
    hv = connection(ctx)

    def request(conn: Any) -> str | None:
        dom = payload.lookup(conn)
        if not dom.isActive():
            return None
        dom.shutdown()
        return str(dom.UUIDString())

    uuid = await hv.call(request)
    if uuid is None:
        return {**await hv.call(lambda c: summary(payload.lookup(c))), "changed": False}
    await ctx.progress(0, "shutdown requested", timeout_seconds=payload.timeout_seconds)
    method, state = "shutdown", None
    with trio.move_on_after(payload.timeout_seconds):
        state = await hv.wait_domain_state(uuid, {"shutoff", "crashed", "undefined"})
    if state == "undefined":  # a transient domain: gone once it stopped
        return {
            "name": payload.name,
            "uuid": uuid,
            "state": state,
            "changed": True,
            "method": method,
        }
    if state is None:
        if not payload.force:
            raise HandlerError(
                f"domain {payload.name or uuid} did not shut down within "
                f"{payload.timeout_seconds:g} s (force: true destroys it)",
                reason="timeout",
            )
        await ctx.log("guest did not shut down in time; destroying it", level="warning")
        await hv.call(lambda c: _destroy_if_active(payload.lookup(c)))
        method = "destroy"
    return {
        **await hv.call(lambda c: summary(payload.lookup(c))),
        "changed": True,
        "method": method,
    }


def _destroy_if_active(dom: Any) -> bool:
    if not dom.isActive():
        return False
    dom.destroy()
    return True


@handler("vm.destroy", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def destroy(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Power a domain off at once (pulling the plug); a stopped one is left as it is."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        return summary(dom, changed=_destroy_if_active(dom))

    return await connection(ctx).call(run)


def _transition(
    ref: DomainRef, act: Callable[[Any], object], already_in: str | None
) -> Callable[[Any], dict[str, Any]]:
    """A blocking function doing `act` on the domain unless it is already in `already_in`."""

    def run(conn: Any) -> dict[str, Any]:
        dom = ref.lookup(conn)
        if already_in is not None and domain_state(dom) == already_in:
            return summary(dom, changed=False)
        act(dom)
        return summary(dom, changed=True)

    return run


@handler("vm.reboot", payload=DomainRef, rerun_safe=False, resource=domain_resource)
async def reboot(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Ask the guest to reboot (ACPI); its OS has to cooperate."""
    return await connection(ctx).call(_transition(payload, lambda dom: dom.reboot(0), None))


@handler("vm.reset", payload=DomainRef, rerun_safe=False, resource=domain_resource)
async def reset(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Reset the domain's virtual hardware at once (the reset button)."""
    return await connection(ctx).call(_transition(payload, lambda dom: dom.reset(0), None))


@handler("vm.suspend", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def suspend(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Pause a running domain's vCPUs; a paused one is left as it is."""
    return await connection(ctx).call(_transition(payload, lambda dom: dom.suspend(), "paused"))


@handler("vm.resume", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def resume(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """Resume a paused domain; a running one is left as it is."""
    return await connection(ctx).call(_transition(payload, lambda dom: dom.resume(), "running"))


class UndefinePayload(DomainRef):
    force: bool = Field(default=False, description="destroy the domain first if it runs")
    remove_storage: bool = Field(
        default=False, description="also delete its disks that are libvirt storage volumes"
    )


@handler("vm.undefine", payload=UndefinePayload, rerun_safe=True, resource=domain_resource)
async def undefine(payload: UndefinePayload, ctx: JobContext) -> dict[str, Any]:
    """Remove a domain's definition (and optionally its volumes); a missing one is success."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        if dom.isActive():
            if not payload.force:
                raise HandlerError(
                    f"domain {dom.name()} is running; shut it down first or pass force: true",
                    reason="invalid_state",
                )
            dom.destroy()
        ref = {"name": dom.name(), "uuid": dom.UUIDString()}
        disks = [
            d["source"]
            for d in describe_devices(dom.XMLDesc(0))["disks"]
            if d["device"] == "disk" and d["source"]
        ]
        if dom.isPersistent():
            undefine_domain(dom)
        removed, kept = [], []
        for path in disks if payload.remove_storage else []:
            volume = volume_by_path(conn, path)
            if volume is None:  # not a volume libvirt manages: left in place
                kept.append(path)
            else:
                volume.delete(0)
                removed.append(path)
        return {**ref, "changed": True, "removed_volumes": removed, "kept_disks": kept}

    answer = {"name": payload.name, "uuid": payload.uuid and str(payload.uuid)}
    return await missing_is_done(connection(ctx).call(run), answer)


class AutostartPayload(DomainRef):
    enabled: bool = True


@handler("vm.autostart", payload=AutostartPayload, rerun_safe=True, resource=domain_resource)
async def autostart(payload: AutostartPayload, ctx: JobContext) -> dict[str, Any]:
    """Turn starting the domain when the host boots on or off."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        before = bool(dom.autostart())
        if before != payload.enabled:
            dom.setAutostart(int(payload.enabled))
        return summary(dom, autostart=payload.enabled, changed=before != payload.enabled)

    return await connection(ctx).call(run)


HANDLERS = (
    list_domains,
    info,
    define,
    start,
    shutdown,
    destroy,
    reboot,
    reset,
    suspend,
    resume,
    undefine,
    autostart,
    *vm_create.HANDLERS,  # vm.create: a VM from a template
)
