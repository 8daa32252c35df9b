"""`hostagent runbook list | show NAME | validate FILE | run NAME --param k=v`.

list, show and validate read the runbook directories of the config (no agent
needed); run submits runbook.run to the running agent and, with --wait or
--follow, prints the steps' outcomes as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, UsageError

if TYPE_CHECKING:
    from agent.cli.client import AgentClient
    from agent.service.settings import Settings

EXIT_INVALID = 2  # validate: the runbook is not valid (the step and field are named)


def add_arguments(commands: Any, common: Any, client: Any, json_flag: Any) -> None:
    """The `runbook` command and its subcommands."""
    runbook: argparse.ArgumentParser = commands.add_parser(
        "runbook", help="installed runbooks: list, show, validate, run"
    )
    actions = runbook.add_subparsers(dest="runbook_command", required=True)
    listing = actions.add_parser("list", help="the installed runbooks (name, version, sha256)")
    show = actions.add_parser("show", help="an installed runbook's document")
    show.add_argument("name", help="an installed runbook's name (runbook list)")
    show.add_argument("--version", type=int, help="that version (default: the highest)")
    validate = actions.add_parser(
        "validate", help="check a runbook file without installing it (exit 2 names step and field)"
    )
    validate.add_argument("file", type=Path, help="a runbook document (YAML or JSON)")
    run = actions.add_parser("run", help="run an installed runbook on the agent")
    run.add_argument("name", help="an installed runbook's name (runbook list)")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter; VALUE is read as JSON when it is (10, true, [1]), else as text",
    )
    run.add_argument("--version", type=int, help="that version (default: the highest)")
    run.add_argument("--dry-run", action="store_true", help="check and resolve; run nothing")
    run.add_argument("--job-id", help="the runbook job's id (default: a new UUID)")
    waiting = run.add_mutually_exclusive_group()
    waiting.add_argument("--wait", action="store_true", help="wait, then print the steps")
    waiting.add_argument("--follow", action="store_true", help="show progress, then the steps")
    run.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds --wait/--follow wait before exit 4 (default 3600)",
    )
    for command in (listing, show, validate, run):
        common(command)
    for command in (listing, show):
        json_flag(command)
    client(run)


def run_command(args: argparse.Namespace, config: Settings, remote: AgentClient | None) -> int:
    action = args.runbook_command
    if action == "list":
        return _list(args, config)
    if action == "show":
        return _show(args, config)
    if action == "validate":
        return _validate(args, config)
    if remote is None:
        from agent.cli.support import no_agent

        raise no_agent(config, "runbook run")
    return _run(args, remote)


def _library(config: Settings) -> Any:
    from agent.runbooks import RunbookLibrary

    library = RunbookLibrary(list(config.runbooks.dirs))
    library.load(quiet=True)  # list says what it found, and what it could not install
    return library


def _list(args: argparse.Namespace, config: Settings) -> int:
    library = _library(config)
    found = [item.identity() for item in library.installed()]
    if args.json:
        print(json.dumps({"runbooks": found, "problems": library.problems}, indent=2))
        return 0
    print(f"{'NAME':24} {'VERSION':>7}  {'SHA256':12}  DESCRIPTION")
    for item in found:
        print(
            f"{item['name']:24} {item['version']:>7}  {item['sha256'][:12]}  {item['description']}"
        )
    for problem in library.problems:
        print(f"hostagent: not installed: {problem['path']}: {problem['error']}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace, config: Settings) -> int:
    installed = _library(config).get(args.name, args.version)
    document = installed.runbook.model_dump(mode="json", exclude_unset=True)
    if args.json:
        print(json.dumps({**installed.identity(), "document": document}, indent=2))
        return 0
    identity = installed.identity()
    print(f"{identity['name']} v{identity['version']}  sha256 {identity['sha256']}")
    print(f"file: {identity['path']}")
    if identity["description"]:
        print(identity["description"])
    for name, param in installed.runbook.parameters.items():
        default = "" if param.required else f" = {json.dumps(param.default)}"
        secret = " (secret)" if param.secret else ""
        print(f"  --param {name}: {param.type}{default}{secret}")
    for index, step in enumerate(installed.runbook.steps, 1):
        when = " (when ...)" if step.when is not None else ""
        print(f"  {index}. {step.name}: {step.operation}{when}")
    return 0


def _validate(args: argparse.Namespace, config: Settings) -> int:
    """Exit 0, or 2 naming the step and field: schema, references, operations and
    each step's payload as far as it is known without parameters."""
    from agent.policy.paths import Admission, Policy
    from agent.runbooks import check_runbook, read_runbook_file
    from agent.runbooks.substitution import UNRESOLVED
    from agent.service.daemon import build_registry

    try:
        installed = read_runbook_file(args.file)
        runbook = installed.runbook
        params = {
            name: param.default if not param.required else UNRESOLVED
            for name, param in runbook.parameters.items()
        }
        check_runbook(
            runbook,
            params,
            registry=build_registry(),
            admission=Admission(Policy(config)),
            labels=config.labels,
        )
    except OSError as exc:
        raise UsageError(f"FILE: cannot read {args.file}: {exc.strerror or exc}") from exc
    except AgentError as exc:
        print(f"{args.file}: {exc.message}", file=sys.stderr)
        print(json.dumps(exc.details), file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.file}: valid runbook {runbook.name} v{runbook.version} ({installed.sha256})")
    return 0


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`--param NAME=VALUE` pairs: VALUE as JSON when it parses, else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE", field="param")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


def _run(args: argparse.Namespace, remote: AgentClient) -> int:
    from agent.cli.commands import follow
    from agent.jobs import new_job_id

    data: dict[str, Any] = {"runbook": args.name, "parameters": parse_params(args.param)}
    if args.version is not None:
        data["version"] = args.version
    if args.dry_run:
        data["dry_run"] = True
    document = {
        "version": "1.0",
        "job_id": args.job_id or new_job_id(),
        "kind": "Runbook",
        "operation": "runbook.run",
        "payload": {"type": "runbook.run.v1", "data": data},
    }
    with remote:
        job_id = remote.submit(document)["job_id"]
        print(job_id, flush=True)
        if not (args.wait or args.follow):
            return 0
        code = follow(remote, job_id, timeout=args.wait_timeout, progress=args.follow)
        state = remote.status(job_id)
        result = remote.result(job_id) if state["status"] == "Completed" else None
    print_steps(result, state)
    return code


def print_steps(result: dict[str, Any] | None, state: dict[str, Any]) -> None:
    """The steps' outcomes as a table (stderr: stdout holds the JSON outcome)."""
    out = sys.stderr
    if result is None:
        print(f"runbook {state['status']}: {state.get('error')}", file=out)
        return
    print(f"\n{'STEP':20} {'STATUS':16} {'JOB ID':44} ERROR", file=out)
    for step in result.get("steps", []):
        error = step.get("error") or step.get("note") or ""
        print(
            f"{step['name']:20} {step['status']:16} {step.get('job_id') or '-':44} {error}",
            file=out,
        )
    if result.get("outputs"):
        print(f"outputs: {json.dumps(result['outputs'])}", file=out)
