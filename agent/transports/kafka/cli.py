"""`hostagent submit --kafka`, `hostagent fleet [jobs]`, `hostagent decommission` and
`hostagent key`: their arguments, and each command's entry (the work is in
fleet_commands, fleet_targets and fleet_jobs)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pydantic

from agent.errors import AgentError
from agent.jobs import raise_validation_error
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import parse_selector_args

# The commands import the clients (and librdkafka) only when they run, so that
# building the parser costs every other hostagent command nothing.


def add_connection_arguments(parser: argparse.ArgumentParser, *, flag: str = "--kafka") -> None:
    group = parser.add_argument_group("Kafka (default: the config's [kafka] section)")
    group.add_argument(flag, dest="kafka", metavar="BOOTSTRAP", help="bootstrap servers, h:p,...")
    group.add_argument("--topic-prefix", help="topic prefix (default hostagent)")


def add_submit_arguments(submit: argparse.ArgumentParser) -> None:
    add_connection_arguments(submit)
    group = submit.add_argument_group("where a --kafka job goes (one of)")
    group.add_argument("--host", help="to this worker_id only")
    group.add_argument("--pool", help="to any one agent of this pool")
    group.add_argument("--broadcast", action="store_true", help="to every agent --selector matches")
    group.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="K=V",
        help="with --broadcast: a label the agent must carry (op=NAME: an operation it must offer)",
    )
    group.add_argument("--not-after", help="RFC 3339: agents that get the job later do not run it")
    group.add_argument(
        "--force",
        action="store_true",
        help="send even to a host the fleet map does not know, or a pool or selector "
        "no live host matches",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        default=os.environ.get("HOSTAGENT_KAFKA_KEY"),
        help="sign the job with this key (`hostagent key generate`; default $HOSTAGENT_KAFKA_KEY)",
    )


# `fleet jobs --status`: a host's job status, or how its agent refused the job.
HOST_STATUSES = ("Pending", "Running", "Completed", "Failed", "Cancelled", "Expired", "Rejected")


def add_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """fleet [jobs], decommission and key; `common` adds the options every command has."""
    add_fleet_command(commands, common)
    retire = commands.add_parser(
        "decommission", help="remove a host from the fleet map (stop its agent first)"
    )
    add_connection_arguments(retire, flag="--bootstrap")
    retire.add_argument("worker_id", help="the agent's worker_id (fleet lists them)")
    retire.add_argument(
        "--force",
        action="store_true",
        help="remove it even if the map does not know it or its heartbeat is fresh",
    )
    common(retire)
    key = commands.add_parser("key", help="signing keys for Kafka jobs")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    generate = key_commands.add_parser(
        "generate", help="make an Ed25519 key pair; print the [[kafka.keys]] entry for agents"
    )
    generate.add_argument("--id", required=True, help="the key's id, as agents will know it")
    generate.add_argument(
        "--out", required=True, metavar="FILE", help="where the private key goes (mode 0600)"
    )
    generate.add_argument(
        "--scopes",
        default="submit",
        help="comma-separated scopes the entry grants: read, submit, cancel, admin",
    )
    common(key)


def add_fleet_command(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """fleet [jobs]."""
    fleet = commands.add_parser("fleet", help="the fleet map from Kafka: hosts, labels, pools")
    add_connection_arguments(fleet, flag="--bootstrap")
    fleet.add_argument("--op", action="append", default=[], help="only hosts offering this op")
    fleet.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="only hosts with this label"
    )
    fleet.add_argument("--json", action="store_true", help="JSON for programs")
    fleet.add_argument(
        "--schemas",
        action="store_true",
        help="JSON of each host's whole record, with the parts it names by digest"
        " (operation schemas, libvirt details, allowlist) fetched from <prefix>.schemas",
    )
    fleet.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to read the fleet (default 15)"
    )
    common(fleet)
    _add_fleet_jobs(fleet, common)


def _add_fleet_jobs(fleet: argparse.ArgumentParser, common: Any) -> None:
    # Optional: `hostagent fleet` alone is the map. Options go after `jobs`.
    sub = fleet.add_subparsers(dest="fleet_command", metavar="jobs")
    jobs = sub.add_parser(
        "jobs", help="what happened across the fleet: each job and its outcome on each host"
    )
    add_connection_arguments(jobs, flag="--bootstrap")
    jobs.add_argument(
        "--since", default="1h", help="a duration back (90s, 15m, 1h, 2d) or an RFC 3339 time"
    )
    jobs.add_argument("--op", help="only jobs of this operation")
    jobs.add_argument("--host", help="only jobs this worker_id told of")
    jobs.add_argument(
        "--status",
        dest="host_status",
        choices=HOST_STATUSES,
        help="only jobs with a host in this status",
    )
    jobs.add_argument("--limit", type=int, default=100, help="the newest N jobs (1-1000)")
    jobs.add_argument("--json", action="store_true", help="JSON for programs")
    jobs.add_argument("--timeout", type=float, default=30.0, help="to read the events")
    jobs.add_argument(
        "--follow",
        metavar="JOB_ID",
        help="follow one job on every host until each ends (or --wait-timeout)",
    )
    jobs.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds --follow waits for every host to end the job (default 3600; exit 4)",
    )
    common(jobs)


class _KafkaSection(pydantic.BaseModel):
    """The agent's config as `hostagent fleet` reads it: its [kafka] section only."""

    model_config = pydantic.ConfigDict(extra="ignore")
    kafka: KafkaConfig = pydantic.Field(default_factory=KafkaConfig)


def load_kafka_config(path: Path | None) -> KafkaConfig:
    """The [kafka] section of the config at `path` (and HOSTAGENT_KAFKA__* variables),
    without the daemon's settings: they load every transport's modules (a tenth of a
    10,000-host `fleet --json`)."""
    from agent.config import load_config  # noqa: PLC0415

    return load_config(path, model=_KafkaSection).kafka


def settings_from(args: argparse.Namespace, configured: KafkaConfig) -> KafkaConfig:
    update = {
        key: value
        for key, value in (("bootstrap_servers", args.kafka), ("topic_prefix", args.topic_prefix))
        if value
    }
    settings = KafkaConfig.model_validate({**configured.model_dump(), **update})
    if not settings.enabled:
        raise AgentError(
            "No Kafka brokers: pass --kafka/--bootstrap or set kafka.bootstrap_servers",
            field="kafka.bootstrap_servers",
            reason="empty",
        )
    return settings


def submit(args: argparse.Namespace, settings: KafkaConfig, document: dict[str, Any]) -> int:
    """`hostagent submit --kafka`: send a job to a host, a pool or a broadcast, and with
    --wait/--follow read its events until each host that should answer has, or the
    --wait-timeout (which bounds the whole command, the fleet map's read included)."""
    from agent.transports.kafka.client import send_jobs, target_topic  # noqa: PLC0415
    from agent.transports.kafka.fleet_commands import (  # noqa: PLC0415
        Waiter,
        check_target,
        command_started,
    )
    from agent.transports.kafka.signing import load_private_key  # noqa: PLC0415

    waiting = bool(args.wait or args.follow)
    deadline = command_started() + (args.wait_timeout if waiting else _NO_WAIT_SECONDS)
    chosen = [args.host is not None, args.pool is not None, bool(args.broadcast)]
    if sum(chosen) != 1:
        raise AgentError(
            "--kafka needs exactly one of --host, --pool or --broadcast",
            field="target",
            reason="choose one",
        )
    if args.selector and not args.broadcast:
        raise AgentError("--selector goes with --broadcast", field="selector", reason="unused")
    topic = target_topic(settings, host=args.host, pool=args.pool, broadcast=args.broadcast)
    if args.broadcast:
        document["selector"] = parse_selector_args(args.selector)
    if args.not_after:
        document["not_after"] = args.not_after
    job_id = str(document["job_id"])
    signer = load_private_key(Path(args.key)) if args.key else None
    expected = check_target(settings, args, document, deadline=deadline, waiting=waiting)
    if not waiting:
        send_jobs(settings, topic, [document], signer=signer)
        print(job_id)
        return 0
    waiter = Waiter(
        settings, document, expected=expected, deadline=deadline, timeout=args.wait_timeout
    )
    with waiter:
        send_jobs(settings, topic, [document], signer=signer, timeout=_send_timeout(deadline))
        print(job_id, file=sys.stderr)
        return waiter.wait(follow=args.follow, broadcast=args.broadcast)


# A submit without --wait still bounds its read of the fleet map.
_NO_WAIT_SECONDS = 30.0


def _send_timeout(deadline: float) -> float:
    # The job must reach the brokers (a job dropped at exit would make "it keeps
    # running" a lie): ~0.5 s on a busy host, given 2 s even when the map's read
    # took the rest of a short --wait-timeout.
    return max(2.0, deadline - time.monotonic())


def fleet(args: argparse.Namespace, config: KafkaConfig) -> int:
    """`hostagent fleet`: the map, filtered, as a table or JSON."""
    if getattr(args, "fleet_command", None) == "jobs":
        from agent.transports.kafka.fleet_commands import fleet_jobs  # noqa: PLC0415

        return fleet_jobs(args, settings_from(args, config))
    from agent.transports.kafka.fleet import read_fleet, render_table  # noqa: PLC0415

    settings = settings_from(args, config)
    labels = dict(parse_selector_args(args.label)["labels"])
    # The map is millions of objects and no cycles, and this process ends once it is
    # printed: the cyclic collector's passes over it cost a 10,000-host map a tenth of
    # its time (read_fleet turns it off only while it reads).
    gc.disable()
    full = args.schemas
    hosts = read_fleet(settings, timeout=args.timeout, records=full, schemas=full)
    if args.op or labels:
        hosts = [host for host in hosts if host.matches(operations=args.op, labels=labels)]
    if args.json or full:
        # One compact line by orjson, straight to stdout's buffer: a 10,000-host map
        # indented by json took a second more than reading it from the brokers.
        sys.stdout.flush()
        data = [host.to_dict(full=full) for host in hosts]
        sys.stdout.buffer.write(orjson.dumps(data) + b"\n")
    else:
        print(render_table(hosts))
    return 0


def retire(args: argparse.Namespace, config: KafkaConfig) -> int:
    """`hostagent decommission`: tombstones for a host that is gone for good.

    Refused for a host the map does not know, or whose heartbeat is fresh (its
    agent would go on taking jobs while missing from the map), unless --force.
    """
    from agent.transports.kafka.client import decommission  # noqa: PLC0415
    from agent.transports.kafka.fleet import read_fleet  # noqa: PLC0415
    from agent.transports.kafka.fleet_targets import check_decommission, describe  # noqa: PLC0415

    settings = settings_from(args, config)
    if args.force:
        print(f"hostagent: --force: not checking {args.worker_id} in the map", file=sys.stderr)
    else:
        host = check_decommission(read_fleet(settings, records=False), args.worker_id)
        print(f"hostagent: removing {describe(host)}", file=sys.stderr)
    decommission(settings, args.worker_id)
    print(f"{args.worker_id} removed from the fleet map")
    return 0


def generate_key(args: argparse.Namespace, _config: KafkaConfig) -> int:
    """`hostagent key generate`: a private key file, and the line agents trust it by."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    from agent.transports.kafka.settings import KafkaKeyConfig  # noqa: PLC0415
    from agent.transports.kafka.signing import private_key_file, public_key_text  # noqa: PLC0415

    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    private = Ed25519PrivateKey.generate()
    public = public_key_text(private.public_key())
    try:
        entry = KafkaKeyConfig.model_validate(
            {"id": args.id, "public_key": public, "scopes": scopes}
        )
    except pydantic.ValidationError as exc:
        raise_validation_error(exc, prefix="key")
    path = Path(args.out)
    try:
        # O_EXCL: never overwrite a key someone relies on; 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise AgentError(
            f"Cannot create {path}", field="--out", reason=exc.strerror or str(exc)
        ) from exc
    with os.fdopen(fd, "w") as out:
        out.write(private_key_file(entry.id, private))
    quoted = ", ".join(f'"{scope}"' for scope in entry.scopes)
    print(f"# Private key written to {path}; add this to each agent's config:")
    print(f'[[kafka.keys]]\nid = "{entry.id}"\npublic_key = "{public}"\nscopes = [{quoted}]')
    return 0
