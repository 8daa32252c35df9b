"""Which action fits which state, and the job each action becomes.

The resource view never acts itself: an action is checked against the
resource's current state here (so a wrong one is refused before any job
exists) and then handed to the intake as an ordinary job document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.errors import ConflictError
from agent.view.models import (
    AutostartBody,
    CloneBody,
    EmptyBody,
    ResizeBody,
    ShutdownBody,
    SnapshotBody,
    WipeBody,
)

_ACTIVE = frozenset({"running", "blocked", "paused", "shutdown", "crashed", "pmsuspended"})
_RUNNING = frozenset({"running", "blocked"})
_DOMAIN_ANY = frozenset({*_ACTIVE, "shutoff", "nostate", "unknown"})


@dataclass(frozen=True)
class Action:
    """One action of the resource view: the job it becomes and the states it fits."""

    name: str
    operation: str
    summary: str
    acts_in: frozenset[str]  # states it changes
    # States where it is accepted and its job answers `changed: false` (safe retries).
    noop_in: frozenset[str] = frozenset()
    body: type[BaseModel] = EmptyBody
    fixed: dict[str, Any] = field(default_factory=dict)  # payload data the action implies
    alias_of: str | None = None  # Concertim's word for one of ours

    def check(self, kind: str, name: str, state: str) -> None:
        """Refuse (409 CONFLICT, the state in details) an action that does not fit `state`."""
        if state in self.acts_in or state in self.noop_in:
            return
        raise ConflictError(
            f"cannot {self.name} {kind} {name!r} while it is {state}",
            field="action",
            reason="invalid_state",
            details={
                "state": state,
                "action": self.name,
                "valid_in": sorted(self.acts_in | self.noop_in),
            },
        )


def _vm(name: str, operation: str, summary: str, acts_in: frozenset[str], **more: Any) -> Action:
    return Action(name, operation, summary, acts_in, **more)


VM_ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        _vm(
            "start",
            "vm.start",
            "Start the VM",
            frozenset({"shutoff", "crashed", "nostate"}),
            noop_in=_ACTIVE - {"crashed"},
        ),
        _vm(
            "shutdown",
            "vm.shutdown",
            "Ask the guest to power off (ACPI); force: power off after the timeout",
            _RUNNING | {"pmsuspended"},
            noop_in=frozenset({"shutoff", "shutdown"}),
            body=ShutdownBody,
        ),
        _vm(
            "poweroff",
            "vm.destroy",
            "Power the VM off at once (libvirt's destroy: the definition stays)",
            _ACTIVE,
            noop_in=frozenset({"shutoff"}),
        ),
        _vm("reboot", "vm.reboot", "Ask the guest to reboot (ACPI)", _RUNNING),
        _vm(
            "reset",
            "vm.reset",
            "Reset the virtual hardware (the reset button)",
            _RUNNING | {"paused"},
        ),
        _vm(
            "suspend",
            "vm.suspend",
            "Pause the VM's vCPUs",
            _RUNNING,
            noop_in=frozenset({"paused"}),
        ),
        _vm("resume", "vm.resume", "Resume a paused VM", frozenset({"paused"}), noop_in=_RUNNING),
        _vm(
            "snapshot",
            "vm.snapshot.create",
            "Take a snapshot (disks, and memory while it runs)",
            _DOMAIN_ANY,
            body=SnapshotBody,
        ),
        _vm(
            "autostart",
            "vm.autostart",
            "Start the VM when the host boots (enabled: false turns it off)",
            _DOMAIN_ANY,
            body=AutostartBody,
        ),
    )
}
# Concertim's power words, as aliases: "off" is a clean power-off that falls back to
# pulling the plug (as Concertim's off does), "destroy" pulls it at once (libvirt's word;
# removing the VM is DELETE /vms/{name}).
for _alias, _target, _fixed in (
    ("on", "start", {}),
    ("off", "shutdown", {"force": True}),
    ("destroy", "poweroff", {}),
):
    _of = VM_ACTIONS[_target]
    VM_ACTIONS[_alias] = Action(
        _alias,
        _of.operation,
        f"Concertim's {_alias!r}: {_of.summary[0].lower()}{_of.summary[1:]}",
        _of.acts_in,
        _of.noop_in,
        _of.body,
        _fixed,
        alias_of=_target,
    )

VM_UNDEFINE = Action(
    "delete",
    "vm.undefine",
    "Undefine the VM (force: power it off first)",
    frozenset({"shutoff", "crashed", "nostate"}),
)

VM_UNDEFINE_FORCED = Action(
    "delete", "vm.undefine", "Power the VM off and undefine it", _DOMAIN_ANY
)

POOL_ACTIONS: dict[str, Action] = {
    "activate": Action(
        "activate",
        "storage.pool.start",
        "Activate the pool",
        frozenset({"inactive"}),
        noop_in=frozenset({"running"}),
    ),
    "deactivate": Action(
        "deactivate",
        "storage.pool.stop",
        "Deactivate the pool (its data stays)",
        frozenset({"running", "degraded", "inaccessible", "building"}),
        noop_in=frozenset({"inactive"}),
    ),
}
POOL_DELETE = Action(
    "delete", "storage.pool.delete", "Undefine an inactive pool", frozenset({"inactive"})
)

# Volume actions need the pool running: the state checked is the pool's.
_POOL_RUNNING = frozenset({"running"})
VOLUME_ACTIONS: dict[str, Action] = {
    "resize": Action(
        "resize",
        "storage.volume.resize",
        "Set the volume's capacity",
        _POOL_RUNNING,
        body=ResizeBody,
    ),
    "wipe": Action(
        "wipe", "storage.volume.wipe", "Overwrite the volume's data", _POOL_RUNNING, body=WipeBody
    ),
    "clone": Action(
        "clone",
        "storage.volume.clone",
        "Copy the volume to a new one",
        _POOL_RUNNING,
        body=CloneBody,
    ),
}
VOLUME_CREATE = Action("create", "storage.volume.create", "Create a volume", _POOL_RUNNING)
VOLUME_DELETE = Action("delete", "storage.volume.delete", "Delete a volume", _POOL_RUNNING)

NETWORK_ACTIONS: dict[str, Action] = {
    "start": Action(
        "start",
        "network.start",
        "Start the network",
        frozenset({"inactive"}),
        noop_in=frozenset({"active"}),
    ),
    "stop": Action(
        "stop",
        "network.stop",
        "Stop the network",
        frozenset({"active"}),
        noop_in=frozenset({"inactive"}),
    ),
    "autostart": Action(
        "autostart",
        "network.autostart",
        "Start the network with libvirtd (enabled: false turns it off)",
        frozenset({"active", "inactive"}),
        body=AutostartBody,
    ),
}
NETWORK_DELETE = Action(
    "delete", "network.delete", "Undefine an inactive network", frozenset({"inactive"})
)


def actions_in(table: dict[str, Action], state: str) -> list[str]:
    """The actions (not aliases) that would change a resource in `state`."""
    return [a.name for a in table.values() if a.alias_of is None and state in a.acts_in]


def job_document(operation: str, data: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    """The job an action becomes; `job_id` is the client's Idempotency-Key, if any."""
    document: dict[str, Any] = {
        "version": "1.0",
        "kind": "VMOperation",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data},
    }
    if job_id is not None:
        document["job_id"] = job_id
    return document
