"""`hostagent vm|pool|volume|net|host` over HTTP: tables for people, --json for
programs, actions as jobs followed with --wait (the CLI runs in a worker thread
against an agent served in this process on test:///default)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import structlog
import trio

from agent.cli.command import main
from agent.cli.support import EXIT_NOT_FOUND
from agent.config import Config
from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, http_of, serving, with_http


@pytest.fixture
async def remote(config: Config, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Agent]:
    # The agent's log lines would otherwise share stdout with what the CLI prints.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        async with serving(with_http(config)) as agent:
            assert http_of(agent) is not None
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
async def test_vm_nouns_list_info_and_act(
    remote: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    spec = json.dumps({"name": name, "memory_mib": 256})
    await remote.intake.submit(
        {
            "version": "1.0",
            "job_id": f"define-{name}",
            "kind": "VMOperation",
            "operation": "vm.define",
            "payload": {"type": "vm.define.v1", "data": {"spec": json.loads(spec)}},
        },
        transport="test",
    )
    code, out, _ = await hostagent(capsys, "vm", "start", name, "--wait", "--job-id", f"s-{name}")
    assert code == 0
    job_id, _, record = out.partition("\n")
    assert job_id == f"s-{name}"
    assert json.loads(record)["result"]["state"] == "running"

    code, out, _ = await hostagent(capsys, "vm", "list")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "STATE", "VCPUS", "MEMORY", "AUTOSTART", "UUID"]
    mine = next(row.split() for row in rows if row.startswith(name + " "))
    assert mine[:5] == [name, "running", "1", "256", "MiB"]
    code, out, _ = await hostagent(capsys, "vm", "list", "--json", "--state", "running")
    assert name in [vm["name"] for vm in json.loads(out)["vms"]]
    code, out, _ = await hostagent(capsys, "vm", "info", name)
    assert "state" in out
    assert "stats.cpu_percent" in out

    code, _, err = await hostagent(capsys, "vm", "resume", name)
    assert code == 0  # resuming a running VM fits: a no-op job
    code, out, _ = await hostagent(capsys, "vm", "poweroff", name, "--wait")
    assert json.loads(out.partition("\n")[2])["status"] == "Completed"
    code, _, err = await hostagent(capsys, "vm", "suspend", name)
    assert code == 1
    assert f"cannot suspend VM '{name}' while it is shutoff" in err
    code, _, _ = await hostagent(capsys, "vm", "delete", name, "--wait")
    assert code == 0


@pytest.mark.slow
async def test_pool_volume_net_host_nouns(
    remote: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await hostagent(capsys, "pool", "list")
    assert out.splitlines()[0].split()[:3] == ["NAME", "STATE", "TYPE"]
    assert "default-pool" in out
    code, out, _ = await hostagent(capsys, "volume", "list", "default-pool", "--json")
    assert json.loads(out)["pool"] == "default-pool"
    code, out, _ = await hostagent(capsys, "net", "list")
    assert "192.168.122.1/24" in out
    code, out, _ = await hostagent(capsys, "host", "stats", "--json")
    assert 0 <= json.loads(out)["cpu_percent"] <= 100
    code, out, _ = await hostagent(capsys, "host", "info")
    assert "hypervisor" in out
    code, _, err = await hostagent(capsys, "net", "info", "ghost")
    assert code == EXIT_NOT_FOUND
    assert "hostagent: network 'ghost' not found" in err
