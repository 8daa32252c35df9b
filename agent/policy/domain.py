"""The domain and network policy: what a submitted definition may reach on the host.

libvirt (and qemu, often as root) does whatever the XML says, and a list of
forbidden things always misses one. So a definition from anyone but an admin
on a host that allows passthrough is walked, every element and attribute,
against an allowlist (agent.policy.xml_allowlist) of what vm.define's and
network.define's own specs generate: for a domain, one `<devices>` with file
disks whose images pass the image check, plain NICs, VNC or SPICE on a
loopback TCP port; for a network, NAT/routed/isolated with a bridge, an IPv4
address and a DHCP range. No security label, no qemu or dnsmasq namespace, no
host device, socket, file or directory. Everything else needs the `admin`
scope and `policy.allow_passthrough`; file disks are checked for everyone.
"""

from __future__ import annotations

import contextlib
from typing import Any
from xml.etree import ElementTree as ET

from agent.errors import ForbiddenError, NotFoundError
from agent.policy.images import check_image
from agent.policy.paths import Admission, Policy
from agent.policy.xml_allowlist import (
    Allowed,
    Allowlist,
    Check,
    check_xml,
    integer,
    ip_address,
    loopback,
    matches,
    one_of,
)

# A libvirt object name (domains, networks, pools): also the specs' pattern.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
# A Linux interface name (a bridge).
BRIDGE_PATTERN = r"^[A-Za-z0-9_.-]{1,15}$"
# Short machine words: domain types (kvm, qemu, test), arches, NIC models.
WORD_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
MAC_PATTERN = r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"
_UUID_PATTERN = r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}"
_DISK_TARGET_PATTERN = r"(vd|sd|hd)[a-z]{1,3}"
_MEMORY_UNITS = ("b", "bytes", "KB", "k", "KiB", "MB", "M", "MiB", "GB", "G", "GiB", "TB", "T")

_NEEDS = "anything else needs an admin token and policy.allow_passthrough"
DOMAIN_XML_RULES = (
    "A complete libvirt domain XML. Without an admin token on a host with "
    "policy.allow_passthrough it may hold only what the spec generates: one <devices> with "
    "file disks (qcow2 or raw) under the image roots, network or bridge NICs, VNC or SPICE "
    "on a loopback TCP port; no seclabel, no qemu: namespace, nothing else"
)
NETWORK_XML_RULES = (
    "a complete libvirt network XML instead; without an admin token on a host with "
    "policy.allow_passthrough it may hold only what the spec generates: name, uuid, "
    "<forward mode='nat|route'>, <bridge>, one IPv4 <ip> with a DHCP <range>"
)


def _name(what: str) -> Check:
    return matches(NAME_PATTERN, what)


def domain_allowlist(image: Check) -> Allowlist:
    """What spec_to_xml generates (agent.handlers.domain_xml), plus SPICE and a port;
    `image` checks a disk's source file."""
    listen = {"type": one_of("address"), "address": loopback}
    return {
        "domain": Allowed({"type": matches(WORD_PATTERN, "a domain type")}),
        "domain/name": Allowed(text=_name("a domain name")),
        "domain/uuid": Allowed(text=matches(_UUID_PATTERN, "a UUID")),
        "domain/memory": Allowed(
            {"unit": one_of(*_MEMORY_UNITS)}, text=matches(r"[0-9]{1,20}", "a number")
        ),
        "domain/vcpu": Allowed(text=integer(1, 1024)),
        "domain/os": Allowed(),
        "domain/os/type": Allowed(
            {
                "arch": matches(WORD_PATTERN, "an architecture"),
                "machine": matches(WORD_PATTERN, "a machine type"),
            },
            text=one_of("hvm"),
        ),
        "domain/os/boot": Allowed({"dev": one_of("hd", "cdrom")}, repeats=True),
        "domain/features": Allowed(),
        "domain/features/acpi": Allowed(),
        "domain/devices": Allowed(),
        "domain/devices/disk": Allowed(
            {"type": one_of("file"), "device": one_of("disk", "cdrom")}, repeats=True
        ),
        "domain/devices/disk/driver": Allowed(
            {"name": one_of("qemu"), "type": one_of("qcow2", "raw")}
        ),
        "domain/devices/disk/source": Allowed({"file": image}),
        "domain/devices/disk/target": Allowed(
            {
                "dev": matches(_DISK_TARGET_PATTERN, "a disk name such as vda"),
                "bus": one_of("virtio", "sata", "scsi", "ide"),
            }
        ),
        "domain/devices/disk/readonly": Allowed(),
        "domain/devices/interface": Allowed({"type": one_of("network", "bridge")}, repeats=True),
        "domain/devices/interface/source": Allowed(
            {"network": _name("a network name"), "bridge": matches(BRIDGE_PATTERN, "a bridge")}
        ),
        "domain/devices/interface/model": Allowed({"type": matches(WORD_PATTERN, "a model")}),
        "domain/devices/interface/mac": Allowed({"address": matches(MAC_PATTERN, "a MAC")}),
        "domain/devices/graphics": Allowed(
            {
                "type": one_of("vnc", "spice"),
                "autoport": one_of("yes", "no"),
                "port": integer(-1, 65535),
                "listen": loopback,
            }
        ),
        "domain/devices/graphics/listen": Allowed(listen),
    }


NETWORK_ALLOWLIST: Allowlist = {
    "network": Allowed(),
    "network/name": Allowed(text=_name("a network name")),
    "network/uuid": Allowed(text=matches(_UUID_PATTERN, "a UUID")),
    "network/forward": Allowed({"mode": one_of("nat", "route")}),
    "network/bridge": Allowed(
        {
            "name": matches(BRIDGE_PATTERN, "a bridge name"),
            "stp": one_of("on", "off"),
            "delay": integer(0, 600),
        }
    ),
    "network/ip": Allowed(
        {"address": ip_address(4), "prefix": integer(0, 32), "netmask": ip_address(4)}
    ),
    "network/ip/dhcp": Allowed(),
    "network/ip/dhcp/range": Allowed({"start": ip_address(4), "end": ip_address(4)}),
}


def check_disk_image(policy: Policy, path: str, *, field: str, fmt: str | None = None) -> None:
    """The image check at intake, for a disk or CD-ROM: under an image root, reached
    without a link, and if it exists the image and every file it names checked by the
    image opener (agent.policy.images; again when the job runs)."""
    with contextlib.suppress(NotFoundError):  # not there yet: checked again when the job runs
        check_image(policy, path, fmt, field=field)


def admit_define(payload: Any, gate: Admission) -> None:
    """vm.define's intake check: the spec's disks, or the whole XML."""
    if payload.spec is not None:
        for index, disk in enumerate(payload.spec.disks):
            field = f"payload.data.spec.disks.{index}.path"
            check_disk_image(gate.policy, disk.path, field=field, fmt=disk.format)
    if payload.xml is not None:
        check_domain_xml(
            gate.policy, payload.xml, field="payload.data.xml", privileged=gate.privileged
        )


def check_domain_xml(policy: Policy, xml: str, *, field: str, privileged: bool) -> None:
    """Raise ForbiddenError (naming the element and attribute) for anything not allowed."""

    def image(value: str) -> str | None:
        try:
            check_disk_image(policy, value, field=field)
        except ForbiddenError as exc:
            return f"refused: {exc.message.removeprefix(f'{field}: ')}"
        return None

    if not (privileged and policy.allow_passthrough):
        check_xml(xml, domain_allowlist(image), field=field, needs=_NEEDS)
        return
    # Passthrough takes anything but file disks, which stay under the roots for everyone.
    root = ET.fromstring(xml)  # noqa: S314 (expat does not expand external entities)
    for shown, disk in _indexed(root, "devices/disk"):
        source = disk.find("source")
        if disk.get("type", "file") == "file" and source is not None and "file" in source.attrib:
            why = image(source.get("file", ""))
            if why is not None:
                raise ForbiddenError(
                    f"{field}: {shown}/source attribute file: {why}",
                    field=field,
                    reason=why,
                    details={"element": f"{shown}/source", "attribute": "file"},
                )


def disk_files(xml: str) -> list[tuple[str, str]]:
    """(source file, format) of each file disk in a domain XML, for the run-time image
    check; the format is what libvirt uses, raw when the XML names none."""
    root = ET.fromstring(xml)  # noqa: S314 (expat does not expand external entities)
    found = []
    for _, disk in _indexed(root, "devices/disk"):
        source, driver = disk.find("source"), disk.find("driver")
        if disk.get("type", "file") == "file" and source is not None and source.get("file"):
            fmt = driver.get("type") if driver is not None else None
            found.append((source.get("file", ""), fmt or "raw"))
    return found


def network_names(xml: str) -> list[str]:
    """The libvirt networks a domain XML's NICs join."""
    root = ET.fromstring(xml)  # noqa: S314 (expat does not expand external entities)
    return [
        source.get("network", "")
        for nic in root.iterfind("devices/interface[@type='network']")
        if (source := nic.find("source")) is not None and source.get("network")
    ]


def _indexed(root: ET.Element, path: str) -> list[tuple[str, ET.Element]]:
    """Elements at `path` under every parent (libvirt reads every <devices>), each with
    its indexed path for an error."""
    parent_tag, tag = path.split("/")
    found = []
    parents = root.findall(parent_tag)
    for p_index, parent in enumerate(parents, 1):
        children = parent.findall(tag)
        for c_index, child in enumerate(children, 1):
            shown = f"/{root.tag}/{parent_tag}" + (f"[{p_index}]" if len(parents) > 1 else "")
            found.append((shown + f"/{tag}" + (f"[{c_index}]" if len(children) > 1 else ""), child))
    return found


def admit_network(payload: Any, gate: Admission) -> None:
    """network.define's intake check: a complete XML only as the spec would write it."""
    if payload.xml is None or (gate.privileged and gate.policy.allow_passthrough):
        return
    check_xml(payload.xml, NETWORK_ALLOWLIST, field="payload.data.xml", needs=_NEEDS)
