"""Helpers for the local API: a real agent with its socket, and requests over the
socket made by a process running as another user (so SO_PEERCRED reports that user)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from tests.agentproc import AgentProcess

NOBODY = 65534  # uid nobody, gid nogroup: present on every Debian system


def socket_agent(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> AgentProcess:
    """A real agent with HTTP on an ephemeral port and its socket at <state>/api.sock."""
    agent = AgentProcess(tmp_path / "state", tmp_path / "spool", "--http-bind", "127.0.0.1:0")
    agent.argv.remove("--no-http")
    agent.argv.remove("--no-socket")
    agent.argv.extend(extra)
    if env:
        agent.env = {**os.environ, **env}
    return agent


def _read_answer(client: socket.socket) -> bytes:
    """Headers, then exactly Content-Length bytes (hypercorn may keep the connection open)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += client.recv(65536)
    return head + b"\r\n\r\n" + body


def request_as(
    uid: int, gid: int, path: Path, method: str, target: str, *, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One HTTP request over the Unix socket from a child process running as uid:gid."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child process)
        code = 0
        try:
            os.close(reader)
            # pytest's temporary directories are root's alone: enter the socket's
            # directory first, so the new user needs no search rights above it.
            os.chdir(path.parent)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30)
                client.connect(path.name)
                client.sendall(head + payload)
                answer = _read_answer(client)
            os.write(writer, answer)
        except BaseException as exc:
            os.write(writer, f"CHILD-ERROR {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    answer = b""
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    assert not answer.startswith(b"CHILD-ERROR"), answer.decode()
    head_text, _, body_bytes = answer.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(body_bytes or b"{}")
