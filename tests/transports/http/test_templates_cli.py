"""`hostagent template list|show|create|delete` and `hostagent vm create --template`
against an agent served in this process on test:///default."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import structlog
import trio

from agent.cli.command import main
from agent.config import Config
from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, http_of, serving, with_http


@pytest.fixture
async def remote(config: Config, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Agent]:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        async with serving(with_http(config)) as agent:
            monkeypatch.setenv("HOSTAGENT_URL", http_of(agent).url)
            monkeypatch.setenv("HOSTAGENT_TOKEN", ADMIN)
            yield agent
    finally:
        structlog.reset_defaults()


async def hostagent(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
async def test_template_commands_and_vm_create(
    remote: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"tpl-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "memory": 128, "disks": [{"size": 1}], "storagepool": "default-pool"}
    code, out, err = await hostagent(capsys, "template", "create", "--data", json.dumps(body))
    assert code == 0, err
    code, out, _ = await hostagent(capsys, "template", "list")
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["NAME", "OS", "CPUS", "MEMORY"]
    assert any(row.split()[0] == name for row in rows)
    code, out, _ = await hostagent(capsys, "template", "show", name, "--json")
    assert json.loads(out)["memory"] == 128

    vm = f"{name}-vm"
    code, out, err = await hostagent(
        capsys, "vm", "create", "--template", name, "--name", vm, "--wait"
    )
    assert code == 0, err
    outcome = json.loads(out.partition("\n")[2])
    assert (outcome["operation"], outcome["status"]) == ("vm.create", "Completed")
    assert outcome["result"]["name"] == vm
    code, out, _ = await hostagent(capsys, "vm", "list")
    assert any(row.split()[0] == vm for row in out.splitlines()[1:])
    # The name is taken: refused before any job.
    code, _, err = await hostagent(capsys, "vm", "create", "--template", name, "--name", vm)
    assert code != 0
    assert "exists" in err

    code, out, _ = await hostagent(capsys, "template", "delete", name)
    assert code == 0
    code, _, err = await hostagent(capsys, "template", "show", name)
    assert code != 0
    assert "not found" in err
