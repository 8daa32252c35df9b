"""vm.create: a VM from a template (Kimchi's `POST /vms {"template": ...}`).

The job carries the template as it was when the job was submitted (the
template may change or go afterwards; the job stays what was asked). It
creates one volume per template disk in the storage pool (a new one of the
disk's size, or a copy of the disk's source volume), then defines the
domain from the same spec vm.define builds XML from. Volumes it created are
removed again when the definition fails.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal
from xml.etree import ElementTree as ET

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import ForbiddenError, HandlerError
from agent.handlers import GIB, check_disk_size, connection
from agent.handlers.domain_checks import check_networks
from agent.handlers.domain_xml import (
    NAME_PATTERN,
    DiskSpec,
    NicSpec,
    VmSpec,
    pick_domain_type,
    spec_to_xml,
)
from agent.hypervisor import lookup_pool
from agent.hypervisor.summaries import volume_summary
from agent.policy.domain import check_disk_image
from agent.policy.images import check_image
from agent.policy.paths import Admission, Policy

log = structlog.get_logger("agent.handlers")

# Kimchi's free-text fields: short, printable.
_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]{0,128}$"
# A cdrom is an absolute image path, or POOL/VOLUME.
_VOLUME_REF_PATTERN = NAME_PATTERN.removesuffix("$") + "/" + NAME_PATTERN.removeprefix("^")


class TemplateDisk(BaseModel):
    """One disk of a template: a new volume of `size` GB, or a copy of `volume`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    index: int = Field(default=0, ge=0, le=25, description="the disk's place (vda, vdb, ...)")
    size: int | None = Field(default=None, ge=1, description="GB: a new, empty volume")
    volume: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="a volume of the pool, copied per VM"
    )
    format: Literal["qcow2", "raw"] = "qcow2"

    @model_validator(mode="after")
    def _one_source(self) -> TemplateDisk:
        if (self.size is None) == (self.volume is None):
            raise ValueError("give exactly one of size or volume")
        return self


class TemplateSpec(BaseModel):
    """A VM template: Kimchi's fields (memory in MiB, disk sizes in GB)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=NAME_PATTERN)
    folder: list[str] = Field(default_factory=list, max_length=16)
    icon: str | None = Field(default=None, pattern=_TEXT_PATTERN)
    os_distro: str = Field(default="unknown", pattern=_TEXT_PATTERN)
    os_version: str = Field(default="unknown", pattern=_TEXT_PATTERN)
    cpus: int = Field(default=1, ge=1, le=1024)
    memory: int = Field(default=1024, ge=16, le=16 * 1024 * 1024, description="MiB")
    cdrom: str | None = Field(
        default=None,
        max_length=4096,
        description="an ISO: an image path under the image roots, or POOL/VOLUME",
    )
    disks: list[TemplateDisk] = Field(
        default_factory=lambda: [TemplateDisk(index=0, size=10)], max_length=26
    )
    networks: list[str] = Field(default_factory=lambda: ["default"], max_length=16)
    storagepool: str = Field(default="default", pattern=NAME_PATTERN)
    graphics: Literal["vnc", "none"] = "vnc"

    @model_validator(mode="after")
    def _distinct(self) -> TemplateSpec:
        indexes = [disk.index for disk in self.disks]
        if len(set(indexes)) != len(indexes):
            raise ValueError("each disk needs its own index")
        for network in self.networks:
            NicSpec(network=network)  # the NIC spec's own name rule
        for folder in self.folder:
            if not 0 < len(folder) <= 64 or any(ord(c) < 32 for c in folder):
                raise ValueError("a folder is 1-64 printable characters")
        if self.cdrom is not None and not self.cdrom.startswith("/"):
            TemplateCdrom.model_validate({"ref": self.cdrom})
        return self


class TemplateCdrom(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    ref: str = Field(pattern=_VOLUME_REF_PATTERN)


def check_template(policy: Policy, spec: TemplateSpec, *, prefix: str, max_disk_gb: int) -> None:
    """The template under the path policy vm.define's disks pass: its CD-ROM image under
    an image root (checked when it exists), disk sizes within max_disk_size_gb."""
    if spec.cdrom is not None and spec.cdrom.startswith("/"):
        check_disk_image(policy, spec.cdrom, field=f"{prefix}cdrom", fmt="raw")
    for index, disk in enumerate(spec.disks):
        if disk.size is not None and disk.size > max_disk_gb:
            raise ForbiddenError(
                f"{prefix}disks.{index}.size: {disk.size} GB is over this host's "
                f"max_disk_size_gb ({max_disk_gb})",
                field=f"{prefix}disks.{index}.size",
                reason="over max_disk_size_gb",
            )


class CreatePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=NAME_PATTERN, description="the new VM's name")
    template: TemplateSpec = Field(description="the template, as it was when submitted")
    storagepool: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="default: the template's"
    )

    @property
    def pool(self) -> str:
        return self.storagepool or self.template.storagepool


def admit_create(payload: CreatePayload, gate: Admission) -> None:
    """vm.create's intake check: the template's CD-ROM image, as vm.define's disks."""
    if payload.template.cdrom is not None and payload.template.cdrom.startswith("/"):
        check_disk_image(
            gate.policy, payload.template.cdrom, field="payload.data.template.cdrom", fmt="raw"
        )


def _volume_xml(name: str, capacity: int, fmt: str) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(root, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt)
    return ET.tostring(root, encoding="unicode")


def _cdrom_path(conn: Any, ref: str) -> str:
    pool_name, _, volume = ref.partition("/")
    return str(lookup_pool(conn, pool_name).storageVolLookupByName(volume).path())


def _create_volumes(conn: Any, payload: CreatePayload, created: list[Any]) -> list[DiskSpec]:
    """The VM's disk volumes, in index order (each appended to `created` once made)."""
    pool = lookup_pool(conn, payload.pool)
    existing = set(pool.listVolumes())
    disks = []
    for disk in sorted(payload.template.disks, key=lambda d: d.index):
        name = f"{payload.name}-disk{disk.index}.{disk.format}"
        field = f"payload.data.template.disks.{disk.index}"
        if name in existing:
            raise HandlerError(f"volume {payload.pool}/{name} exists", field=field, reason="exists")
        if disk.size is not None:
            vol = pool.createXML(_volume_xml(name, disk.size * GIB, disk.format), 0)
        else:
            source = pool.storageVolLookupByName(disk.volume)
            capacity = source.info()[1]
            vol = pool.createXMLFrom(_volume_xml(name, capacity, disk.format), source, 0)
        created.append(vol)
        disks.append(DiskSpec(path=vol.path(), format=disk.format))
    return disks


@handler(
    "vm.create",
    payload=CreatePayload,
    rerun_safe=False,
    resource=lambda p: f"domain:{p.name}",
    admit=admit_create,
)
async def create(payload: CreatePayload, ctx: JobContext) -> dict[str, Any]:
    """Create a VM from a template: its volumes in the storage pool, then its definition."""
    template = payload.template
    for disk in template.disks:
        if disk.size is not None:
            check_disk_size(ctx, disk.size * GIB, field=f"payload.data.template.disks.{disk.index}")
    hv = connection(ctx)
    cdrom = template.cdrom
    if cdrom is not None and not cdrom.startswith("/"):
        cdrom = await hv.call(_cdrom_path, cdrom)
    if cdrom is not None:
        # Again as the job runs, with what the image names (agent.policy.images).
        try:
            await trio.to_thread.run_sync(
                partial(
                    check_image, ctx.get(Policy), cdrom, "raw", field="payload.data.template.cdrom"
                )
            )
        except ForbiddenError as exc:
            if exc.details.get("reason") != "no such file":
                raise
    created: list[Any] = []

    def run(conn: Any) -> dict[str, Any]:
        if payload.name in {dom.name() for dom in conn.listAllDomains(0)}:
            raise HandlerError(
                f"a VM named {payload.name!r} exists", field="payload.data.name", reason="exists"
            )
        disks = _create_volumes(conn, payload, created)
        if cdrom is not None:
            disks.append(DiskSpec(path=cdrom, format="raw", device="cdrom", bus="sata"))
        spec = VmSpec(
            name=payload.name,
            memory_mib=template.memory,
            vcpus=template.cpus,
            disks=disks,
            networks=[NicSpec(network=network) for network in template.networks],
            graphics=template.graphics,
        )
        check_networks(conn, spec, "")
        kind, arch = pick_domain_type(conn.getCapabilities(), None)
        dom = conn.defineXML(spec_to_xml(spec, kind, arch))
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "template": template.name,
            "storagepool": payload.pool,
            "volumes": [{"pool": payload.pool, **volume_summary(vol)} for vol in created],
            "changed": True,
        }

    try:
        return await hv.call(run)
    except BaseException:
        if created:
            # Even when cancelled; bounded, so a hung libvirt cannot hold a shutdown.
            with trio.move_on_after(30, shield=True):
                await hv.call(_remove_volumes, created)
        raise


def _remove_volumes(conn: Any, volumes: list[Any]) -> None:
    for vol in volumes:
        try:
            vol.delete(0)
        except Exception as exc:  # noqa: BLE001 (libvirtError; the failure that led here is raised)
            log.warning("vm.create.cleanup_failed", volume=vol.name(), error=str(exc))


HANDLERS = (create,)
