"""storage.pool.* and storage.volume.*: libvirt storage pools and their volumes."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Literal
from xml.etree import ElementTree as ET

import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import HandlerError, NotFoundError
from agent.handlers import check_disk_size, connection, missing_is_done
from agent.handlers.domain_xml import NAME_PATTERN
from agent.handlers.storage_roots import check_pool_directory, refresh_pool_roots
from agent.hypervisor import (
    VOL_RESIZE_SHRINK,
    WIPE_ALGORITHMS,
    lookup_pool,
    lookup_volume,
)
from agent.hypervisor.summaries import pool_summary, volume_summary
from agent.policy.images import check_image
from agent.policy.paths import Admission, Policy

# A volume name is one path component: no '/', no leading dot (so no '..').
VOLUME_NAME_PATTERN = r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}$"


class PoolRef(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(min_length=1, description="the pool's name")

    def lookup(self, conn: Any) -> Any:
        return lookup_pool(conn, self.name)


def pool_resource(ref: PoolRef) -> str:
    return f"pool:{ref.name}"


class VolumeRef(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    pool: str = Field(min_length=1)
    name: str = Field(pattern=VOLUME_NAME_PATTERN, description="the volume's name in its pool")

    def lookup(self, conn: Any) -> Any:
        return lookup_volume(conn, self.pool, self.name)


def volume_resource(ref: VolumeRef) -> str:
    return f"volume:{ref.pool}/{ref.name}"


class PoolListPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


@handler("storage.pool.list", payload=PoolListPayload, rerun_safe=True)
async def pool_list(payload: PoolListPayload, ctx: JobContext) -> dict[str, Any]:
    """Every storage pool with its state and space."""
    pools = await connection(ctx).call(
        lambda conn: sorted(
            (pool_summary(p) for p in conn.listAllStoragePools(0)), key=lambda p: p["name"]
        )
    )
    return {"pools": pools, "total": len(pools)}


@handler("storage.pool.info", payload=PoolRef, rerun_safe=True, resource=pool_resource)
async def pool_info(payload: PoolRef, ctx: JobContext) -> dict[str, Any]:
    """One pool: state, type, target path, space and number of volumes."""

    def run(conn: Any) -> dict[str, Any]:
        pool = payload.lookup(conn)
        volumes = pool.numOfVolumes() if pool.isActive() else None
        return {**pool_summary(pool), "volumes": volumes}

    return await connection(ctx).call(run)


class PoolDefinePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["dir"] = "dir"
    path: str = Field(
        pattern=r"^/",
        description="the directory holding the volumes: strictly below an image root "
        "(policy.image_roots), reached without a symbolic link, not the agent's state or "
        "spool directory",
    )
    build: bool = Field(default=True, description="create the directory if missing")
    start: bool = True
    autostart: bool = False


def _pool_xml(spec: PoolDefinePayload, uuid: str | None) -> str:
    root = ET.Element("pool", type=spec.type)
    ET.SubElement(root, "name").text = spec.name
    if uuid is not None:  # redefining keeps the pool's identity
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(ET.SubElement(root, "target"), "path").text = spec.path
    return ET.tostring(root, encoding="unicode")


def admit_pool_define(payload: PoolDefinePayload, gate: Admission) -> None:
    """The directory as far as it exists: below a configured root, no link on the way."""
    check_pool_directory(
        gate.policy, payload.path, field="payload.data.path", missing_ok=payload.build
    )


@handler(
    "storage.pool.define",
    payload=PoolDefinePayload,
    rerun_safe=True,
    resource=lambda p: f"pool:{p.name}",
    admit=admit_pool_define,
)
async def pool_define(payload: PoolDefinePayload, ctx: JobContext) -> dict[str, Any]:
    """Define a directory pool (and build, start and autostart it); redefining is an update."""
    policy = ctx.get(Policy)

    def run(conn: Any) -> dict[str, Any]:
        # Checked again as the job runs, and made here (never through a link) for build.
        check_pool_directory(policy, payload.path, field="payload.data.path", create=payload.build)
        existing = {pool.name(): pool.UUIDString() for pool in conn.listAllStoragePools(0)}
        pool = conn.storagePoolDefineXML(_pool_xml(payload, existing.get(payload.name)), 0)
        if payload.build and not pool.isActive():
            pool.build(0)
        if payload.start and not pool.isActive():
            pool.create(0)
        pool.setAutostart(int(payload.autostart))
        return {**pool_summary(pool), "created": payload.name not in existing}

    answer = await connection(ctx).call(run)
    await refresh_pool_roots(connection(ctx), ctx.get(Policy))
    return answer


@handler("storage.pool.start", payload=PoolRef, rerun_safe=True, resource=pool_resource)
async def pool_start(payload: PoolRef, ctx: JobContext) -> dict[str, Any]:
    """Activate a pool; an active one is left as it is."""

    def run(conn: Any) -> dict[str, Any]:
        pool = payload.lookup(conn)
        changed = not pool.isActive()
        if changed:
            pool.create(0)
        return {**pool_summary(pool), "changed": changed}

    return await connection(ctx).call(run)


@handler("storage.pool.stop", payload=PoolRef, rerun_safe=True, resource=pool_resource)
async def pool_stop(payload: PoolRef, ctx: JobContext) -> dict[str, Any]:
    """Deactivate a pool (its data stays); an inactive one is left as it is."""

    def run(conn: Any) -> dict[str, Any]:
        pool = payload.lookup(conn)
        changed = bool(pool.isActive())
        if changed:
            pool.destroy()
        return {**pool_summary(pool), "changed": changed}

    return await connection(ctx).call(run)


class PoolDeletePayload(PoolRef):
    delete_data: bool = Field(
        default=False, description="also remove the pool's (empty) target directory"
    )


@handler("storage.pool.delete", payload=PoolDeletePayload, rerun_safe=True, resource=pool_resource)
async def pool_delete(payload: PoolDeletePayload, ctx: JobContext) -> dict[str, Any]:
    """Stop and undefine a pool; a missing one is success."""

    def run(conn: Any) -> dict[str, Any]:
        pool = payload.lookup(conn)
        if pool.isActive():
            pool.destroy()
        if payload.delete_data:
            pool.delete(0)
        if pool.isPersistent():
            pool.undefine()
        return {"name": payload.name, "changed": True}

    answer = await missing_is_done(connection(ctx).call(run), {"name": payload.name})
    await refresh_pool_roots(connection(ctx), ctx.get(Policy))
    return answer


@handler("storage.volume.list", payload=PoolRef, rerun_safe=True, resource=pool_resource)
async def volume_list(payload: PoolRef, ctx: JobContext) -> dict[str, Any]:
    """The volumes of a pool."""

    def run(conn: Any) -> list[dict[str, Any]]:
        pool = payload.lookup(conn)
        pool.refresh(0)
        return sorted((volume_summary(v) for v in pool.listAllVolumes(0)), key=lambda v: v["name"])

    volumes = await connection(ctx).call(run)
    return {"pool": payload.name, "volumes": volumes, "total": len(volumes)}


@handler("storage.volume.info", payload=VolumeRef, rerun_safe=True, resource=volume_resource)
async def volume_info(payload: VolumeRef, ctx: JobContext) -> dict[str, Any]:
    """One volume: path, type, format, capacity, allocation, backing store."""
    return {
        "pool": payload.pool,
        **await connection(ctx).call(lambda conn: volume_summary(payload.lookup(conn))),
    }


async def check_volume_image(ctx: JobContext, ref: VolumeRef) -> None:
    """The volume's image and every file it names, checked (agent.policy.images) before
    libvirt runs qemu-img on it (resize, clone), with the format libvirt gives it. libvirt
    opens the volume by name afterwards: this refuses images whose references leave the
    roots; it cannot pin the file (a volume that does not exist as a file passes)."""
    found = await connection(ctx).call(lambda conn: volume_summary(ref.lookup(conn)))
    field = "payload.data.name"
    # An ISO image is raw bytes to qemu-img.
    fmt = "raw" if found["format"] == "iso" else found["format"]
    with contextlib.suppress(NotFoundError):  # a volume that is no file (yet): nothing to read
        await trio.to_thread.run_sync(
            partial(check_image, ctx.get(Policy), found["path"], fmt, field=field)
        )


class VolumeCreatePayload(VolumeRef):
    capacity_bytes: int = Field(gt=0)
    format: Literal["qcow2", "raw"] = "qcow2"
    allocation_bytes: int = Field(default=0, ge=0)


def _volume_xml(name: str, capacity: int, allocation: int, fmt: str) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt)
    return ET.tostring(root, encoding="unicode")


@handler(
    "storage.volume.create", payload=VolumeCreatePayload, rerun_safe=True, resource=volume_resource
)
async def volume_create(payload: VolumeCreatePayload, ctx: JobContext) -> dict[str, Any]:
    """Create a volume; one that exists with the same capacity and format is success."""
    check_disk_size(ctx, payload.capacity_bytes, field="payload.data.capacity_bytes")

    def run(conn: Any) -> dict[str, Any]:
        pool = lookup_pool(conn, payload.pool)
        if payload.name in pool.listVolumes():
            found = volume_summary(pool.storageVolLookupByName(payload.name))
            if (found["capacity_bytes"], found["format"]) != (
                payload.capacity_bytes,
                payload.format,
            ):
                raise HandlerError(
                    f"volume {payload.pool}/{payload.name} exists with another capacity or format",
                    reason="exists",
                    details={"existing": found},
                )
            return {"pool": payload.pool, **found, "changed": False}
        xml = _volume_xml(
            payload.name, payload.capacity_bytes, payload.allocation_bytes, payload.format
        )
        vol = pool.createXML(xml, 0)
        return {"pool": payload.pool, **volume_summary(vol), "changed": True}

    return await connection(ctx).call(run)


class VolumeResizePayload(VolumeRef):
    capacity_bytes: int = Field(gt=0, description="the new capacity (absolute)")
    allow_shrink: bool = Field(default=False, description="shrinking loses data at the end")


@handler(
    "storage.volume.resize", payload=VolumeResizePayload, rerun_safe=True, resource=volume_resource
)
async def volume_resize(payload: VolumeResizePayload, ctx: JobContext) -> dict[str, Any]:
    """Set a volume's capacity; the same capacity again is success."""
    check_disk_size(ctx, payload.capacity_bytes, field="payload.data.capacity_bytes")
    await check_volume_image(ctx, payload)

    def run(conn: Any) -> dict[str, Any]:
        vol = payload.lookup(conn)
        before = vol.info()[1]
        if before == payload.capacity_bytes:
            return {"pool": payload.pool, **volume_summary(vol), "changed": False}
        if payload.capacity_bytes < before and not payload.allow_shrink:
            raise HandlerError(
                f"{payload.capacity_bytes} is smaller than the volume ({before} bytes); "
                "pass allow_shrink: true to lose its end",
                field="payload.data.capacity_bytes",
            )
        vol.resize(
            payload.capacity_bytes, VOL_RESIZE_SHRINK if before > payload.capacity_bytes else 0
        )
        return {"pool": payload.pool, **volume_summary(vol), "changed": True}

    return await connection(ctx).call(run)


class VolumeWipePayload(VolumeRef):
    algorithm: Literal["zero", "random"] = "zero"


@handler(
    "storage.volume.wipe", payload=VolumeWipePayload, rerun_safe=True, resource=volume_resource
)
async def volume_wipe(payload: VolumeWipePayload, ctx: JobContext) -> dict[str, Any]:
    """Overwrite a volume's data (zeros or random bytes)."""
    await ctx.progress(None, "wiping", algorithm=payload.algorithm)

    def run(conn: Any) -> dict[str, Any]:
        vol = payload.lookup(conn)
        vol.wipePattern(WIPE_ALGORITHMS[payload.algorithm], 0)
        return {"pool": payload.pool, **volume_summary(vol), "algorithm": payload.algorithm}

    return await connection(ctx).call(run)


@handler("storage.volume.delete", payload=VolumeRef, rerun_safe=True, resource=volume_resource)
async def volume_delete(payload: VolumeRef, ctx: JobContext) -> dict[str, Any]:
    """Delete a volume; a missing one is success."""

    def run(conn: Any) -> dict[str, Any]:
        payload.lookup(conn).delete(0)
        return {"pool": payload.pool, "name": payload.name, "changed": True}

    return await missing_is_done(
        connection(ctx).call(run), {"pool": payload.pool, "name": payload.name}
    )


class VolumeClonePayload(VolumeRef):
    new_name: str = Field(pattern=VOLUME_NAME_PATTERN)
    target_pool: str | None = Field(default=None, description="default: the same pool")

    @model_validator(mode="after")
    def _different(self) -> VolumeClonePayload:
        if self.new_name == self.name and self.target_pool in (None, self.pool):
            raise ValueError("new_name must differ from name in the same pool")
        return self


@handler(
    "storage.volume.clone", payload=VolumeClonePayload, rerun_safe=False, resource=volume_resource
)
async def volume_clone(payload: VolumeClonePayload, ctx: JobContext) -> dict[str, Any]:
    """Copy a volume to a new one (same pool or another)."""
    await check_volume_image(ctx, payload)
    await ctx.progress(None, "cloning")

    def run(conn: Any) -> dict[str, Any]:
        source = payload.lookup(conn)
        pool = lookup_pool(conn, payload.target_pool or payload.pool)
        found = volume_summary(source)
        xml = _volume_xml(payload.new_name, found["capacity_bytes"], 0, found["format"] or "raw")
        clone = pool.createXMLFrom(xml, source, 0)
        return {"pool": pool.name(), **volume_summary(clone), "source": found["path"]}

    return await connection(ctx).call(run)


HANDLERS = (
    pool_list,
    pool_info,
    pool_define,
    pool_start,
    pool_stop,
    pool_delete,
    volume_list,
    volume_info,
    volume_create,
    volume_resize,
    volume_wipe,
    volume_delete,
    volume_clone,
)
