"""`hostagent prune [--dry-run]`: the retention policy applied now, or shown."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime

from agent.config import Config
from agent.errors import BadRequestError


def add_arguments(prune: argparse.ArgumentParser) -> None:
    prune.add_argument(
        "--dry-run", action="store_true", help="only show what would be pruned; change nothing"
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Print what retention removes (with --dry-run, would remove) from the store."""
    from agent.store.retention import (
        RetentionPolicy,
        prune_batch,
        remove_artifacts,
        would_prune,
    )
    from agent.store.schema import connect
    from agent.transports.spool.delivery import forget
    from agent.transports.spool.layout import spool_dirs

    if not config.store_path.exists():
        raise BadRequestError(f"no job store at {config.store_path}", field="state_dir")
    policy = RetentionPolicy(config.store.retention_days, config.store.max_jobs)
    now = datetime.now(UTC)
    if args.dry_run:
        conn = connect(config.store_path, readonly=True)
        try:
            report = would_prune(conn, policy, now)
        finally:
            conn.close()
        shown = {key: value for key, value in asdict(report).items() if key != "job_ids"}
        print(json.dumps({"dry_run": True, "would_prune": shown}, indent=2))
        return 0
    conn = connect(config.store_path)
    total: dict[str, int] = {}
    try:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            report = prune_batch(conn, policy, now)
            conn.execute("COMMIT")
            forget(spool_dirs(config.spool_dir), report.job_ids)
            remove_artifacts(config.state_dir / "artifacts", report.job_ids)
            for key, value in asdict(report).items():
                if key != "job_ids":
                    total[key] = total.get(key, 0) + value
            if report.jobs < policy.batch and report.records_expired < policy.batch:
                break
    finally:
        conn.close()
    print(json.dumps({"dry_run": False, "pruned": total}, indent=2))
    return 0
