"""network.*: libvirt virtual networks (list, info, define, start, stop, delete, autostart).

As for domains and pools, an action that finds the network already where it
would move it answers `changed: false`, so retrying is safe.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.handlers import connection, missing_is_done
from agent.handlers.domain_xml import NAME_PATTERN
from agent.hypervisor import lookup_network
from agent.hypervisor.summaries import network_summary
from agent.policy.domain import BRIDGE_PATTERN, NETWORK_XML_RULES, admit_network


class NetworkRef(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(min_length=1, description="the network's name")

    def lookup(self, conn: Any) -> Any:
        return lookup_network(conn, self.name)


def network_resource(ref: NetworkRef) -> str:
    return f"network:{ref.name}"


class NetworkListPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


@handler("network.list", payload=NetworkListPayload, rerun_safe=True)
async def network_list(payload: NetworkListPayload, ctx: JobContext) -> dict[str, Any]:
    """Every virtual network with its state, forwarding and addresses."""
    networks = await connection(ctx).call(
        lambda conn: sorted(
            (network_summary(net) for net in conn.listAllNetworks(0)), key=lambda n: n["name"]
        )
    )
    return {"networks": networks, "total": len(networks)}


@handler("network.info", payload=NetworkRef, rerun_safe=True, resource=network_resource)
async def network_info(payload: NetworkRef, ctx: JobContext) -> dict[str, Any]:
    """One network: state, forward mode, bridge, addresses and DHCP range."""
    return await connection(ctx).call(lambda conn: network_summary(payload.lookup(conn)))


class NetworkDefinePayload(BaseModel):
    """A small network spec (or complete XML) that network.define turns into a network."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=NAME_PATTERN)
    xml: str | None = Field(default=None, description=NETWORK_XML_RULES)
    forward: Literal["nat", "route", "isolated"] = "nat"
    bridge: str | None = Field(default=None, pattern=BRIDGE_PATTERN)
    ipv4_address: ipaddress.IPv4Interface | None = Field(
        default=None, description="the host's address and prefix on it, e.g. 192.168.150.1/24"
    )
    dhcp: bool = Field(default=True, description="serve DHCP over the rest of the subnet")
    start: bool = True
    autostart: bool = False

    @model_validator(mode="after")
    def _xml_names_it(self) -> NetworkDefinePayload:
        if self.xml is not None:
            try:
                root = ET.fromstring(self.xml)  # noqa: S314 (expat expands no external entities)
            except ET.ParseError as exc:
                raise ValueError(f"not well-formed XML: {exc}") from exc
            if root.tag != "network" or root.findtext("name") != self.name:
                raise ValueError("xml must be a <network> whose <name> is `name`")
        return self


def network_xml(spec: NetworkDefinePayload, uuid: str | None) -> str:
    if spec.xml is not None:
        return spec.xml
    root = ET.Element("network")
    ET.SubElement(root, "name").text = spec.name
    if uuid is not None:  # redefining keeps the network's identity
        ET.SubElement(root, "uuid").text = uuid
    if spec.forward != "isolated":
        ET.SubElement(root, "forward", mode=spec.forward)
    if spec.bridge is not None:
        ET.SubElement(root, "bridge", name=spec.bridge, stp="on", delay="0")
    if spec.ipv4_address is not None:
        subnet, host = spec.ipv4_address.network, spec.ipv4_address.ip
        ip = ET.SubElement(root, "ip", address=str(host), prefix=str(subnet.prefixlen))
        span = _dhcp_range(subnet, host) if spec.dhcp else None
        if span is not None:
            ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=span[0], end=span[1])
    return ET.tostring(root, encoding="unicode")


def _dhcp_range(
    subnet: ipaddress.IPv4Network, host: ipaddress.IPv4Address
) -> tuple[str, str] | None:
    """The subnet's usable addresses on the far side of the host's, or None if too small."""
    # In integers: a /31 or /32 at either end of the address space has no usable range,
    # and an IPv4Address one below 0.0.0.0 raised (found by the spec's property test).
    first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    address = int(host)
    start, end = (first, address - 1) if address == last else (max(first, address + 1), last)
    if end <= start:
        return None
    return str(ipaddress.IPv4Address(start)), str(ipaddress.IPv4Address(end))


@handler(
    "network.define",
    payload=NetworkDefinePayload,
    rerun_safe=True,
    resource=lambda p: f"network:{p.name}",
    admit=admit_network,
)
async def network_define(payload: NetworkDefinePayload, ctx: JobContext) -> dict[str, Any]:
    """Define (or redefine) a virtual network, then start and autostart it as asked."""

    def run(conn: Any) -> dict[str, Any]:
        existing = {net.name(): net.UUIDString() for net in conn.listAllNetworks(0)}
        net = conn.networkDefineXML(network_xml(payload, existing.get(payload.name)))
        if payload.start and not net.isActive():
            net.create()
        net.setAutostart(int(payload.autostart))
        return {**network_summary(net), "created": payload.name not in existing}

    return await connection(ctx).call(run)


@handler("network.start", payload=NetworkRef, rerun_safe=True, resource=network_resource)
async def network_start(payload: NetworkRef, ctx: JobContext) -> dict[str, Any]:
    """Start a network; an active one is left as it is."""

    def run(conn: Any) -> dict[str, Any]:
        net = payload.lookup(conn)
        changed = not net.isActive()
        if changed:
            net.create()
        return {**network_summary(net), "changed": changed}

    return await connection(ctx).call(run)


@handler("network.stop", payload=NetworkRef, rerun_safe=True, resource=network_resource)
async def network_stop(payload: NetworkRef, ctx: JobContext) -> dict[str, Any]:
    """Stop a network (its guests lose connectivity); an inactive one is left as it is."""

    def run(conn: Any) -> dict[str, Any]:
        net = payload.lookup(conn)
        changed = bool(net.isActive())
        if changed:
            net.destroy()
        return {**network_summary(net), "changed": changed}

    return await connection(ctx).call(run)


@handler("network.delete", payload=NetworkRef, rerun_safe=True, resource=network_resource)
async def network_delete(payload: NetworkRef, ctx: JobContext) -> dict[str, Any]:
    """Stop and undefine a network; a missing one is success."""

    def run(conn: Any) -> dict[str, Any]:
        net = payload.lookup(conn)
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
        return {"name": payload.name, "changed": True}

    return await missing_is_done(connection(ctx).call(run), {"name": payload.name})


class NetworkAutostartPayload(NetworkRef):
    enabled: bool = True


@handler(
    "network.autostart",
    payload=NetworkAutostartPayload,
    rerun_safe=True,
    resource=network_resource,
)
async def network_autostart(payload: NetworkAutostartPayload, ctx: JobContext) -> dict[str, Any]:
    """Turn starting the network when libvirtd starts on or off."""

    def run(conn: Any) -> dict[str, Any]:
        net = payload.lookup(conn)
        before = bool(net.autostart())
        if before != payload.enabled:
            net.setAutostart(int(payload.enabled))
        return {**network_summary(net), "changed": before != payload.enabled}

    return await connection(ctx).call(run)


HANDLERS = (
    network_list,
    network_info,
    network_define,
    network_start,
    network_stop,
    network_delete,
    network_autostart,
)
