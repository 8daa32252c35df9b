"""Domain XML: built from the small JSON spec of vm.define, read back for vm.info."""

from __future__ import annotations

from typing import Any, Literal
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.policy.domain import BRIDGE_PATTERN, MAC_PATTERN, NAME_PATTERN, WORD_PATTERN

__all__ = [  # NAME_PATTERN: the specs' name pattern, the policy's own
    "NAME_PATTERN",
    "DiskSpec",
    "NicSpec",
    "VmSpec",
    "describe_devices",
    "domain_name",
    "pick_domain_type",
    "snapshot_xml",
    "spec_to_xml",
    "with_uuid",
]

_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}


class DiskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        description="An image file under an image root (policy.image_roots or a pool's "
        "directory); no block devices, no symbolic links, no '..'"
    )
    format: Literal["qcow2", "raw"] = "qcow2"
    device: Literal["disk", "cdrom"] = "disk"
    bus: Literal["virtio", "sata", "scsi", "ide"] = "virtio"
    readonly: bool = False


class NicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    network: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="A libvirt network (it must exist)"
    )
    bridge: str | None = Field(default=None, pattern=BRIDGE_PATTERN, description="A host bridge")
    model: str = Field(default="virtio", pattern=WORD_PATTERN)
    mac: str | None = Field(default=None, pattern=MAC_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> NicSpec:
        if (self.network is None) == (self.bridge is None):
            raise ValueError("give exactly one of network or bridge")
        return self


class VmSpec(BaseModel):
    """The small spec vm.define turns into domain XML."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=NAME_PATTERN)
    memory_mib: int = Field(ge=16, le=16 * 1024 * 1024)
    vcpus: int = Field(default=1, ge=1, le=1024)
    disks: list[DiskSpec] = Field(default_factory=list)
    networks: list[NicSpec] = Field(default_factory=list)
    domain_type: str | None = Field(
        default=None,
        pattern=WORD_PATTERN,
        description="kvm, qemu, ...; default: the best this host offers",
    )
    arch: str | None = Field(default=None, pattern=WORD_PATTERN, description="default: the host's")
    machine: str | None = Field(default=None, pattern=WORD_PATTERN)
    graphics: Literal["vnc", "none"] = "vnc"
    autostart: bool = False


def domain_name(xml: str) -> str:
    """The <name> of a domain XML document; ValueError if it has none."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 (expat does not expand external entities)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    name = root.findtext("name")
    if root.tag != "domain" or not name:
        raise ValueError("expected a <domain> element with a <name>")
    return name


def with_uuid(xml: str, uuid: str) -> str:
    """The XML with `uuid` filled in when it names none (redefining keeps the identity)."""
    root = ET.fromstring(xml)  # noqa: S314 (checked at intake by domain_name)
    if root.find("uuid") is not None:
        return xml
    ET.SubElement(root, "uuid").text = uuid
    return ET.tostring(root, encoding="unicode")


def spec_to_xml(spec: VmSpec, domain_type: str, arch: str | None) -> str:
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_node = ET.SubElement(root, "os")
    os_type = ET.SubElement(os_node, "type")
    os_type.text = "hvm"
    if arch:
        os_type.set("arch", arch)
    if spec.machine:
        os_type.set("machine", spec.machine)
    ET.SubElement(os_node, "boot", dev="hd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    devices = ET.SubElement(root, "devices")
    used: dict[str, int] = {}
    for disk in spec.disks:
        prefix = _BUS_PREFIX[disk.bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        node = ET.SubElement(devices, "disk", type="file", device=disk.device)
        ET.SubElement(node, "driver", name="qemu", type=disk.format)
        ET.SubElement(node, "source", file=disk.path)
        ET.SubElement(node, "target", dev=prefix + _disk_letters(index), bus=disk.bus)
        if disk.readonly or disk.device == "cdrom":
            ET.SubElement(node, "readonly")
    for nic in spec.networks:
        kind = "network" if nic.network else "bridge"
        node = ET.SubElement(devices, "interface", type=kind)
        ET.SubElement(node, "source", {kind: nic.network or nic.bridge or ""})
        ET.SubElement(node, "model", type=nic.model)
        if nic.mac:
            ET.SubElement(node, "mac", address=nic.mac)
    if spec.graphics == "vnc":
        ET.SubElement(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    return ET.tostring(root, encoding="unicode")


def _disk_letters(index: int) -> str:
    """libvirt's disk names after the bus prefix: a..z, aa..zz, aaa..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def pick_domain_type(capabilities_xml: str, arch: str | None) -> tuple[str, str | None]:
    """The best domain type (kvm over qemu over anything) for `arch` (default: the host's)."""
    root = ET.fromstring(capabilities_xml)  # noqa: S314 (from libvirtd)
    wanted = arch or root.findtext("host/cpu/arch")
    offered: set[str] = set()
    for guest in root.findall("guest"):
        node = guest.find("arch")
        if guest.findtext("os_type") == "hvm" and node is not None and node.get("name") == wanted:
            offered.update(d.get("type", "") for d in node.findall("domain"))
    for preferred in ("kvm", "qemu", *sorted(offered)):
        if preferred in offered:
            return preferred, wanted
    raise ValueError(f"this host offers no hvm guests for arch {wanted}")


def describe_devices(xml: str) -> dict[str, Any]:
    """Disks and NICs of a domain, from its XML."""
    root = ET.fromstring(xml)  # noqa: S314 (from libvirtd)
    disks = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        disks.append(
            {
                "device": disk.get("device"),
                "type": disk.get("type"),
                "source": _source(source),
                "target": target.get("dev") if target is not None else None,
                "bus": target.get("bus") if target is not None else None,
                "format": driver.get("type") if driver is not None else None,
                "readonly": disk.find("readonly") is not None,
            }
        )
    nics = []
    for nic in root.findall("devices/interface"):
        source = nic.find("source")
        nics.append(
            {
                "type": nic.get("type"),
                "mac": _attr(nic, "mac", "address"),
                "source": _source(source),
                "model": _attr(nic, "model", "type"),
                "target": _attr(nic, "target", "dev"),
            }
        )
    return {"disks": disks, "nics": nics}


def snapshot_xml(name: str | None, description: str | None) -> str:
    root = ET.Element("domainsnapshot")
    if name:
        ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    return ET.tostring(root, encoding="unicode")


def _attr(node: ET.Element, child: str, attr: str) -> str | None:
    found = node.find(child)
    return found.get(attr) if found is not None else None


def _source(source: ET.Element | None) -> str | None:
    if source is None:
        return None
    for key in ("file", "dev", "volume", "network", "bridge", "name", "dir"):
        if key in source.attrib:
            pool = source.get("pool")
            return f"{pool}/{source.get(key)}" if key == "volume" and pool else source.get(key)
    return None
