"""The spool's quarantine line names the refused field and the value the file gave it
(issue 24, as http.refused does): `spool.quarantined field=payload.data.path
value=/etc/hostname`; a secret's value is redacted, a long one cut short."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import Config
from agent.core.targets import MAX_VALUE, REDACTED
from agent.service.daemon import Agent
from tests.jobs import job
from tests.spoolkit import drop, wait_for_files

pytestmark = pytest.mark.slow  # a real agent per test

SECRET = "hunter2-never-in-a-log-line"


async def quarantined(config: Config, logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The quarantine line of spool file `name`, once its report is written."""
    await wait_for_files(config.spool_dir / "failed", f"{name}.error.json", 1)
    [line] = [entry for entry in logs if entry.get("file") == name]
    assert line["event"] == "spool.quarantined"
    return line


async def test_a_refused_path_is_named_with_its_field_and_value(
    agent: Agent, config: Config
) -> None:
    with capture_logs() as logs:
        drop(
            config.spool_dir,
            "outside.json",
            job("outside", "image.info", {"path": "/etc/hostname"}),
        )
        line = await quarantined(config, logs, "outside.json")
    assert line["log_level"] == "warning"
    assert line["field"] == "payload.data.path"
    assert line["value"] == "/etc/hostname"


async def test_a_secret_fields_value_is_redacted(agent: Agent, config: Config) -> None:
    data = {"seconds": 1, "api_token": SECRET}  # system.sleep takes no other field
    with capture_logs() as logs:
        drop(config.spool_dir, "secret.json", job("secret", "system.sleep", data))
        line = await quarantined(config, logs, "secret.json")
    assert line["field"] == "payload.data.api_token"
    assert line["value"] == REDACTED
    assert SECRET not in repr(logs)


async def test_a_long_value_is_cut_short(agent: Agent, config: Config) -> None:
    long_path = "/etc/" + "x" * 1000
    with capture_logs() as logs:
        drop(config.spool_dir, "long.json", job("long", "image.info", {"path": long_path}))
        line = await quarantined(config, logs, "long.json")
    assert line["field"] == "payload.data.path"
    assert line["value"] == long_path[:MAX_VALUE] + "..."


async def test_a_refusal_at_submit_names_the_value_too(agent: Agent, config: Config) -> None:
    """A document admitted but refused when recorded (the same job_id, another
    document): the line still shows what the file said."""
    spool = config.spool_dir
    drop(spool, "first.json", job("same", data={"n": 1}))
    await wait_for_files(spool / "done", "same.result.json", 1)
    with capture_logs() as logs:
        drop(spool, "second.json", job("same", data={"n": 2}))
        line = await quarantined(config, logs, "second.json")
    assert line["field"] == "job_id"
    assert line["value"] == "same"
