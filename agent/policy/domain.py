"""The domain policy: what a submitted domain definition may reach on the host.

libvirt (and qemu, often as root) does whatever the XML says, so a
definition is checked element by element against an allowlist: disks and
CD-ROMs are files under the image roots (agent.policy.paths) or volumes of defined
pools; host block devices, host devices, host directories, file/device/
socket character devices, scripts, custom emulators, disabled security
labels and qemu's own namespace (qemu:commandline, qemu:capabilities, ...)
are passthrough: refused unless the caller holds `admin` and the config
sets `policy.allow_passthrough`.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from agent.errors import ForbiddenError
from agent.policy.paths import Admission, Policy

DOMAIN_XML_RULES = (
    "A complete libvirt domain XML. Disks only from the image roots or volumes of defined "
    "pools; host block devices, hostdev, host directories, file/device character devices, "
    "<emulator>, qemu:commandline and other passthrough need an admin token and "
    "policy.allow_passthrough"
)
QEMU_NAMESPACE = "{http://libvirt.org/schemas/domain/qemu/1.0}"
# Devices that only describe virtual hardware.
_PLAIN_DEVICES = {
    "controller",
    "graphics",
    "video",
    "input",
    "sound",
    "memballoon",
    "watchdog",
    "panic",
    "iommu",
    "vsock",
    "audio",
    "rng",
    "tpm",
    "interface",
    "disk",
    "serial",
    "console",
    "channel",
    "parallel",
    "emulator",
}
# Character devices that open nothing on the host's filesystem.
_PLAIN_CHARDEVS = {"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent", None}
_PLAIN_NICS = {"network", "bridge", "user", None}
_RNG = {"", "/dev/urandom", "/dev/random"}


def _refuse(field: str, what: str) -> ForbiddenError:
    return ForbiddenError(
        f"{field}: {what} is not allowed",
        field=field,
        reason=f"{what} needs an admin token and policy.allow_passthrough",
    )


def check_disk_path(policy: Policy, path: str, *, field: str) -> None:
    """A disk or CD-ROM file: under an image root; if it exists, a plain file."""
    located = policy.locate(path, field=field)
    try:
        policy.check_input(located.path, field=field)
    except ForbiddenError as exc:
        if exc.details.get("reason") != "no such file":
            raise


def admit_define(payload: Any, gate: Admission) -> None:
    """vm.define's intake check: the spec's disks, or the whole XML."""
    if payload.spec is not None:
        for index, disk in enumerate(payload.spec.disks):
            check_disk_path(gate.policy, disk.path, field=f"payload.data.spec.disks.{index}.path")
    if payload.xml is not None:
        check_domain_xml(
            gate.policy, payload.xml, field="payload.data.xml", privileged=gate.privileged
        )


def check_domain_xml(policy: Policy, xml: str, *, field: str, privileged: bool) -> None:
    """Raise ForbiddenError (naming the element) for anything the policy does not allow."""
    root = ET.fromstring(xml)  # noqa: S314 (expat does not expand external entities)
    passthrough = privileged and policy.allow_passthrough
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith(QEMU_NAMESPACE) and not passthrough:
            raise _refuse(field, f"<qemu:{node.tag.removeprefix(QEMU_NAMESPACE)}>")
    if not passthrough:
        _check_passthrough(root, field)
    try:
        for tag in ("os/kernel", "os/initrd", "os/dtb"):
            for node in root.findall(tag):
                if node.text:
                    policy.check_input(node.text.strip(), field=f"<{tag}>")
        for disk in root.findall("devices/disk"):
            _check_disk(policy, disk, "<disk>", passthrough=passthrough)
    except ForbiddenError as exc:
        # The field is the XML; the element and the path go into the reason.
        raise ForbiddenError(f"{field}: {exc.message}", field=field, reason=exc.message) from exc


def _check_passthrough(root: ET.Element, field: str) -> None:
    for label in root.iter("seclabel"):
        if label.get("type") == "none" or label.get("relabel") == "no":
            raise _refuse(field, "a disabled security label")
    for node in root.iter():
        if node.tag in ("script", "backenddomain"):
            raise _refuse(field, f"<{node.tag}>")
    for tag in ("os/loader", "os/nvram"):
        found = root.find(tag)
        if found is not None and (found.text or "").strip():
            raise _refuse(field, f"a custom <{tag.split('/')[1]}> path")
    if root.find("memoryBacking/source") is not None:
        raise _refuse(field, "a file-backed <memoryBacking>")
    devices = root.find("devices")
    for device in devices if devices is not None else []:
        what = _passthrough_device(device)
        if what is not None:
            raise _refuse(field, what)


def _passthrough_device(device: ET.Element) -> str | None:
    """What makes this device reach the host, or None."""
    tag, kind = device.tag, device.get("type")
    backend = device.find("backend")
    found: str | None = None
    if tag not in _PLAIN_DEVICES:
        found = f"<{tag}>"
    elif tag == "emulator":
        found = "a custom <emulator>"
    elif tag in ("serial", "console", "channel", "parallel") and kind not in _PLAIN_CHARDEVS:
        found = f"a <{tag} type='{kind}'>"
    elif tag == "interface" and kind not in _PLAIN_NICS:
        found = f"an <interface type='{kind}'>"
    elif tag == "tpm" and (backend is None or backend.get("type") != "emulator"):
        found = "a host TPM"
    elif tag == "rng" and backend is not None and (backend.text or "").strip() not in _RNG:
        found = "an <rng> backend other than /dev/urandom"
    elif any(log.get("file") for log in device.iter("log")):
        found = "a character device <log file>"
    return found


def _check_disk(policy: Policy, disk: ET.Element, field: str, *, passthrough: bool) -> None:
    kind = disk.get("type", "file")
    source = disk.find("source")
    where = field
    if kind == "volume":
        return  # a volume of a defined pool: pools themselves only lie under the roots
    if kind == "file":
        if disk.find("backingStore/source") is not None and not passthrough:
            raise _refuse(where, "an explicit <backingStore>")
        if source is not None and source.get("file"):
            check_disk_path(policy, source.get("file", ""), field=where)
        return
    if not passthrough:
        raise _refuse(where, f"a <disk type='{kind}'> (host block device, directory or network)")


# Forward modes that stay inside libvirt's own bridge; the others hand host NICs
# or PCI devices to guests.
_PLAIN_FORWARDS = {None, "nat", "route", "open"}


def admit_network(payload: Any, gate: Admission) -> None:
    """network.define's intake check: a complete XML must not reach the host."""
    if payload.xml is None or (gate.privileged and gate.policy.allow_passthrough):
        return
    field = "payload.data.xml"
    root = ET.fromstring(payload.xml)  # noqa: S314 (expat does not expand external entities)
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            # e.g. dnsmasq:options, which can make dnsmasq run any script as root
            raise _refuse(field, f"<{node.tag.partition('}')[2]}> of another namespace")
    forward = root.find("forward")
    if forward is not None and forward.get("mode") not in _PLAIN_FORWARDS:
        raise _refuse(field, f"<forward mode='{forward.get('mode')}'>")
    if forward is not None and (forward.get("dev") or forward.find("interface") is not None):
        raise _refuse(field, "forwarding through a named host interface")
