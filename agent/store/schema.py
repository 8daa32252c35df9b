"""The SQLite schema, its migrations and the agent's connection settings."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from agent.errors import StoreError

SCHEMA_VERSION = 9

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        operation TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        transport TEXT NOT NULL,
        document TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        timeout_seconds REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        submitted_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        progress REAL,
        error TEXT,
        result TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    CREATE INDEX jobs_by_operation ON jobs (operation, seq);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX transitions_by_job ON transitions (job_id, id);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        at TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX job_events_by_job ON job_events (job_id, id);
    """,
    # The durable feed of what happened to each job, per consumer (a transport).
    # AUTOINCREMENT: ids are never reused after delivered rows are pruned, so a
    # reader's position stays meaningful.
    2: """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        consumer TEXT NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX outbox_by_consumer ON outbox (consumer, id);
    """,
    # Issue 11: lists flat in the store's size, and retention.
    # job_counts: list totals and health counts without counting rows (a count
    # over a million jobs took 15-230 ms), kept by triggers in the same transaction.
    # pruned_jobs: the idempotency record of pruned jobs, so a redelivery is still
    # recognised (see retention.py).
    3: """
    CREATE INDEX jobs_by_status_operation ON jobs (status, operation, seq);
    CREATE INDEX jobs_by_completion ON jobs (completed_at) WHERE completed_at IS NOT NULL;
    ALTER TABLE outbox ADD COLUMN job_id TEXT;
    CREATE INDEX outbox_by_job ON outbox (job_id) WHERE job_id IS NOT NULL;
    CREATE TABLE job_counts (
        status TEXT NOT NULL,
        operation TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (status, operation)
    ) WITHOUT ROWID;
    INSERT INTO job_counts (status, operation, n)
        SELECT status, operation, count(*) FROM jobs GROUP BY status, operation;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (status, operation, n) VALUES (NEW.status, NEW.operation, 1)
        ON CONFLICT (status, operation) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND operation = OLD.operation;
    END;
    CREATE TRIGGER job_counts_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status AND operation = OLD.operation;
        INSERT INTO job_counts (status, operation, n) VALUES (NEW.status, NEW.operation, 1)
        ON CONFLICT (status, operation) DO UPDATE SET n = n + 1;
    END;
    CREATE TABLE pruned_jobs (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        pruned_at TEXT NOT NULL
    );
    """,
    # The counts of new jobs are added once per insert batch by writes.insert_jobs (the
    # per-row upsert of this trigger was half the cost of inserting a job).
    4: """
    DROP TRIGGER job_counts_insert;
    """,
    # A job's submission is no longer a transitions row of its own: it is read from the
    # job's submitted_at and transport (queries.get_transitions). The rows it replaces
    # say exactly that, so they go (nothing is lost); every other row stays.
    5: """
    DELETE FROM transitions WHERE id IN (
        SELECT transitions.id FROM transitions JOIN jobs USING (job_id)
        WHERE transitions.status = 'Pending' AND transitions.at = jobs.submitted_at
        AND transitions.reason = 'submitted via ' || jobs.transport
    );
    """,
    # Who submitted each job, beside its transport (it replaces the local socket's
    # socket-owners.sqlite3). Jobs recorded before have none: NULL, nobody's own.
    6: """
    ALTER TABLE jobs ADD COLUMN submitter TEXT;
    """,
    7: "",
    # A job may have a parent (a runbook step is a child job of the runbook's job).
    8: """
    ALTER TABLE jobs ADD COLUMN parent TEXT;
    CREATE INDEX jobs_by_parent ON jobs (parent) WHERE parent IS NOT NULL;
    """,
    # Issue 23: VM templates (Kimchi's /templates), kept with the jobs so a backup of
    # the store holds them. `document` is the template's JSON as the API shows it.
    9: """
    CREATE TABLE templates (
        name TEXT PRIMARY KEY,
        document TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
}


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger's body holds semicolons of its own."""
    statements: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    return statements


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the agent's pragmas; migrations run on read-write opens.

    Blocking: the daemon calls it from a worker thread.
    """
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 5000")
            return conn
        path.parent.mkdir(parents=True, exist_ok=True)
        # The store holds every job's payload and result: owner only, whatever the umask.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # A new file: pages freed by retention can be handed back (incremental_vacuum).
            # Chosen before WAL and the first table, after which it cannot change.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"job store {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreError(f"store schema {current} is newer than this agent ({SCHEMA_VERSION})")
    for version in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in _statements(_MIGRATIONS[version]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
