"""Every `hostagent` example in the README's `sh` blocks, run as typed in a fresh
checkout-like directory against a `make run`-style agent (its ./hostagent.toml).

A block that sets shell variables is a scripted scenario with its own set-up
(the Kafka fleet starts its own broker and agents): its own tests run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
_COMMAND = re.compile(r"^(?:\$ )?((?:\.venv/bin/)?hostagent\b.*)$")
_EXITS = re.compile(r"#\s*exits (\d+)")
_SCENARIO = re.compile(r"^[A-Za-z_]+=", re.MULTILINE)


def readme_examples() -> list[tuple[str, int]]:
    """(command line, expected exit code) of each `hostagent` line in a ```sh block."""
    examples = []
    for block in _BLOCK.findall((ROOT / "README.md").read_text()):
        if _SCENARIO.search(block):
            continue
        for line in block.splitlines():
            match = _COMMAND.match(line.strip())
            if match is None:
                continue
            command, _, comment = match.group(1).partition("#")
            expected = _EXITS.search("#" + comment)
            examples.append((command.strip(), int(expected.group(1)) if expected else 0))
    return examples


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory laid out like a fresh clone after `make run`: its config, its venv."""
    where = tmp_path_factory.mktemp("clone")
    shutil.copy(ROOT / "hostagent.toml", where / "hostagent.toml")
    shutil.copytree(ROOT / "etc" / "hostagent" / "runbooks", where / "etc/hostagent/runbooks")
    (where / ".venv").symlink_to(ROOT / ".venv")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HOSTAGENT_")}
    # Only the port differs from `make run`: tests must not collide with one running here.
    env["HOSTAGENT_HTTP__BIND"] = "127.0.0.1:0"
    log = (where / "agent.log").open("wb")
    agent = subprocess.Popen(
        [".venv/bin/hostagent", "run", "--config", "hostagent.toml"],
        cwd=where,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 60
    while not (where / "var" / "state" / "api.sock").is_socket():
        assert agent.poll() is None, (where / "agent.log").read_text()
        assert time.monotonic() < deadline, (where / "agent.log").read_text()
        time.sleep(0.1)
    yield where
    agent.terminate()
    agent.wait(30)
    log.close()


def test_the_readme_has_first_steps_examples() -> None:
    commands = [command for command, _ in readme_examples()]
    assert ".venv/bin/hostagent jobs" in commands
    assert any(command.startswith(".venv/bin/hostagent submit") for command in commands)


@pytest.mark.slow
def test_every_readme_example_runs_as_typed(checkout: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HOSTAGENT_")}
    env["PATH"] = f"{checkout / '.venv' / 'bin'}:{env.get('PATH', '')}"
    for command, expected in readme_examples():
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == expected, (command, result.stdout[-2000:], result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
