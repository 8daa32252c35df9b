"""libvirt, confined to this package: `LibvirtConnection` owns the agent's one
connection (connection.py); `objects` holds the state names, flags, lookups
and the one translation of libvirtError into HypervisorError."""

from agent.hypervisor.connection import LibvirtConnection
from agent.hypervisor.objects import (
    DOMAIN_STATES,
    LIST_AUTOSTART,
    LIST_PERSISTENT,
    POOL_STATES,
    VOL_RESIZE_SHRINK,
    VOLUME_TYPES,
    WIPE_ALGORITHMS,
    domain_state,
    if_present,
    lookup_domain,
    lookup_network,
    lookup_pool,
    lookup_volume,
    translate,
    undefine_domain,
    volume_by_path,
)

__all__ = [
    "DOMAIN_STATES",
    "LIST_AUTOSTART",
    "LIST_PERSISTENT",
    "POOL_STATES",
    "VOLUME_TYPES",
    "VOL_RESIZE_SHRINK",
    "WIPE_ALGORITHMS",
    "LibvirtConnection",
    "domain_state",
    "if_present",
    "lookup_domain",
    "lookup_network",
    "lookup_pool",
    "lookup_volume",
    "translate",
    "undefine_domain",
    "volume_by_path",
]
