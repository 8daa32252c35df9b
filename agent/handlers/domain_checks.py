"""vm.define's checks when the job runs: what the disks' images name, and the NICs' networks.

The intake check (agent.policy.domain) saw the definition; these see the host
as the job runs: each existing disk image is opened again through the path
policy and every file it names is checked (today image.verified_chain, behind
the one call in check_disk_images: the image opener of agent.policy.images
replaces it), and each NIC's libvirt network must exist.
"""

from __future__ import annotations

from typing import Any

from agent.core.context import JobContext
from agent.errors import ForbiddenError, HandlerError, HypervisorError
from agent.handlers.domain_xml import VmSpec
from agent.handlers.image import verified_chain
from agent.hypervisor import lookup_network
from agent.policy.domain import disk_files, network_names
from agent.policy.paths import Policy


def _disks(spec: VmSpec | None, xml: str | None) -> list[tuple[str, str, str]]:
    """(file, format, field) of each file disk the definition names."""
    if spec is not None:
        return [
            (disk.path, disk.format, f"payload.data.spec.disks.{index}.path")
            for index, disk in enumerate(spec.disks)
        ]
    return [(path, fmt, "payload.data.xml") for path, fmt in disk_files(xml or "")]


async def check_disk_images(ctx: JobContext, spec: VmSpec | None, xml: str | None) -> None:
    """The image check when the job runs: each disk's file again, and every file its image
    names (image.verified_chain; agent.policy.images' opener replaces this one call). A
    file that does not exist yet is left for libvirt to refuse when the domain starts."""
    policy = ctx.get(Policy)
    for path, fmt, field in _disks(spec, xml):
        try:
            policy.check_input(path, field=field)
        except ForbiddenError as exc:
            if exc.details.get("reason") == "no such file":
                continue
            raise
        try:
            chain = await verified_chain(ctx, path, fmt)
        except ForbiddenError as exc:
            message = exc.message.removeprefix("payload.data.path: ")
            reason = exc.details.get("reason")
            raise ForbiddenError(f"{field}: {message}", field=field, reason=reason) from exc
        for image in chain:
            data_file = image.get("format-specific", {}).get("data", {}).get("data-file")
            if data_file:
                raise ForbiddenError(
                    f"{field}: {image.get('filename')} names an external data file",
                    field=field,
                    reason="qcow2 external data files are refused (not checked)",
                )


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
