"""vm.define's checks when the job runs: what the disks' images name, and the NICs' networks.

The intake check (agent.policy.domain) saw the definition; these see the host
as the job runs: each existing disk image is opened again through the path
policy and every file it names is checked (agent.policy.images.check_image),
and each NIC's libvirt network must exist.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from agent.core.context import JobContext
from agent.errors import ForbiddenError, HandlerError, HypervisorError, NotFoundError
from agent.handlers.domain_xml import VmSpec
from agent.hypervisor import lookup_network
from agent.policy.domain import disk_files, network_names
from agent.policy.images import check_image
from agent.policy.paths import Policy


def _disks(spec: VmSpec | None, xml: str | None, *, defined: bool) -> list[tuple[str, str, str]]:
    """(file, format, field) of each file disk the definition names (a defined domain's
    disks are named by their place in libvirt's XML)."""
    if spec is not None:
        return [
            (disk.path, disk.format, f"payload.data.spec.disks.{index}.path")
            for index, disk in enumerate(spec.disks)
        ]
    files = disk_files(xml or "")
    if defined:
        return [
            (path, fmt, f"domain.devices.disk.{index}.source.file")
            for index, (path, fmt) in enumerate(files)
        ]
    return [(path, fmt, "payload.data.xml") for path, fmt in files]


async def check_disk_images(
    ctx: JobContext, spec: VmSpec | None, xml: str | None, *, defined: bool = False
) -> None:
    """The image check when the job runs: each disk's file again, and every file its image
    names (agent.policy.images, with the format libvirt will give qemu). A file that does
    not exist yet is left for libvirt to refuse when the domain starts. `defined`: the
    disks of a domain already defined (vm.start), where a disk outside the roots was put
    there with passthrough by an admin, or not by the agent: left alone."""
    policy = ctx.get(Policy)
    for path, fmt, field in _disks(spec, xml, defined=defined):
        if defined:
            try:
                policy.locate(path, field=field)
            except ForbiddenError:
                continue
        try:
            await trio.to_thread.run_sync(partial(check_image, policy, path, fmt, field=field))
        except NotFoundError:
            continue


def check_networks(conn: Any, spec: VmSpec | None, xml: str) -> None:
    """Each NIC's libvirt network exists (blocking: inside LibvirtConnection.call)."""
    if spec is not None:
        wanted = [
            (nic.network, f"payload.data.spec.networks.{index}.network")
            for index, nic in enumerate(spec.networks)
            if nic.network is not None
        ]
    else:
        wanted = [(name, "payload.data.xml") for name in network_names(xml)]
    for name, field in wanted:
        try:
            lookup_network(conn, name)
        except HypervisorError as exc:
            if exc.reason != "not_found":
                raise
            raise HandlerError(exc.message, field=field, reason="no such network") from exc
