"""What a handler gets besides its payload: progress, logs, services, processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
import trio

from agent.core.withheld import redact
from agent.errors import HandlerError
from agent.jobs import JobState

if TYPE_CHECKING:
    from agent.core.services import Services

ServiceT = TypeVar("ServiceT")
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class ChildJobs(Protocol):
    """How a job runs others as its children (agent.core.children, a service): each is
    an ordinary job (intake checks, queue, locks, timeouts, events, outbox) that
    names its parent."""

    async def submit(
        self, parent: str, document: dict[str, Any], secrets: Sequence[Any] = ()
    ) -> JobState:
        """Submit a child of `parent` (its transport and submitter); the AgentError
        refusing it. The same document under the same job_id is the same job.
        `secrets`: values in its payload recorded redacted (agent.core.withheld)."""

    async def find(self, job_id: str) -> JobState | None:
        """A job's status, None when there is no such job."""

    async def wait(self, job_id: str) -> JobState:
        """Until the job has ended; its final status. Cancelling the wait cancels the
        job too (unless the agent is draining: then both resume after the restart)."""

    async def result(self, job_id: str) -> Any: ...


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class JobContext:
    """Handed to a handler for one run of one job. Cancelled on timeout or cancel."""

    def __init__(
        self,
        job_id: str,
        operation: str,
        *,
        attempt: int,
        emit: Emit,
        services: Services,
        secrets: Sequence[Any] = (),
    ) -> None:
        self.job_id = job_id
        self.operation = operation
        self.attempt = attempt
        self._emit = emit
        self._services = services
        # Values never to log (agent.core.withheld); events are redacted by `emit`.
        self.secrets = tuple(secrets)

    @cached_property
    def logger(self) -> Any:
        """The job's logger, made on first use (most jobs log nothing of their own)."""
        return structlog.get_logger("agent.job").bind(job_id=self.job_id, operation=self.operation)

    async def progress(
        self, percent: float | None, message: str | None = None, **fields: Any
    ) -> None:
        """Report progress (0-100); stored with the job and streamed to watchers."""
        data: dict[str, Any] = {"percent": None if percent is None else round(percent, 2)}
        if message is not None:
            data["message"] = message
        data.update(fields)
        await self._emit("progress", data)

    async def log(self, message: str, *, level: str = "info", **fields: Any) -> None:
        """A line in the job's own log (GET /jobs/{id}/logs), also sent to the agent log."""
        if self.secrets:
            message, fields = redact(message, self.secrets), redact(fields, self.secrets)
        self.logger.log(_LEVELS.get(level, 20), "job.log", line=message, **fields)
        await self._emit("log", {"level": level, "message": message, **fields})

    def get(self, kind: type[ServiceT]) -> ServiceT:
        """A shared service the daemon provides (e.g. the libvirt connection)."""
        return self._services.get(kind)

    async def submit_child(self, document: dict[str, Any], secrets: Sequence[Any] = ()) -> JobState:
        """Submit a job as this job's child (see ChildJobs)."""
        return await self.children.submit(self.job_id, document, secrets)

    @property
    def children(self) -> ChildJobs:
        """Find, await and read this job's children (see ChildJobs)."""
        return self._services.get(ChildJobs)  # type: ignore[type-abstract]

    async def run_process(
        self,
        argv: Sequence[str],
        *,
        on_stdout: Callable[[bytes], Awaitable[None]] | None = None,
        check: bool = True,
        pass_fds: Sequence[int] = (),
    ) -> ProcessResult:
        """Run a command in its own process group; the group is killed when the job
        ends, times out or is cancelled, so nothing it started outlives the job."""
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, process.stdout, out, on_stdout)
                nursery.start_soon(_drain, process.stderr, err, None)
                await process.wait()
                # Grandchildren may still hold the pipes open; they go with the group.
                if _kill_group(process.pid):
                    await _group_gone(process.pid)
        finally:
            if process.returncode is None:
                _kill_group(process.pid)
                with trio.CancelScope(shield=True):
                    await process.wait()
                    await _group_gone(process.pid)
        returncode = process.returncode
        assert returncode is not None  # waited for above
        result = ProcessResult(returncode, b"".join(out), b"".join(err))
        if check and result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip()[-500:]
            raise HandlerError(f"{argv[0]} exited with status {result.returncode}: {tail}")
        return result


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _kill_group(pgid: int) -> bool:
    """SIGKILL the group; whether anyone was left in it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # already gone: the outcome we want
        return False
    return True


async def _group_gone(pgid: int, within: float = 10.0) -> None:
    """Wait until the killed group has no live process left: a big one (qemu)
    takes a while to give back its memory after SIGKILL, and the job must not be
    reported ended while it still runs. Bounded, in case one hangs in the kernel."""
    with trio.move_on_after(within):
        while await trio.to_thread.run_sync(_group_alive, pgid):  # noqa: ASYNC110 (no event tells when a non-child exits)
            await trio.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Members remain: alive, or zombies their new parent has not reaped yet.
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    line = stat.read()
            except OSError:
                continue  # gone meanwhile
            # After the command name's closing parenthesis: state, ppid, pgrp.
            state, _, group = line[line.rindex(b")") + 2 :].split(maxsplit=3)[:3]
            if int(group) == pgid and state != b"Z":
                return True
    return False


async def _drain(
    stream: trio.abc.ReceiveStream | None,
    sink: list[bytes],
    on_chunk: Callable[[bytes], Awaitable[None]] | None,
) -> None:
    if stream is None:
        return
    async with stream:
        while chunk := bytes(await stream.receive_some()):
            sink.append(chunk)
            if on_chunk is not None:
                await on_chunk(chunk)
