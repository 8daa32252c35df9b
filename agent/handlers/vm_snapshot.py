"""vm.snapshot.*: create, list, revert to and delete domain snapshots."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.handlers import connection
from agent.handlers.domain_xml import NAME_PATTERN, snapshot_xml
from agent.handlers.vm import DomainRef, domain_resource
from agent.hypervisor.summaries import describe_snapshot


class SnapshotCreatePayload(DomainRef):
    snapshot: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="default: libvirt names it by time"
    )
    description: str | None = None


@handler(
    "vm.snapshot.create", payload=SnapshotCreatePayload, rerun_safe=False, resource=domain_resource
)
async def create(payload: SnapshotCreatePayload, ctx: JobContext) -> dict[str, Any]:
    """Take a snapshot of a domain (disks and, when it runs, memory)."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        snap = dom.snapshotCreateXML(snapshot_xml(payload.snapshot, payload.description), 0)
        return {"name": dom.name(), "uuid": dom.UUIDString(), "snapshot": describe_snapshot(snap)}

    return await connection(ctx).call(run)


@handler("vm.snapshot.list", payload=DomainRef, rerun_safe=True, resource=domain_resource)
async def list_snapshots(payload: DomainRef, ctx: JobContext) -> dict[str, Any]:
    """A domain's snapshots, oldest first."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        snapshots = sorted(
            (describe_snapshot(snap) for snap in dom.listAllSnapshots(0)),
            key=lambda s: (s["created"] or 0, s["name"]),
        )
        return {"name": dom.name(), "uuid": dom.UUIDString(), "snapshots": snapshots}

    return await connection(ctx).call(run)


class SnapshotRefPayload(DomainRef):
    snapshot: str = Field(min_length=1)


@handler(
    "vm.snapshot.revert", payload=SnapshotRefPayload, rerun_safe=False, resource=domain_resource
)
async def revert(payload: SnapshotRefPayload, ctx: JobContext) -> dict[str, Any]:
    """Return a domain to a snapshot (what it did since is lost)."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        dom.revertToSnapshot(dom.snapshotLookupByName(payload.snapshot, 0), 0)
        return {"name": dom.name(), "uuid": dom.UUIDString(), "snapshot": payload.snapshot}

    return await connection(ctx).call(run)


@handler(
    "vm.snapshot.delete", payload=SnapshotRefPayload, rerun_safe=True, resource=domain_resource
)
async def delete(payload: SnapshotRefPayload, ctx: JobContext) -> dict[str, Any]:
    """Delete a snapshot; one already gone is success."""

    def run(conn: Any) -> dict[str, Any]:
        dom = payload.lookup(conn)
        names = set(dom.snapshotListNames(0))
        if payload.snapshot in names:
            dom.snapshotLookupByName(payload.snapshot, 0).delete(0)
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "snapshot": payload.snapshot,
            "changed": payload.snapshot in names,
        }

    return await connection(ctx).call(run)


HANDLERS = (create, list_snapshots, revert, delete)
