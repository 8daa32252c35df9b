"""The CLI without a running agent to talk to: submitting through the spool and
reading the job store directly, when this user may (nothing is ever created);
and making tokens, which needs no agent either."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.commands import print_json as _print
from agent.errors import BadRequestError, UnreachableError

if TYPE_CHECKING:
    from agent.service.settings import Settings


def _no_agent(config: Settings, command: str) -> UnreachableError:
    from agent.cli.support import no_agent

    return no_agent(config, command)


def submit_to_spool(args: argparse.Namespace, spool: Path, document: dict[str, Any]) -> int:
    """Drop the job into the spool the safe way; with --wait, wait for its result file."""
    from agent.transports.spool.layout import drop_job

    job_id = str(document["job_id"])
    drop_job(spool, f"{job_id}.json", json.dumps(document).encode())
    print(job_id)
    if not args.wait:
        return 0
    return _wait_for_outcome(spool, job_id, args.wait_timeout)


def _wait_for_outcome(spool: Path, job_id: str, timeout: float) -> int:
    import watchfiles

    from agent.cli.commands import outcome_code
    from agent.cli.support import EXIT_FAILED, EXIT_TIMEOUT
    from agent.transports.spool.layout import result_name

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
            return outcome_code(record["status"])
        if refused.exists():
            _print(json.loads(refused.read_text()))
            return EXIT_FAILED
        if time.monotonic() > deadline:
            print(f"hostagent: no result for {job_id} after {timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT
    return EXIT_FAILED


def read_store(config: Settings, query: Any, *args: Any, **kwargs: Any) -> Any:
    """Read the job store directly (no agent running), if this user may."""
    from agent.store.schema import connect

    if not config.store_path.exists():
        raise _no_agent(config, "reading jobs")
    if not os.access(config.store_path, os.R_OK):
        raise PermissionError(
            13,
            "no agent socket, and the job store is not readable by this user",
            str(config.store_path),
        )
    conn = connect(config.store_path, readonly=True)
    try:
        return query(conn, *args, **kwargs)
    finally:
        conn.close()


def jobs_from_store(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.commands import print_jobs
    from agent.store.queries import list_jobs

    after = int(args.cursor) if args.cursor else 0
    first = True
    while True:
        jobs, total, after_seq = read_store(
            config,
            list_jobs,
            status=args.status,
            operation=args.operation,
            limit=args.limit,
            after_seq=after,
            newest_first=True,
        )
        rows = [job.model_dump(mode="json") for job in jobs]
        if args.json:
            print(json.dumps({"jobs": rows, "total": total, "next_cursor": after_seq}))
        else:
            print_jobs(rows, header=first)
        first = False
        if not (args.all and after_seq):
            break
        after = after_seq
    if not args.json:
        more = f"; more: --cursor {after_seq}" if after_seq else ""
        print(f"({total} jobs{more})", file=sys.stderr)
    return 0


def token_create(args: argparse.Namespace, config: Settings) -> int:
    """Print a new token once, and the config entry that admits it (no agent needed)."""
    from agent.transports.http.auth import SCOPES, create_token, token_entry_toml

    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise BadRequestError(
            f"--scopes: unknown scope(s) {', '.join(unknown) or '(none given)'}",
            field="scopes",
            reason=f"Expected some of {', '.join(SCOPES)}",
        )
    name = args.name or f"token-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    token, entry = create_token(name, scopes)
    print(token)
    print()
    print(token_entry_toml(entry), end="")
    print(
        "\nThe token is shown once and stored nowhere; the agent keeps only its SHA-256.\n"
        "Add the entry to the agent's config (or HOSTAGENT_HTTP__TOKENS as JSON) and restart "
        "or reload it. Clients send 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return 0
