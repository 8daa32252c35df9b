"""The CLI's nouns, in the manner of virsh: `hostagent vm list`, `vm start NAME --wait`,
`pool list`, `volume list POOL`, `net list`, `host stats`, over a running agent's
HTTP API. Reads print a table (`--json` for programs); actions print the job id and,
with `--wait`, follow the job to its end and print its outcome."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from agent.cli.client import AgentClient

Column = tuple[str, Callable[[dict[str, Any]], object]]

VM_VERBS = (
    "start",
    "shutdown",
    "poweroff",
    "reboot",
    "reset",
    "suspend",
    "resume",
    "snapshot",
    "autostart",
    "on",
    "off",
    "destroy",
)


# What each action does to the domain (its help line): the four ways to stop a VM differ.
VERB_HELP = {
    "start": "boot the VM (vm.start)",
    "shutdown": "ask the guest OS to shut down (ACPI; vm.shutdown): it may take a while or "
    'be ignored; --data \'{"timeout_seconds": 120, "force": true}\' pulls the plug after',
    "poweroff": "pull the plug now (vm.destroy): no guest shutdown, unwritten data is lost; "
    "the VM stays defined",
    "off": "shut down cleanly, then pull the plug if the guest has not stopped "
    "(vm.shutdown with force: true; Concertim's name)",
    "destroy": "the same as poweroff (vm.destroy; Concertim's name): it removes nothing, "
    "`vm delete` does",
    "on": "the same as start (Concertim's name)",
    "reboot": "ask the guest OS to reboot (vm.reboot)",
    "reset": "hard reset, like the reset button (vm.reset): no guest shutdown",
    "suspend": "pause the VM's CPUs; it stays in memory (vm.suspend)",
    "resume": "continue a suspended VM (vm.resume)",
    "snapshot": "take a snapshot (vm.snapshot.create; --data '{\"snapshot\": NAME}')",
    "autostart": "start the VM with libvirtd (--data '{\"enabled\": false}' turns it off)",
    "delete": "undefine the VM (vm.undefine); --force powers it off first",
    "activate": "start the storage pool (storage.pool.start)",
    "deactivate": "stop the storage pool (storage.pool.stop)",
    "stop": "stop the network (network.stop)",
}
NOUN_NAME = {"vm": "the VM's name", "pool": "the storage pool's name", "net": "the network's name"}


def _mib(kib: int) -> str:
    return f"{kib // 1024} MiB"


def _gib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024**3:.1f} GiB"


_TABLES: dict[str, tuple[str, list[Column]]] = {
    "vm": (
        "vms",
        [
            ("NAME", lambda v: v["name"]),
            ("STATE", lambda v: v["state"]),
            ("VCPUS", lambda v: v["vcpus"]),
            ("MEMORY", lambda v: _mib(v["memory_kib"])),
            ("AUTOSTART", lambda v: "yes" if v["autostart"] else "no"),
            ("UUID", lambda v: v["uuid"]),
        ],
    ),
    "pool": (
        "pools",
        [
            ("NAME", lambda p: p["name"]),
            ("STATE", lambda p: p["state"]),
            ("TYPE", lambda p: p["type"]),
            ("CAPACITY", lambda p: _gib(p["capacity_bytes"])),
            ("AVAILABLE", lambda p: _gib(p["available_bytes"])),
            ("VOLUMES", lambda p: "-" if p["volumes"] is None else p["volumes"]),
            ("PATH", lambda p: p["path"] or "-"),
        ],
    ),
    "volume": (
        "volumes",
        [
            ("NAME", lambda v: v["name"]),
            ("FORMAT", lambda v: v["format"] or "-"),
            ("CAPACITY", lambda v: _gib(v["capacity_bytes"])),
            ("ALLOCATED", lambda v: _gib(v["allocation_bytes"])),
            ("PATH", lambda v: v["path"]),
        ],
    ),
    "template": (
        "templates",
        [
            ("NAME", lambda t: t["name"]),
            ("OS", lambda t: f"{t['os_distro']} {t['os_version']}"),
            ("CPUS", lambda t: t["cpus"]),
            ("MEMORY", lambda t: f"{t['memory']} MiB"),
            ("DISKS", lambda t: ", ".join(_template_disk(d) for d in t["disks"]) or "-"),
            ("POOL", lambda t: t["storagepool"]),
            ("NETWORKS", lambda t: ", ".join(t["networks"]) or "-"),
        ],
    ),
    "net": (
        "networks",
        [
            ("NAME", lambda n: n["name"]),
            ("STATE", lambda n: n["state"]),
            ("FORWARD", lambda n: n["forward"]),
            ("BRIDGE", lambda n: n["bridge"] or "-"),
            ("AUTOSTART", lambda n: "yes" if n["autostart"] else "no"),
            ("ADDRESS", lambda n: ", ".join(f"{i['address']}/{i['prefix']}" for i in n["ips"])),
        ],
    ),
}


def _template_disk(disk: dict[str, Any]) -> str:
    return f"{disk['size']} GB" if disk.get("size") is not None else f"copy of {disk['volume']}"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as aligned text columns under their headers."""
    cells = [[header for header, _ in columns]]
    cells += [[str(value(row)) for _, value in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def _fields(record: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    lines = []
    for key, value in record.items():
        if isinstance(value, dict):
            lines += _fields(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, item in enumerate(value):
                lines += _fields(item, f"{prefix}{key}[{index}].")
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            lines.append((f"{prefix}{key}", "-" if shown is None else str(shown)))
    return lines


def _show(args: argparse.Namespace, data: dict[str, Any], noun: str | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    elif noun is not None:
        key, columns = _TABLES[noun]
        print(table(data[key], columns))
    else:
        lines = _fields(data)
        width = max(len(key) for key, _ in lines)
        print("\n".join(f"{key.ljust(width)}  {value}" for key, value in lines))


def _outcome(args: argparse.Namespace, remote: AgentClient, answer: dict[str, Any]) -> int:
    job_id = answer["job_id"]
    print(job_id)
    if not args.wait:
        return 0
    state = remote.follow(job_id, deadline=time.monotonic() + args.wait_timeout)
    result = remote.result(job_id) if state["status"] == "Completed" else None
    print(json.dumps({**state, "result": result}, indent=2))
    return 0 if state["status"] == "Completed" else 1


def _body(args: argparse.Namespace) -> dict[str, Any]:
    from agent.cli.usage import json_object

    return json_object(args.data, "--data")


def _run(args: argparse.Namespace, remote: AgentClient) -> int:
    noun, verb = args.command, args.verb
    # A name is one path segment (agent.cli.usage refused "/", "." and ".."); ? # % quoted.
    for dest in ("name", "pool"):
        if isinstance(getattr(args, dest, None), str):
            setattr(args, dest, quote(getattr(args, dest), safe=""))
    base = {"vm": "/api/v1/vms", "pool": "/api/v1/storagepools", "net": "/api/v1/networks"}
    if noun == "template" or verb == "create":  # the templates, and a VM from one
        return (_template if noun == "template" else _create_vm)(args, remote)
    if noun == "host":
        path = "/api/v1/host/stats" if verb == "stats" else "/api/v1/host"
        _show(args, remote.call("GET", path))
        return 0
    if noun == "volume":
        path = f"/api/v1/storagepools/{args.pool}/volumes"
        if verb == "list":
            _show(args, remote.call("GET", path), "volume")
        else:
            _show(args, remote.call("GET", f"{path}/{args.name}"))
        return 0
    if verb == "list":
        params = {"state": args.state} if getattr(args, "state", None) else {}
        _show(args, remote.call("GET", base[noun], params=params), noun)
        return 0
    if verb == "info":
        _show(args, remote.call("GET", f"{base[noun]}/{args.name}"))
        return 0
    headers = {"Idempotency-Key": args.job_id} if args.job_id else {}
    if verb == "delete":
        params = {"force": "true"} if getattr(args, "force", False) else {}
        answer = remote.call("DELETE", f"{base[noun]}/{args.name}", params=params, headers=headers)
    else:
        path = f"{base[noun]}/{args.name}/{verb}"
        answer = remote.call("POST", path, json=_body(args), headers=headers)
    return _outcome(args, remote, answer)


def _create_vm(args: argparse.Namespace, remote: AgentClient) -> int:
    body = {"template": args.template, "name": args.vm_name, "storagepool": args.storagepool}
    headers = {"Idempotency-Key": args.job_id} if args.job_id else {}
    answer = remote.call(
        "POST",
        "/api/v1/vms",
        json={key: value for key, value in body.items() if value is not None},
        headers=headers,
    )
    return _outcome(args, remote, answer)


def _template(args: argparse.Namespace, remote: AgentClient) -> int:
    base = "/api/v1/templates"
    if args.verb == "list":
        _show(args, remote.call("GET", base), "template")
    elif args.verb == "show":
        _show(args, remote.call("GET", f"{base}/{args.name}"))
    elif args.verb == "create":
        _show(args, remote.call("POST", base, json=_body(args)))
    else:
        remote.call("DELETE", f"{base}/{args.name}")
        print(f"template {args.name} deleted")
    return 0


def _add_template_commands(
    commands: Any, options: Callable[[argparse.ArgumentParser], None]
) -> None:
    parser = commands.add_parser("template", help="VM templates (HTTP)")
    nested = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("list", "the templates"),
        ("show", "one template"),
        ("create", "add a template (Kimchi's fields: name, cpus, memory MiB, disks, ...)"),
        ("delete", "remove a template"),
    ):
        command = nested.add_parser(verb, help=text)
        options(command)
        command.add_argument("--json", action="store_true", help="the API's JSON, for programs")
        if verb in ("show", "delete"):
            command.add_argument("name", help="the template's name (template list)")
        if verb == "create":
            command.add_argument(
                "--data",
                required=True,
                help='the template as JSON, e.g. \'{"name": "deb", "memory": 1024, '
                '"disks": [{"size": 10}]}\'',
            )


def _add_vm_create(nested: Any, options: Callable[[argparse.ArgumentParser], None]) -> None:
    create = nested.add_parser("create", help="create a VM from a template (a job)")
    options(create)
    create.add_argument("--template", required=True, help="the template's name")
    create.add_argument("--name", dest="vm_name", help="default: TEMPLATE-xxxxxx")
    create.add_argument("--storagepool", help="default: the template's")
    create.add_argument("--job-id", help="sent as Idempotency-Key: a retry is one job")
    create.add_argument("--wait", action="store_true", help="follow the job to its end")
    create.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds --wait waits before exit 4 (default 3600)",
    )


def add_commands(commands: Any, options: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """Add the nouns to the `hostagent` parser; answers the nouns."""
    verbs = {
        "vm": ("VMs", (*VM_VERBS, "delete")),
        "pool": ("storage pools", ("activate", "deactivate", "delete")),
        "volume": ("volumes of a pool", ()),
        "net": ("virtual networks", ("start", "stop", "autostart", "delete")),
        "host": ("this host", ()),
    }
    for noun, (text, actions) in verbs.items():
        parser = commands.add_parser(noun, help=f"{text} (HTTP)")
        nested = parser.add_subparsers(dest="verb", required=True)
        reads = ("info", "stats") if noun == "host" else ("list", "info")
        for verb in reads:
            read = nested.add_parser(verb, help=f"{verb} {text}")
            options(read)
            read.add_argument("--json", action="store_true", help="the API's JSON, for programs")
            if noun == "volume":
                read.add_argument("pool", help="the storage pool's name")
            if verb == "info" and noun != "host":
                read.add_argument("name", help=NOUN_NAME.get(noun, "the volume's name"))
            if noun == "vm" and verb == "list":
                read.add_argument("--state", help="only VMs in this state (running, shutoff, ...)")
        for verb in actions:
            explained = VERB_HELP.get(verb, f"{verb} ({noun}.{verb})")
            if noun == "net" and verb in ("start", "autostart", "delete"):
                explained = f"{verb} the network (network.{verb})"
            if noun == "pool" and verb == "delete":
                explained = "delete the storage pool (storage.pool.delete)"
            action = nested.add_parser(verb, help=f"{explained}; a job", description=explained)
            options(action)
            action.add_argument("name", help=NOUN_NAME[noun])
            action.add_argument("--data", default="{}", help="the action's body as JSON")
            action.add_argument("--job-id", help="sent as Idempotency-Key: a retry is one job")
            action.add_argument("--wait", action="store_true", help="follow the job to its end")
            action.add_argument(
                "--wait-timeout",
                type=float,
                default=3600.0,
                help="seconds --wait waits (default 3600); the job keeps running after",
            )
            if verb == "delete" and noun == "vm":
                action.add_argument("--force", action="store_true", help="power it off first")
        if noun == "vm":
            _add_vm_create(nested, options)
    _add_template_commands(commands, options)
    return [*verbs, "template"]


def run_command(args: argparse.Namespace, remote: AgentClient) -> int:
    """Run a noun's command against the agent; answers the exit status."""
    with remote:
        return _run(args, remote)
