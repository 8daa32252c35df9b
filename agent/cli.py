"""The hostagent command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.errors import AgentError
from agent.jobs import new_job_id


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default /etc/hostagent/agent.toml if present)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the job store lives")
    parser.add_argument("--spool-dir", type=Path, help="the spool directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostagent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent in the foreground")
    _common(run)
    run.add_argument("--max-concurrent", type=int, help="jobs run at once")
    run.add_argument("--log-format", choices=["json", "console"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--libvirt-uri", help="libvirt connection URI (default qemu:///system)")

    submit = commands.add_parser("submit", help="drop a job into the spool")
    _common(submit)
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="a job document (JSON)")
    source.add_argument("--op", help="operation, e.g. system.echo")
    submit.add_argument("--data", default="{}", help="payload data as JSON (with --op)")
    submit.add_argument("--kind", default="VMOperation")
    submit.add_argument("--job-id")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--timeout", type=float, help="timeout_seconds")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument("--wait-timeout", type=float, default=3600.0)

    jobs = commands.add_parser("jobs", help="list jobs")
    _common(jobs)
    jobs.add_argument("--status")
    jobs.add_argument("--operation")
    jobs.add_argument("--limit", type=int, default=50)

    for name, text in (
        ("status", "a job's status"),
        ("result", "a job's result"),
        ("logs", "a job's log lines and progress"),
        ("cancel", "cancel a pending or running job"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        command.add_argument("job_id")

    validate = commands.add_parser("validate", help="check a job file without submitting it")
    _common(validate)
    validate.add_argument("file", type=Path)
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "state_dir": args.state_dir,
        "spool_dir": args.spool_dir,
        "max_concurrent_jobs": getattr(args, "max_concurrent", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": getattr(args, "log_level", None),
        "libvirt.uri": getattr(args, "libvirt_uri", None),
    }
    return load_config(args.config, overrides=overrides)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        return int(_COMMANDS[args.command](args, config) or 0)
    except AgentError as exc:
        print(f"hostagent: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details), file=sys.stderr)
        return 2 if exc.code == "CONFIG_ERROR" else 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, config: Config) -> int:
    import faulthandler
    from functools import partial

    import trio

    from agent.daemon import serve
    from agent.logs import configure_logging

    configure_logging(config.log_format, config.log_level)
    # When the systemd watchdog gives up it sends SIGABRT: the journal then shows
    # where every thread was stuck.
    faulthandler.enable()
    # SIGHUP reads the config again the same way: file, environment, these flags.
    trio.run(partial(serve, config, load_config=lambda: _config(args)))
    return 0


def _document(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        document = json.loads(args.file.read_text())
        if not isinstance(document, dict):
            raise AgentError("the job file must hold a JSON object", field="file")
    else:
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise AgentError(f"--data is not valid JSON: {exc}", field="data") from exc
        document = {
            "version": "1.0",
            "kind": args.kind,
            "operation": args.op,
            "payload": {"type": f"{args.op}.v1", "data": data},
        }
    for key, value in (
        ("job_id", args.job_id),
        ("priority", args.priority),
        ("timeout_seconds", args.timeout),
    ):
        if value is not None:
            document[key] = value
    # Name the job here so the command can print its id before the agent sees it.
    document.setdefault("job_id", new_job_id())
    return document


def _submit(args: argparse.Namespace, config: Config) -> int:
    from agent.transports.spool import write_durably

    document = _document(args)
    job_id = str(document["job_id"])
    spool = config.spool_dir
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    staged = spool / "tmp" / f"{job_id}.json"
    write_durably(staged, json.dumps(document).encode())
    staged.replace(spool / "incoming" / f"{job_id}.json")
    print(job_id)
    if not args.wait:
        return 0
    return _wait_for_outcome(spool, job_id, args.wait_timeout)


def _wait_for_outcome(spool: Path, job_id: str, timeout: float) -> int:
    import watchfiles

    from agent.transports.spool import result_name

    result = spool / "done" / result_name(job_id)
    refused = spool / "failed" / f"{job_id}.json.error.json"
    deadline = time.monotonic() + timeout
    watched = [str(spool / "done"), str(spool / "failed")]
    for _ in watchfiles.watch(
        *watched,
        recursive=False,
        yield_on_timeout=True,
        rust_timeout=1000,
        step=5,
        debounce=50,
        watch_filter=None,
    ):
        if result.exists():
            record = json.loads(result.read_text())
            _print(record)
            return 0 if record["status"] == "Completed" else 1
        if refused.exists():
            _print(json.loads(refused.read_text()))
            return 1
        if time.monotonic() > deadline:
            print(f"hostagent: no result for {job_id} after {timeout:g}s", file=sys.stderr)
            return 1
    return 1


def _read(config: Config, query: Any, *args: Any, **kwargs: Any) -> Any:
    from agent.store import connect

    if not config.store_path.exists():
        raise AgentError(
            f"no job store at {config.store_path} (is --state-dir right?)", field="state_dir"
        )
    conn = connect(config.store_path, readonly=True)
    try:
        return query(conn, *args, **kwargs)
    finally:
        conn.close()


def _jobs(args: argparse.Namespace, config: Config) -> int:
    from agent.store import list_jobs

    jobs, total, _ = _read(
        config, list_jobs, status=args.status, operation=args.operation, limit=args.limit
    )
    for job in jobs:
        print(f"{job.job_id:40} {job.status.value:10} {job.operation:24} {job.submitted_at}")
    print(f"({len(jobs)} of {total})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    from agent.store import get_job

    _print(_read(config, get_job, args.job_id).model_dump(mode="json"))
    return 0


def _result(args: argparse.Namespace, config: Config) -> int:
    from agent.store import get_result

    _print(_read(config, get_result, args.job_id))
    return 0


def _logs(args: argparse.Namespace, config: Config) -> int:
    from agent.store import get_events

    for event in _read(config, get_events, args.job_id):
        print(json.dumps(event))
    return 0


def _cancel(args: argparse.Namespace, config: Config) -> int:
    # The running agent watches spool/cancel/ and cancels the job named by the file.
    from agent.store import get_job

    state = _read(config, get_job, args.job_id)
    if state.status.terminal:
        raise AgentError(f"Job {args.job_id} is already {state.status.value}", field="status")
    request = config.spool_dir / "cancel" / args.job_id
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch()
    print(f"cancel requested for {args.job_id}")
    return 0


def _validate(args: argparse.Namespace, config: Config) -> int:
    from agent.daemon import build_registry
    from agent.intake import prepare_job

    try:
        raw = json.loads(args.file.read_bytes())
    except (OSError, ValueError) as exc:
        raise AgentError(f"{args.file}: not readable JSON: {exc}", field="document") from exc
    job = prepare_job(
        build_registry(), raw, transport="cli", max_timeout=config.max_timeout_seconds
    )
    print(f"{args.file}: valid {job.operation} job {job.job_id}")
    return 0


_COMMANDS = {
    "run": _run,
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "result": _result,
    "logs": _logs,
    "cancel": _cancel,
    "validate": _validate,
}
