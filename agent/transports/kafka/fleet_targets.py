"""What a fleet command checks against the fleet map before it sends or removes anything.

So that a command never lies: a job for a host the map does not know is refused
(with the nearest names), a pool or broadcast that no live host would take is
refused at once (naming the hosts that would, were they not stale), and a host
whose heartbeat is fresh is not decommissioned. `--force` skips these checks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.errors import ConflictError, UnreachableError, UsageError
from agent.transports.kafka.fleet import FleetHost


def is_live(host: FleetHost) -> bool:
    """The map says the host answers: a capabilities record and a fresh heartbeat."""
    return not host.stale


def describe(host: FleetHost) -> str:
    """`a (stale: last heartbeat 42 s ago; ...)`: a host as a refusal names it (the map's
    own status and reason, so the CLI and `fleet` never disagree)."""
    return f"{host.worker_id} ({host.status}: {host.reason})"


def nearest(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(names), n=n, cutoff=0.6)


def _unknown(worker_id: str, hosts: list[FleetHost], option: str) -> UsageError:
    near = nearest(worker_id, (host.worker_id for host in hosts))
    hint = f"; nearest: {', '.join(near)}" if near else ""
    return UsageError(
        f"{option}: {worker_id!r} is not in the fleet map ({len(hosts)} hosts{hint}); "
        "--force sends anyway",
        field=option.strip("-").lower().replace("-", "_"),
    )


def check_host(hosts: list[FleetHost], worker_id: str) -> FleetHost:
    """The host `--host` names, or a UsageError (exit 2) naming the nearest ones."""
    for host in hosts:
        if host.worker_id == worker_id:
            return host
    raise _unknown(worker_id, hosts, "--host")


@dataclass(frozen=True)
class Reach:
    """The hosts a pool or broadcast job matches: those that will take it, and the stale."""

    live: list[FleetHost]
    stale: list[FleetHost]


def broadcast_reach(
    hosts: Iterable[FleetHost], *, operations: Iterable[str], labels: Mapping[str, str]
) -> Reach:
    matched = [host for host in hosts if host.matches(operations=operations, labels=labels)]
    return Reach(
        live=[host for host in matched if is_live(host)],
        stale=[host for host in matched if not is_live(host)],
    )


def pool_reach(hosts: Iterable[FleetHost], pool: str) -> Reach:
    members = [host for host in hosts if pool in host.pools]
    return Reach(
        live=[host for host in members if is_live(host)],
        stale=[host for host in members if not is_live(host)],
    )


def require_live(reach: Reach, what: str) -> list[FleetHost]:
    """The live hosts of `reach`; none: an UnreachableError (exit 69) naming the stale ones."""
    if reach.live:
        return reach.live
    if reach.stale:
        shown = ", ".join(describe(host) for host in reach.stale[:10])
        more = f" and {len(reach.stale) - 10} more" if len(reach.stale) > 10 else ""
        why = f"it matches only stale hosts: {shown}{more}"
    else:
        why = "it matches no host of the fleet map"
    raise UnreachableError(
        f"{what} reaches no live host: {why}; nothing was sent (--force sends anyway)",
        field="selector",
        reason="no live host matches",
    )


def check_decommission(hosts: list[FleetHost], worker_id: str) -> FleetHost:
    """The host to remove: known to the map and no longer heartbeating."""
    host = next((host for host in hosts if host.worker_id == worker_id), None)
    if host is None:
        raise _unknown(worker_id, hosts, "WORKER_ID")
    if is_live(host):
        raise ConflictError(
            f"{describe(host)} is alive: its agent would keep taking host and broadcast "
            "jobs while missing from the map. Stop it first, or pass --force",
            field="worker_id",
            reason="heartbeat is fresh",
        )
    return host
