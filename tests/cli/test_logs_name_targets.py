"""Log lines name what they act on, and refusals name the field and its value; a file a
payload names that does not exist is not found (HTTP 404 NOT_FOUND, CLI exit 66), not
forbidden. One real agent (test:///default, its socket), driven by the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.support import EXIT_NOT_FOUND
from agent.core.targets import REDACTED, job_target, refused_value
from tests.agentproc import AgentProcess
from tests.jobs import wait_for
from tests.localapi import socket_agent

HOSTAGENT = [sys.executable, "-m", "agent"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    root = tmp_path_factory.mktemp("targets")
    (root / "images").mkdir()
    agent = socket_agent(root, env={"HOSTAGENT_POLICY__IMAGE_ROOTS": f'["{root / "images"}"]'})
    agent.start()
    try:
        yield agent, root
    finally:
        assert agent.stop() == 0


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--socket", str(root / "state" / "api.sock")]
    return subprocess.run(
        [*HOSTAGENT, *args, *where], capture_output=True, text=True, timeout=60, check=False
    )


def submit(root: Path, operation: str, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cli(root, "submit", "--op", operation, "--data", json.dumps(data), "--wait")


@pytest.mark.slow
def test_job_started_names_the_domain_and_the_path(running: tuple[AgentProcess, Path]) -> None:
    agent, root = running
    assert submit(root, "vm.suspend", {"name": "test"}).returncode == 0
    assert submit(root, "vm.resume", {"name": "test"}).returncode == 0
    image = str(root / "images" / "a.qcow2")
    made = submit(root, "image.create", {"path": image, "size_bytes": 1048576})
    assert made.returncode == 0, made.stderr
    started = {str(line["operation"]): line for line in agent.events("job.started")}
    assert started["vm.suspend"]["domain"] == "test"
    assert started["vm.resume"]["domain"] == "test"
    assert started["image.create"]["path"] == image


@pytest.mark.slow
def test_a_missing_image_file_is_not_found_and_its_refusal_names_field_and_value(
    running: tuple[AgentProcess, Path],
) -> None:
    agent, root = running
    missing = str(root / "images" / "missing.qcow2")
    answer = submit(root, "image.info", {"path": missing})
    assert answer.returncode == EXIT_NOT_FOUND, answer.stderr
    assert "no such file" in answer.stderr
    forbidden = submit(root, "image.info", {"path": "/etc/hostname"})
    assert forbidden.returncode == 77, forbidden.stderr  # outside the image roots: forbidden
    wait_for(lambda: len(agent.events("http.refused")) >= 2, 10, "the refusal lines")
    lines = {line["code"]: line for line in agent.events("http.refused")}
    assert lines["NOT_FOUND"]["status"] == 404
    assert lines["NOT_FOUND"]["field"] == "payload.data.path"
    assert lines["NOT_FOUND"]["value"] == missing
    assert lines["FORBIDDEN"]["field"] == "payload.data.path"
    assert lines["FORBIDDEN"]["value"] == "/etc/hostname"


def test_a_refused_secret_is_never_logged() -> None:
    data = {"sasl_password": "hunter2", "disks": [{"path": "/x"}]}
    body = json.dumps({"payload": {"data": data}})
    assert refused_value("payload.data.sasl_password", body.encode()) == REDACTED
    assert refused_value("payload.data.disks.0.path", body.encode()) == "/x"
    assert refused_value("payload.data.disks.1.path", body.encode()) is None
    assert refused_value("payload.data.path", b"not json") is None
    assert refused_value("body", b"[" * 100_000) is None  # nested past the parser's depth
    assert len(refused_value("v", json.dumps({"v": "x" * 5000}).encode()) or "") < 300


def test_job_target_reads_names_and_paths_generically() -> None:
    assert job_target("vm.shutdown", {"name": "web1", "force": True}) == {"domain": "web1"}
    assert job_target("vm.define", {"spec": {"name": "web2", "memory_mib": 64}}) == {
        "domain": "web2"
    }
    assert job_target("storage.volume.delete", {"pool": "default", "name": "d.qcow2"}) == {
        "pool": "default",
        "volume": "d.qcow2",
    }
    assert job_target("storage.pool.start", {"name": "default"}) == {"pool": "default"}
    assert job_target("guestkit.inspect", {"image": {"path": "/i/a.qcow2"}}) == {
        "path": "/i/a.qcow2"
    }
    assert job_target("image.convert", {"path": "/i/a", "output_path": "/i/b"}) == {
        "path": "/i/a",
        "output_path": "/i/b",
    }
    assert job_target("system.echo", {"m": 1}) == {}
    assert job_target("system.echo", ["not", "an", "object"]) == {}
