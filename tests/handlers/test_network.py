"""network.* handlers on libvirt's test:///default driver (it has the `default` network)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from agent.config import Config
from agent.errors import ForbiddenError, ValidationError
from agent.handlers.network import _dhcp_range
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, job_document, ok


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False)})


async def test_list_and_info_read_the_default_network(agent: Agent) -> None:
    listed = await ok(agent, "network.list", {})
    assert listed["total"] == len(listed["networks"])
    default = await ok(agent, "network.info", {"name": "default"})
    assert default in listed["networks"]
    assert (default["forward"], default["bridge"], default["state"]) == ("nat", "virbr0", "active")
    assert default["ips"] == [
        {
            "family": "ipv4",
            "address": "192.168.122.1",
            "prefix": 24,
            "dhcp_start": "192.168.122.2",
            "dhcp_end": "192.168.122.254",
        }
    ]


@pytest.mark.slow
async def test_define_start_stop_autostart_delete(agent: Agent) -> None:
    name = f"net-{uuid.uuid4().hex[:6]}"
    spec = {"name": name, "forward": "isolated", "ipv4_address": "10.9.8.254/24", "start": False}
    defined = await ok(agent, "network.define", spec)
    assert (defined["created"], defined["state"], defined["forward"]) == (
        True,
        "inactive",
        "isolated",
    )
    # The host's address is the subnet's last: DHCP gets the addresses below it.
    assert defined["ips"][0]["dhcp_start"] == "10.9.8.1"
    assert defined["ips"][0]["dhcp_end"] == "10.9.8.253"
    again = await ok(agent, "network.define", spec)
    assert (again["created"], again["uuid"]) == (False, defined["uuid"])

    started = await ok(agent, "network.start", {"name": name})
    assert (started["changed"], started["state"]) == (True, "active")
    assert (await ok(agent, "network.start", {"name": name}))["changed"] is False
    auto = await ok(agent, "network.autostart", {"name": name, "enabled": True})
    assert (auto["changed"], auto["autostart"]) == (True, True)
    stopped = await ok(agent, "network.stop", {"name": name})
    assert (stopped["changed"], stopped["state"]) == (True, "inactive")
    assert (await ok(agent, "network.stop", {"name": name}))["changed"] is False
    assert (await ok(agent, "network.delete", {"name": name}))["changed"] is True
    assert (await ok(agent, "network.delete", {"name": name}))["changed"] is False
    assert await failed(agent, "network.info", {"name": name}) == f"network '{name}' not found"


async def test_define_from_xml_must_name_the_network(agent: Agent) -> None:
    name = f"net-{uuid.uuid4().hex[:6]}"
    xml = f"<network><name>{name}</name><bridge name='vb{name[-6:]}'/></network>"
    defined = await ok(agent, "network.define", {"name": name, "xml": xml, "start": False})
    assert defined["bridge"] == f"vb{name[-6:]}"
    await ok(agent, "network.delete", {"name": name})
    with pytest.raises(ValidationError, match="whose <name> is `name`"):
        await ok(agent, "network.define", {"name": "other", "xml": xml})


async def test_define_from_xml_holds_only_what_the_spec_writes(agent: Agent) -> None:
    for extra, element, attribute in (
        ("<ip address='10.7.0.1' prefix='24'><tftp root='/'/></ip>", "/network/ip/tftp", None),
        ("<forward mode='nat' dev='eth0'/>", "/network/forward", "dev"),
    ):
        xml = f"<network><name>evil</name>{extra}</network>"
        document = job_document("network.define", {"name": "evil", "xml": xml})
        with pytest.raises(ForbiddenError) as caught:
            await agent.intake.submit(document, transport="test")
        assert caught.value.details["field"] == "payload.data.xml"
        assert caught.value.details["element"] == element
        assert caught.value.details.get("attribute") == attribute


def test_dhcp_range_of_tiny_subnets_at_the_ends_of_the_address_space_is_none() -> None:
    for value in ("0.0.0.0/31", "0.0.0.0/32", "255.255.255.255/32", "255.255.255.254/31"):
        interface = ipaddress.IPv4Interface(value)
        assert _dhcp_range(interface.network, interface.ip) is None, value
    interface = ipaddress.IPv4Interface("10.9.8.254/24")
    assert _dhcp_range(interface.network, interface.ip) == ("10.9.8.1", "10.9.8.253")
