"""Issue 20: no input can kill the agent. Hypothesis feeds a real agent process, over
the spool, HTTP and the local socket, what the attack used and more: text UTF-8
cannot encode, huge values, path-like job ids, oversized results, every field of
the document with a value of the wrong type, and bytes that are not JSON.

The agent never exits; every HTTP answer is a 2xx or 4xx envelope; every spool
file ends quarantined with its report, or as a job that finishes; and the next
normal job in the same directory runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agentproc import AgentProcess
from tests.http_helpers import READ, SUBMIT, TOKEN_ENTRIES
from tests.jobs import job
from tests.spoolkit import drop

pytestmark = pytest.mark.slow

EXAMPLES = 80
_MISSING = object()  # the field is left out

_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
_TEXT = st.text(st.characters() | _SURROGATE, max_size=12)


@dataclass(frozen=True)
class Huge:
    """A huge value, made only when the document is written (its repr stays short)."""

    kind: str

    def value(self) -> Any:
        return {
            "text": "x" * 300_000,
            "int": 2**70,
            "negative": -(2**80),
            "float": 1e308,
            "list": [0] * 50_000,
            "result-200k": "r" * 200_000,
            "result-600k": "r" * 600_000,
            "result-1m": "r" * 1_000_000,
            "result-5m": "r" * 5_000_000,
        }[self.kind]


_HUGE = st.sampled_from(["text", "int", "negative", "float", "list"]).map(Huge)
_SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT | _HUGE
_VALUE = st.recursive(
    _SCALAR,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_TEXT, children, max_size=3),
    max_leaves=8,
)
PATH_LIKE_IDS = [
    "/some/dir",
    "../../etc/passwd",
    "a/b",
    ".",
    "..",
    ".hidden",
    "x" * 129,
    "abc\n",
    "batch",
    "\ud800",
    "",
    "/",
]
FIELDS = [
    "version",
    "job_id",
    "kind",
    "operation",
    "created_at",
    "payload",
    "priority",
    "timeout_seconds",
    "labels",
    "not_after",
    "payload.type",
    "payload.data",
    "payload.data.message",
]
RAW = [
    b"",
    b"\xff\xfe\x00",
    b'{"version": "1.0", "kind": "\xed\xa0\x80"}',  # a surrogate as UTF-8 bytes
    b'{"version": "1.0", "kind": "\xc3"}',  # not UTF-8 at all
    b"[" * 5000 + b"]" * 5000,
    b'{"priority": ' + b"1" * 5000 + b"}",  # past Python's digits limit
    b'{"version": "1.0", "kind": "T", "oper',
    b"null",
    b'"\\ud800"',
]


@dataclass(frozen=True, repr=False)
class Case:
    channel: str  # spool, http or socket
    body: bytes
    label: str

    def __repr__(self) -> str:  # the body may be megabytes
        return f"Case({self.channel}, {self.label})"


_ids = itertools.count()


def _document(job_id: str) -> dict[str, Any]:
    return job(job_id, "system.echo", {"message": "hello"}, labels={"fuzz": "yes"})


def _with(path: str, value: Any) -> bytes:
    document = _document(f"fuzz-{next(_ids)}")
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[part]
    if value is _MISSING:
        target.pop(last, None)
    else:
        target[last] = value
    # ensure_ascii: a lone surrogate travels as the escape "\ud800", valid JSON.
    return json.dumps(document, default=Huge.value).encode()


# "spool-cp": written in place, as `cp` does (peeked at until it settles).
_CHANNEL = st.sampled_from(["spool", "spool-cp", "http", "socket"])
_WRONG_FIELD = st.builds(
    lambda channel, path, value: Case(channel, _with(path, value), f"{path}={value!r:.40}"),
    _CHANNEL,
    st.sampled_from(FIELDS),
    _VALUE | st.just(_MISSING),
)
_PATH_ID = st.builds(
    lambda channel, job_id: Case(channel, _with("job_id", job_id), f"job_id={job_id!r}"),
    _CHANNEL,
    st.sampled_from(PATH_LIKE_IDS),
)
_BIG_RESULT = st.builds(
    lambda channel, size: Case(channel, _with("payload.data.message", Huge(size)), size),
    _CHANNEL,
    st.sampled_from(["result-200k", "result-600k", "result-1m", "result-5m"]),
)
_RAW = st.builds(
    lambda channel, index: Case(channel, RAW[index], f"raw {RAW[index][:30]!r}"),
    _CHANNEL,
    st.integers(0, len(RAW) - 1),
)
# A cancel request: an entry in cancel/ named anything a file name can be.
_CANCEL_NAME = st.binary(min_size=1, max_size=60).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b"..")
) | st.sampled_from([b"fuzz-1", b"batch", b"..x", b"\xed\xa0\x80", b"x" * 255])
_CANCEL = st.builds(
    lambda name, kind: Case(f"cancel-{kind}", name, f"cancel {kind} {name[:30]!r}"),
    _CANCEL_NAME,
    st.sampled_from(["file", "directory", "fifo"]),
)
CASES = st.one_of(_WRONG_FIELD, _PATH_ID, _BIG_RESULT, _RAW, _CANCEL)


@dataclass
class Running:
    agent: AgentProcess
    url: str
    socket: Path
    spool: Path
    dropped: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("fuzz")
    agent = AgentProcess(work / "state", work / "spool", "--http-bind", "127.0.0.1:0")
    agent.argv.remove("--no-http")
    agent.argv.remove("--no-socket")
    agent.env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([entry.model_dump() for entry in TOKEN_ENTRIES]),
    }
    agent.start()
    (ready,) = agent.events("http.ready")
    try:
        yield Running(agent, str(ready["url"]), Path(str(ready["socket"])), work / "spool")
    finally:
        code = agent.stop(timeout=60)
        assert code == 0, "".join(agent.lines[-30:])


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})


def _alive(running: Running) -> None:
    assert running.agent.process is not None
    assert running.agent.process.poll() is None, "".join(running.agent.lines[-30:])


def _settled(spool: Path) -> bool:
    return not any(
        name for folder in ("incoming", ".claimed", "active") for name in os.listdir(spool / folder)
    )


def test_no_input_kills_the_agent(running: Running) -> None:
    auth = {"Authorization": f"Bearer {SUBMIT}"}
    over_tcp = httpx.Client(base_url=running.url, headers=auth, timeout=60)
    reader = httpx.Client(
        base_url=running.url, headers={"Authorization": f"Bearer {READ}"}, timeout=60
    )
    # Connections kept alive, as over TCP: a 413 leaves the socket's connection usable
    # (test_a_413_over_the_socket_leaves_its_connection_usable).
    over_socket = httpx.Client(
        base_url="http://localhost",
        transport=httpx.HTTPTransport(uds=str(running.socket)),
        timeout=60,
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=CASES)
    def feed(case: Case) -> None:
        if case.channel.startswith("spool"):
            name = f"case-{next(_ids)}.json"
            drop(running.spool, name, case.body, direct=case.channel == "spool-cp")
            running.dropped.append(name)
            return
        if case.channel.startswith("cancel"):
            path = os.path.join(os.fsencode(running.spool / "cancel"), case.body)
            with contextlib.suppress(FileExistsError, IsADirectoryError):  # named again
                if case.channel == "cancel-directory":
                    os.mkdir(path)
                elif case.channel == "cancel-fifo":
                    os.mkfifo(path)
                else:
                    os.close(
                        os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                    )  # not a FIFO's
            return
        client = over_tcp if case.channel == "http" else over_socket
        try:
            answer = _post(client, case.body)
        except httpx.TransportError as exc:
            tail = "".join(running.agent.lines[-40:])
            raise AssertionError(f"{case.label}: {exc!r}\n{tail}") from exc
        assert answer.status_code < 500, (case.label, answer.text[:300])
        envelope = answer.json()
        if answer.status_code == 201:
            running.accepted.append(envelope["data"]["job_id"])
        else:
            assert envelope["error"], case.label
            assert envelope["message"], case.label

    try:
        t0 = time.monotonic()
        feed()
        print("feed", time.monotonic() - t0)
        _alive(running)
        # Every spool file ends quarantined or as a finished job; every accepted job ends.
        deadline = time.monotonic() + 180
        while not _settled(running.spool):
            assert time.monotonic() < deadline, os.listdir(running.spool / "incoming")
            _alive(running)
            time.sleep(0.1)
        print("settled", time.monotonic() - t0, flush=True)
        # Every cancel request is answered from its inotify event, not the 30 s rescan.
        cancel = os.fsencode(running.spool / "cancel")
        answered_by = time.monotonic() + 10
        while any(not os.path.isdir(os.path.join(cancel, name)) for name in os.listdir(cancel)):
            assert time.monotonic() < answered_by, os.listdir(cancel)
            time.sleep(0.1)
        print("cancel", time.monotonic() - t0, flush=True)
        failed = running.spool / "failed"
        for name in running.dropped:
            if (failed / name).exists():
                report = json.loads((failed / f"{name}.error.json").read_text())
                assert report["error"], report
                assert report["details"].get("reason"), report
        for job_id in running.accepted:
            while True:
                status = reader.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"]
                if status in ("Completed", "Failed", "Cancelled"):
                    break
                assert time.monotonic() < deadline, (job_id, status)
                time.sleep(0.05)
        # The next normal job, in the same directory and over both doors, runs.
        drop(running.spool, "normal.json", _document("after-the-fuzz"))
        result = running.spool / "done" / "after-the-fuzz.result.json"
        while not result.exists():
            assert time.monotonic() < deadline, "the next job did not run"
            time.sleep(0.05)
        assert json.loads(result.read_text())["status"] == "Completed"
        for client in (over_tcp, over_socket):
            answer = _post(client, json.dumps(_document(f"normal-{next(_ids)}")).encode())
            assert answer.status_code == 201, answer.text
        _alive(running)
        log = "".join(running.agent.lines)
        assert '"level": "critical"' not in log
        assert "agent.exit" not in log
    finally:
        for client in (over_tcp, over_socket, reader):
            client.close()


@pytest.mark.slow
def test_a_413_over_the_socket_leaves_its_connection_usable(running: Running) -> None:
    too_big = _with("payload.data.message", Huge("result-5m"))
    small = json.dumps(_document(f"small-{next(_ids)}")).encode()
    with httpx.Client(
        base_url="http://localhost",
        transport=httpx.HTTPTransport(uds=str(running.socket)),
        timeout=3,
    ) as over_socket:
        for _ in range(3):
            assert _post(over_socket, too_big).status_code == 413
            assert _post(over_socket, small).status_code in (201, 409)
    _alive(running)
