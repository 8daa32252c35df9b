"""Runbook fixtures: an agent with a directory of installed runbooks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import RunbooksConfig
from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.kafka_broker import kafka_broker, kafka_prefix

__all__ = ["kafka_broker", "kafka_prefix"]  # real brokers for test_fuzz_kafka

ECHO_CHAIN: dict[str, Any] = {
    "schema_version": 1,
    "name": "echo-chain",
    "version": 1,
    "description": "Three echoes, each fed by the one before",
    "parameters": {
        "greeting": {"type": "string", "pattern": "[a-z ]+", "max": 40},
        "count": {"type": "integer", "min": 1, "max": 9, "default": 2},
        "loud": {"type": "boolean", "default": False},
    },
    "steps": [
        {
            "name": "first",
            "operation": "system.echo",
            "payload": {"said": {"$param": "greeting"}, "n": {"$param": "count"}},
            "outputs": {"said": "result.said"},
        },
        {
            "name": "shout",
            "operation": "system.echo",
            "when": {"$param": "loud"},
            "payload": {"said": {"$step": "first.outputs.said"}},
        },
        {
            "name": "last",
            "operation": "system.echo",
            "payload": {
                "again": {"$step": "first.result.said"},
                "shouted": {"$step": "shout.status"},
            },
            "outputs": {"again": "result.again"},
        },
    ],
}


def install(directory: Path, *runbooks: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for runbook in runbooks:
        name = f"{runbook['name']}-v{runbook['version']}.json"
        (directory / name).write_text(json.dumps(runbook))


@pytest.fixture
def runbook_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "runbooks"
    install(directory, ECHO_CHAIN)
    return directory


@pytest.fixture
def config(config: Settings, runbook_dir: Path) -> Settings:
    # One worker: a runbook waiting for its step must lend its slot (no deadlock).
    return config.model_copy(
        update={
            "max_concurrent_jobs": 1,
            "runbooks": RunbooksConfig(dirs=[runbook_dir], inline="any"),
        }
    )


@pytest.fixture
async def agent(config: Settings) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        running: Agent = await nursery.start(Agent(config).run)
        yield running
        nursery.cancel_scope.cancel()
