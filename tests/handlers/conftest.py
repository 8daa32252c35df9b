"""An independent connection to the private real libvirtd (tests/conftest.py), for the
real-QEMU tests of the handlers and of the resource view."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from tests.libvirtd import PrivateLibvirtd

STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}


@pytest.fixture
def observer(libvirtd: PrivateLibvirtd) -> Iterator[Any]:
    """An independent connection that checks what the agent did; removes leftovers."""
    conn = libvirt.open(libvirtd.uri)
    yield conn
    for dom in conn.listAllDomains(0):
        if dom.name().startswith("real-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


def state_of(conn: Any, name: str) -> str:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return "undefined"
    state, _ = dom.state()
    return STATES.get(state, "shutoff" if state == libvirt.VIR_DOMAIN_SHUTOFF else str(state))
