"""Spool directory transport (Maildir discipline, see shared/spec/protocol.md).

    tmp/       writers create and fsync files here, then rename into incoming/
    incoming/  the agent reads only this; dot-files are skipped
    active/    claimed jobs, as <job_id>.job.json (moved here only after the
               job is durably recorded)
    done/      <job_id>.job.json and <job_id>.result.json of finished jobs
    failed/    files that are not valid jobs, each with <name>.error.json
    cancel/    an empty file named <job_id> asks the agent to cancel that job

A file is opened without following links and only read if it is a regular
file with one link, an allowed owner and a size under the limit; anything
else is moved to failed/ unread. Events from watchfiles only say where to
look: the directory is also rescanned at start, periodically and after very
large bursts, and the job store's job_id idempotency makes a second look at
the same file harmless, so every file is taken exactly once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio
from watchfiles import Change
from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

from agent import background
from agent.config import Config, SpoolConfig
from agent.errors import AgentError, QueueFullError, ValidationError
from agent.intake import Intake, Submission
from agent.jobs import JOB_ID_PATTERN, JobState, parse_json
from agent.store import NewJob

log = structlog.get_logger("agent.spool")

SUBDIRS = ("tmp", "incoming", "active", "done", "failed", "cancel")
# Namespace for job ids derived from a spool file that names none: the same
# file seen again after a crash gets the same id, so it is one job.
_SPOOL_ID_NAMESPACE = uuid.UUID("6f1c4a52-8e0b-4c44-9a53-3d2f7c1e9b10")
# A change set this large may mean the kernel queue overflowed: rescan.
_BURST_RESCAN = 4096
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
_FINALIZE_THREADS = 4
_FINALIZE_CHUNK = 64
# Errors of the host, not of the file: the file is looked at again later.
_NOT_THE_FILES_FAULT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True)
class _Ready:
    name: str
    job: NewJob


@dataclass(frozen=True)
class _Refused:
    name: str
    error: dict[str, Any]


@dataclass(frozen=True)
class _Unsettled:
    name: str
    retry_in: float


def document_name(job_id: str) -> str:
    return f"{job_id}.job.json"


def result_name(job_id: str) -> str:
    return f"{job_id}.result.json"


def write_durably(path: Path, data: bytes) -> None:
    """Write a file so that a reader (or a crash) never sees it half-written."""
    # Unique per writer: two writers of the same file must not share a temporary.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)


def _error_of(exc: AgentError) -> dict[str, Any]:
    return {**exc.details, "error": exc.code, "message": exc.message}


class _RefusedError(Exception):
    """A spool entry that is not a job, with the report for failed/."""

    def __init__(self, code: str, reason: str, field: str) -> None:
        super().__init__(reason)
        self.error: dict[str, Any] = {"error": code, "field": field, "reason": reason}

    @classmethod
    def of(cls, exc: AgentError) -> _RefusedError:
        refusal = cls(
            exc.code, exc.details.get("reason", exc.message), exc.details.get("field", "")
        )
        refusal.error = _error_of(exc)
        return refusal


async def _set_when_cancelled(event: trio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        event.set()


class SpoolTransport:
    name = "spool"

    def __init__(self, root: Path, config: SpoolConfig) -> None:
        # Absolute: the watcher reports absolute paths, compared against these.
        self.root = root.absolute()
        self.config = config
        self.dirs = {name: self.root / name for name in SUBDIRS}
        self.quarantined = 0
        self._candidates: dict[str, None] = {}  # ordered set of names in incoming/
        self._unsettled: dict[str, float] = {}  # name -> trio time to look again
        self._wakeup = trio.Event()
        self._claiming: set[str] = set()
        self._finished_while_claiming: set[str] = set()
        self._to_finalize: dict[str, None] = {}
        self._finalize_wakeup = trio.Event()
        self._nursery: trio.Nursery

    def reload(self, config: Config) -> None:
        """Apply a reloaded config's spool limits (size, owners, settle, rescan)."""
        self.config = config.spool

    # -- the task --

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await trio.to_thread.run_sync(self._make_dirs)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._follow_completions, intake)
            await nursery.start(self._watch, intake)
            await self._reconcile_active(intake)
            # Ready means scanned: every file already there is a candidate, and
            # the claimer takes them (a cold start may find thousands) from here.
            await self._rescan(must=True)
            nursery.start_soon(self._claim_forever, intake)
            nursery.start_soon(self._finalize_forever, intake)
            nursery.start_soon(self._rescan_periodically, intake)
            log.info("spool.ready", root=str(self.root))
            task_status.started()

    def _make_dirs(self) -> None:
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # Temporaries of ours that a crash left half-written (see write_durably).
        for owned in ("done", "failed"):
            for leftover in self.dirs[owned].glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    def _wake(self) -> None:
        self._wakeup.set()

    async def _rescan(self, *, must: bool = False) -> None:
        """Make every file in incoming/ a candidate (start, periodically, after trouble)."""
        try:
            names = await trio.to_thread.run_sync(os.listdir, self.dirs["incoming"])
        except OSError as exc:
            if must:
                raise
            background.note_failure("spool.rescan", exc)  # the periodic rescan tries again
            return
        for name in names:
            if not name.startswith("."):
                self._candidates[name] = None
        self._wake()

    async def _watch(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # The wait runs in a thread cancellation cannot interrupt; the stop
        # event, set as soon as this task is cancelled, ends it within a step.
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when_cancelled, stop)
            while True:
                # watchfiles' own backend, used directly (awatch wraps the same
                # loop) so that the watches exist before started(): the start-up
                # scan then covers exactly the files that arrived before them.
                with self._new_watcher() as watcher:
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    if await self._follow_watcher(watcher, stop, intake):
                        return
                # The watcher gave up on a change set: whatever it held, a rescan finds.
                await self._rescan()

    def _new_watcher(self) -> RustNotify:
        return RustNotify(
            [str(self.dirs["incoming"]), str(self.dirs["cancel"])], False, False, 0, False, False
        )

    async def _follow_watcher(self, watcher: RustNotify, stop: trio.Event, intake: Intake) -> bool:
        """Feed changes to the claimer; True when stopped, False when the watcher broke."""
        while True:
            try:
                raw = await trio.to_thread.run_sync(
                    watcher.watch, 50, self.config.watch_step_ms, 5000, stop
                )
            except WatchfilesRustInternalError as exc:
                # e.g. a file name that is not UTF-8: the claimer quarantines it.
                log.warning("spool.watcher_error", error=str(exc))
                return False
            if raw == "stop":
                return True
            if isinstance(raw, set):
                self._note_changes(raw, intake)

    def _note_changes(self, changes: set[tuple[int, str]], intake: Intake) -> None:
        incoming, cancel = str(self.dirs["incoming"]), str(self.dirs["cancel"])
        for change, path in changes:
            if change == Change.deleted:
                continue
            directory, _, name = path.rpartition("/")
            if name.startswith("."):
                continue
            if directory == incoming:
                self._candidates[name] = None
            elif directory == cancel:
                self._nursery.start_soon(self._cancel_requested, intake, name)
        if len(changes) >= _BURST_RESCAN:
            self._nursery.start_soon(self._rescan)
        self._wake()

    async def _rescan_periodically(self, intake: Intake) -> None:
        failures = 0
        while True:
            await trio.sleep(
                background.backoff(failures) if failures else self.config.rescan_seconds
            )
            try:
                await self._rescan()
                for name in await trio.to_thread.run_sync(os.listdir, self.dirs["cancel"]):
                    self._nursery.start_soon(self._cancel_requested, intake, name)
                await self._reconcile_active(intake)
            except OSError as exc:  # EMFILE, ENOSPC, EIO: never the end of the daemon
                failures += 1
                background.note_failure("spool.rescan", exc)
            else:
                failures = 0

    # -- claiming --

    async def _claim_forever(self, intake: Intake) -> None:
        while True:
            await self._claim_available(intake)
            self._wakeup = trio.Event()
            if self._candidates and intake.accepting:
                continue
            due = min(self._unsettled.values(), default=None)
            if due is None:
                await self._wakeup.wait()
            else:
                with trio.move_on_at(due):
                    await self._wakeup.wait()

    async def _claim_available(self, intake: Intake) -> None:
        now = trio.current_time()
        for name, due in list(self._unsettled.items()):
            if due <= now:
                del self._unsettled[name]
                self._candidates[name] = None
        # While draining for shutdown, files stay in incoming/ for the next start.
        while self._candidates and intake.accepting:
            names = list(self._candidates)[: self.config.claim_batch]
            for name in names:
                del self._candidates[name]
            looked = await trio.to_thread.run_sync(self._examine_all, intake, names)
            ready = [item for item in looked if isinstance(item, _Ready)]
            refused = [item for item in looked if isinstance(item, _Refused)]
            for item in looked:
                if isinstance(item, _Unsettled):
                    self._unsettled[item.name] = trio.current_time() + item.retry_in
            if ready:
                refused += await self._claim(intake, ready)
            if refused:
                await trio.to_thread.run_sync(self._quarantine_all, refused)

    async def _claim(self, intake: Intake, ready: list[_Ready]) -> list[_Refused]:
        """Record the jobs, then move their files to active/; answers what was refused."""
        try:
            answers = await intake.submit_prepared([item.job for item in ready])
        except QueueFullError:
            # Leave the files where they are; look again when the queue drains.
            for item in ready:
                self._unsettled[item.name] = trio.current_time() + 1.0
            log.warning("spool.queue_full", waiting=len(ready))
            return []
        claimed: list[tuple[str, Submission]] = []
        refused: list[_Refused] = []
        for item, answer in zip(ready, answers, strict=True):
            if isinstance(answer, AgentError):
                refused.append(_Refused(item.name, _error_of(answer)))
            else:
                claimed.append((item.name, answer))
                self._claiming.add(answer.state.job_id)
        await trio.to_thread.run_sync(self._move_to_active, claimed)
        for _, answer in claimed:
            job_id = answer.state.job_id
            self._claiming.discard(job_id)
            if answer.state.status.terminal or job_id in self._finished_while_claiming:
                self._finished_while_claiming.discard(job_id)
                self._queue_finalize(job_id)
        return refused

    def _examine_all(
        self, intake: Intake, names: list[str]
    ) -> list[_Ready | _Refused | _Unsettled]:
        looked: list[_Ready | _Refused | _Unsettled] = []
        for name in names:
            item: _Ready | _Refused | _Unsettled | None
            try:
                item = self._examine(intake, name)
            except _RefusedError as refusal:
                item = _Refused(name, refusal.error)
            if item is not None:
                looked.append(item)
        return looked

    def _examine(self, intake: Intake, name: str) -> _Ready | _Unsettled | None:
        """Decide about one file in incoming/: None when it is gone, _RefusedError
        when it is not a job."""
        try:
            name.encode()
        except UnicodeEncodeError:
            raise _RefusedError("BAD_REQUEST", "file name is not valid UTF-8", "name") from None
        try:
            read = self._read_safely(self.dirs["incoming"] / name)
        except OSError as exc:  # out of descriptors or memory: a good file waits, unjudged
            background.note_failure("spool.claim", exc)
            return _Unsettled(name, 1.0)
        if read is None:
            return None
        data, info = read
        try:
            raw = parse_json(data)  # the very parse HTTP uses: depth, duplicates, NaN
        except ValidationError as exc:
            raise _RefusedError.of(exc) from exc
        except ValueError as exc:
            unchanged_for = time.time() - info.st_mtime
            if unchanged_for < self.config.settle_seconds:
                # Possibly still being copied in: look again once it has settled.
                return _Unsettled(name, self.config.settle_seconds - unchanged_for + 0.05)
            raise _RefusedError("VALIDATION_ERROR", f"not valid JSON: {exc}", "document") from exc
        stable_id = None
        if isinstance(raw, dict) and not raw.get("job_id"):
            identity = (
                name,
                str(info.st_ino),
                str(info.st_ctime_ns),
                hashlib.sha256(data).hexdigest(),
            )
            stable_id = str(uuid.uuid5(_SPOOL_ID_NAMESPACE, "\0".join(identity)))
        try:
            return _Ready(name, intake.prepare(raw, transport=self.name, job_id=stable_id))
        except AgentError as exc:  # ValidationError, or the host policy's ForbiddenError
            raise _RefusedError.of(exc) from exc

    def _read_safely(self, path: Path) -> tuple[bytes, os.stat_result] | None:
        """The file's bytes, never through a link nor from anything but a plain file."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _NOT_THE_FILES_FAULT:
                raise
            if exc.errno == errno.ELOOP:
                raise _RefusedError("FORBIDDEN", "symbolic links are refused", "file") from exc
            raise _RefusedError("FORBIDDEN", f"cannot open: {exc.strerror}", "file") from exc
        try:
            info = os.fstat(fd)
            refusal = self._refusal(info)
            if refusal is not None:
                raise _RefusedError("FORBIDDEN", refusal, "file")
            data = os.read(fd, self.config.max_file_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.config.max_file_bytes:
            raise _RefusedError("PAYLOAD_TOO_LARGE", "file grew over the size limit", "file")
        return data, info

    def _refusal(self, info: os.stat_result) -> str | None:
        if stat.S_ISDIR(info.st_mode):
            return "not a regular file (a directory)"
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file (a FIFO, socket or device)"
        if info.st_nlink != 1:
            return f"hard-linked files are refused ({info.st_nlink} links)"
        if self.config.allowed_uids and info.st_uid not in self.config.allowed_uids:
            return f"owner uid {info.st_uid} is not allowed"
        if info.st_size > self.config.max_file_bytes:
            return f"file is {info.st_size} bytes, over the limit of {self.config.max_file_bytes}"
        return None

    def _move_to_active(self, claimed: list[tuple[str, Submission]]) -> None:
        for name, answer in claimed:
            with contextlib.suppress(FileNotFoundError):  # a twin file already moved it
                os.rename(
                    self.dirs["incoming"] / name,
                    self.dirs["active"] / document_name(answer.state.job_id),
                )

    def _quarantine_all(self, refused: list[_Refused]) -> None:
        for item in refused:
            safe = item.name.encode(errors="surrogateescape").decode(errors="replace")
            safe = safe.replace("/", "_") or "unnamed"
            target = self.dirs["failed"] / safe
            if target.exists() or target.is_symlink():
                target = target.with_name(f"{safe}.{time.time_ns()}")
            try:
                os.rename(self.dirs["incoming"] / item.name, target)
            except FileNotFoundError:
                continue
            report = {
                "file": item.name.encode(errors="surrogateescape").decode(errors="replace"),
                "quarantined_as": target.name,
                "at": time.time(),
                **item.error,
            }
            write_durably(
                target.with_name(f"{target.name}.error.json"), json.dumps(report, indent=2).encode()
            )
            self.quarantined += 1
            log.warning(
                "spool.quarantined",
                file=report["file"],
                reason=item.error.get("reason"),
                field=item.error.get("field"),
            )

    # -- finishing --

    async def _follow_completions(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        first = True
        while True:
            with intake.events(buffer=65536) as subscription:
                if first:
                    task_status.started()
                    first = False
                else:
                    await self._reconcile_active(intake)  # we lagged: catch up from the store
                async for event in subscription.receive:
                    data = event["data"]
                    if (
                        event["type"] == "status"
                        and data.get("transport") == self.name
                        and data["status"] in ("Completed", "Failed", "Cancelled")
                    ):
                        job_id = event["job_id"]
                        if job_id in self._claiming:
                            self._finished_while_claiming.add(job_id)
                        else:
                            self._queue_finalize(job_id)

    def _queue_finalize(self, job_id: str) -> None:
        self._to_finalize[job_id] = None
        self._finalize_wakeup.set()

    async def _finalize_forever(self, intake: Intake) -> None:
        # Result files are fsynced one by one; several threads at once let the
        # filesystem journal commit their fsyncs together.
        slots = trio.Semaphore(_FINALIZE_THREADS)
        async with trio.open_nursery() as nursery:
            while True:
                await self._finalize_wakeup.wait()
                self._finalize_wakeup = trio.Event()
                while self._to_finalize:
                    job_ids = list(self._to_finalize)[:_FINALIZE_CHUNK]
                    for job_id in job_ids:
                        del self._to_finalize[job_id]
                    await slots.acquire()
                    nursery.start_soon(self._finalize, intake, job_ids, slots)

    async def _finalize(self, intake: Intake, job_ids: list[str], slot: trio.Semaphore) -> None:
        try:
            outcomes = await intake.outcomes(job_ids)
            await trio.to_thread.run_sync(self._write_results, outcomes)
        finally:
            slot.release()

    def _write_results(self, outcomes: list[tuple[JobState, Any]]) -> None:
        for state, result in outcomes:
            job_id = state.job_id
            record = {**state.model_dump(mode="json"), "result": result}
            try:
                write_durably(
                    self.dirs["done"] / result_name(job_id), json.dumps(record, indent=2).encode()
                )
                with contextlib.suppress(FileNotFoundError):  # moved on an earlier pass
                    os.rename(
                        self.dirs["active"] / document_name(job_id),
                        self.dirs["done"] / document_name(job_id),
                    )
            except OSError as exc:
                # The job stays in active/; the periodic reconcile tries again.
                log.warning("spool.result_write_failed", job_id=job_id, error=str(exc))

    async def _reconcile_active(self, intake: Intake) -> None:
        """Finish moving jobs that ended while their files were not followed."""
        names = await trio.to_thread.run_sync(os.listdir, self.dirs["active"])
        job_ids = [
            name.removesuffix(".job.json")
            for name in names
            if name.endswith(".job.json") and not name.startswith(".")
        ]
        for start in range(0, len(job_ids), 512):
            outcomes = await intake.outcomes(job_ids[start : start + 512])
            finished = [item for item in outcomes if item[0].status.terminal]
            if finished:
                await trio.to_thread.run_sync(self._write_results, finished)

    async def _cancel_requested(self, intake: Intake, name: str) -> None:
        path = self.dirs["cancel"] / name
        with contextlib.suppress(FileNotFoundError):
            await trio.to_thread.run_sync(path.unlink)
        if not _JOB_ID_RE.fullmatch(name):
            log.warning("spool.cancel_ignored", file=name, reason="not a job id")
            return
        try:
            state = await intake.cancel(name)
        except AgentError as exc:
            log.info("spool.cancel_refused", job_id=name, reason=exc.message)
        else:
            log.info("spool.cancelled", job_id=name, status=state.status.value)
