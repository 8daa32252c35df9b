"""What libvirt says this host can do, summarised for capability discovery."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import structlog

from agent.errors import HypervisorError
from agent.hypervisor import LibvirtConnection

log = structlog.get_logger("agent.hypervisor.facts")


async def libvirt_facts(hv: LibvirtConnection) -> dict[str, Any]:
    """Capability facts: hypervisor type and version, libvirt version, host and
    domain capabilities summarised (hypervisor None while libvirt is unreachable)."""
    down = {"hypervisor": None, "libvirt": {"uri": hv.uri, "connected": False}}
    try:
        kind, version, lib_version, host = await hv.call(
            lambda conn: (
                conn.getType(),
                conn.getVersion(),
                conn.getLibVersion(),
                conn.getCapabilities(),
            )
        )
        try:
            domain = summarize_domain_capabilities(
                await hv.call(lambda conn: conn.getDomainCapabilities())
            )
        except HypervisorError as exc:
            if exc.reason == "unavailable":
                raise
            # The test driver has none; a host without the default emulator neither.
            domain = {"unavailable": exc.message}
    except HypervisorError as exc:
        if hv.connected:
            log.warning("libvirt.facts_failed", error=exc.message)
        return down
    return {
        "features": ["libvirt"],
        "hypervisor": {"type": kind, "version": version_text(version)},
        "libvirt": {
            "uri": hv.uri,
            "connected": True,
            "version": version_text(lib_version),
            "host": summarize_capabilities(host),
            "domain": domain,
        },
    }


def version_text(number: int) -> str:
    """libvirt's packed version (major * 1_000_000 + minor * 1_000 + release) as text."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


def _text(node: ET.Element | None, path: str) -> str | None:
    found = node.find(path) if node is not None else None
    return found.text if found is not None and found.text else None


def summarize_capabilities(xml: str) -> dict[str, Any]:
    """Host CPU, topology and the guests this hypervisor can run."""
    root = ET.fromstring(xml)  # noqa: S314 (from libvirtd, not from a job)
    cpu = root.find("host/cpu")
    topology = cpu.find("topology") if cpu is not None else None
    guests = []
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        machines = sorted({m.text for m in arch.iter("machine") if m.text})
        guests.append(
            {
                "os_type": _text(guest, "os_type"),
                "arch": arch.get("name"),
                "emulator": _text(arch, "emulator"),
                "domain_types": sorted({d.get("type", "") for d in arch.findall("domain")}),
                "machines": machines,
            }
        )
    return {
        "arch": _text(cpu, "arch"),
        "cpu_model": _text(cpu, "model"),
        "cpu_vendor": _text(cpu, "vendor"),
        "topology": dict(topology.attrib) if topology is not None else None,
        "numa_cells": len(root.findall("host/topology/cells/cell")),
        "security_models": [m.text for m in root.findall("host/secmodel/model") if m.text],
        "guests": guests,
    }


def _values(node: ET.Element | None, enum: str) -> list[str]:
    if node is None:
        return []
    return [v.text for v in node.findall(f"enum[@name='{enum}']/value") if v.text]


def summarize_domain_capabilities(xml: str) -> dict[str, Any]:
    """What a domain of the default emulator can use: CPU modes and model, firmware, buses."""
    root = ET.fromstring(xml)  # noqa: S314 (from libvirtd, not from a job)
    vcpu = root.find("vcpu")
    modes = [
        mode.get("name", "") for mode in root.findall("cpu/mode") if mode.get("supported") == "yes"
    ]
    return {
        "emulator": _text(root, "path"),
        "domain_type": _text(root, "domain"),
        "machine": _text(root, "machine"),
        "arch": _text(root, "arch"),
        "max_vcpus": int(vcpu.get("max", "0")) if vcpu is not None else None,
        "cpu_modes": modes,
        "cpu_model": _text(root, "cpu/mode[@name='host-model']/model"),
        "firmware": _values(root.find("os"), "firmware"),
        "disk_buses": _values(root.find("devices/disk"), "bus"),
        "video_models": _values(root.find("devices/video"), "modelType"),
    }
