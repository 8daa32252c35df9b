"""The SQL of the templates table (VM templates, issue 23): blocking, run by SqliteStore
in its read pool and its writer."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent.errors import ConflictError, NotFoundError
from agent.jobs import utc_now


def _row(row: tuple[str, str, str]) -> dict[str, Any]:
    document, created_at, updated_at = row
    return {**json.loads(document), "created_at": created_at, "updated_at": updated_at}


def list_templates(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT document, created_at, updated_at FROM templates ORDER BY name"
    ).fetchall()
    return [_row(row) for row in rows]


def get_template(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT document, created_at, updated_at FROM templates WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"template {name!r} not found", field="name", reason="not_found")
    return _row(row)


def put_template(
    conn: sqlite3.Connection, name: str, document: dict[str, Any], *, create: bool
) -> dict[str, Any]:
    """Insert (`create`: 409 when it exists) or replace (404 when it does not) a template."""
    now = utc_now()
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    if create:
        # No IntegrityError: an sqlite3 error fails the writer's whole batch.
        added = conn.execute(
            "INSERT INTO templates (name, document, created_at, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, text, now, now),
        ).rowcount
        if not added:
            raise ConflictError(f"template {name!r} exists", field="name", reason="exists")
    else:
        found = conn.execute(
            "UPDATE templates SET document = ?, updated_at = ? WHERE name = ?", (text, now, name)
        ).rowcount
        if not found:
            raise NotFoundError(f"template {name!r} not found", field="name", reason="not_found")
    return get_template(conn, name)


def delete_template(conn: sqlite3.Connection, name: str) -> None:
    if not conn.execute("DELETE FROM templates WHERE name = ?", (name,)).rowcount:
        raise NotFoundError(f"template {name!r} not found", field="name", reason="not_found")
