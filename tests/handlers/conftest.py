"""The private real libvirtd (tests/libvirtd.py) and an independent connection to it,
shared by the real-QEMU tests of the handlers and of the resource view."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from tests.libvirtd import PrivateLibvirtd, private_libvirtd

STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    with private_libvirtd(tmp_path_factory.mktemp("libvirtd")) as daemon:
        yield daemon


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
