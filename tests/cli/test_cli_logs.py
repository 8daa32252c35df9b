"""A command's stdout holds its answer only: what libraries log on the way goes to stderr."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_fleet_json_with_the_broker_down_keeps_stdout_clean_and_says_why_on_stderr() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["fleet", "--json", "--timeout", "2", "--bootstrap", f"127.0.0.1:{port}"]
    done = subprocess.run(
        [sys.executable, "-m", "agent", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    # librdkafka's "Connection refused" lines went to stdout (structlog's default) before.
    assert done.stdout == ""
    assert "hostagent: Kafka cannot be read" in done.stderr
    # Debug lines (one per connection retry) are left out of a command's stderr.
    assert "[debug" not in done.stderr
