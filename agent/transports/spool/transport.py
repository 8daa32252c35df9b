"""The spool transport: watches incoming/ and cancel/, claims files as jobs,
and delivers its outbox as files (see layout.py for the directories).

Events from inotify only say where to look: the directory is also
rescanned at start, periodically and after very large bursts, and the job
store's job_id idempotency makes a second look at the same file harmless, so
every file is taken exactly once.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import Counter

from agent.core import metrics, submitter
from agent.core import periodic as background
from agent.core.health import Status
from agent.core.intake import JobReads, Submission, TransportIntake
from agent.core.outbox import OutboxDelivery, OutboxInterest
from agent.errors import (
    AgentError,
    ForbiddenError,
    NotFoundError,
    RefusedForNowError,
    StoreError,
    UnavailableError,
    ValidationError,
)
from agent.jobs import OutboxEntry, check_job_id
from agent.policy.allowlist import Caller
from agent.transports.spool import claim, inotify
from agent.transports.spool.delivery import deliver, forget, host_condition
from agent.transports.spool.layout import CLAIMED, DIR_MODES, spool_dirs
from agent.transports.spool.settings import SpoolConfig

log = structlog.get_logger("agent.spool")

# A file that met trouble of the host (a failed rename, a full disk) waits this long.
_TROUBLE_RETRY_SECONDS = 5.0
QUARANTINED = Counter(
    "hostagent_spool_quarantined",
    "Spool files refused and moved to failed/",
    registry=metrics.REGISTRY,
)


class SpoolTransport:
    name = "spool"
    outbox = OutboxInterest(running=False)  # a job's file moves when accepted and when done

    def __init__(self, root: Path, config: SpoolConfig) -> None:
        # Absolute: the watcher reports absolute paths, compared against these.
        self.root = root.absolute()
        self.config = config
        self.dirs = spool_dirs(self.root)
        self.quarantined = 0
        self._incoming: dict[str, None] = {}  # ordered set of names seen in incoming/
        self._claimed: dict[str, float] = {}  # name in .claimed/ -> trio time to look again
        self._later: dict[str, float] = {}  # name in incoming/, not complete -> time to look again
        self._renamed: set[str] = set()  # names in _incoming that arrived by rename
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery
        self.delivery: OutboxDelivery | None = None  # made when the transport runs

    def reload(self, config: SpoolConfig) -> None:
        """Apply a reloaded [spool] section's limits (size, owners, settle, rescan)."""
        self.config = config

    def features(self) -> list[str]:
        return ["spool"]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        status, reason, figures = await self._directory_health()
        if self.delivery is None:
            return status, reason, figures
        delivered, why, delivery = self.delivery.health()
        figures["delivery"] = delivery
        if status == "healthy" and delivered != "healthy":
            return delivered, why, figures
        return status, reason, figures

    async def _directory_health(self) -> tuple[Status, str, dict[str, Any]]:
        incoming = self.dirs["incoming"]
        if not os.access(incoming, os.W_OK | os.X_OK):
            return "unhealthy", f"{incoming} is missing or not writable", {}
        usage = await trio.to_thread.run_sync(shutil.disk_usage, self.root)
        figures: dict[str, Any] = {"free_bytes": usage.free, "total_bytes": usage.total}
        # Below 1% free a job file may not fit and results cannot be written.
        if usage.free < usage.total // 100:
            return "degraded", "spool filesystem almost full", figures
        return "healthy", "spool directory writable", figures

    # -- the task --

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.to_thread.run_sync(self._make_dirs)
        outbox = intake.outbox(self.name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Retried with backoff; an entry that cannot be delivered is parked, never fatal.
            self.delivery = OutboxDelivery(outbox, self._deliver, waits=host_condition)
            nursery.start_soon(self.delivery.run)
            # Files claimed before a restart are looked at again, once what the
            # outbox already says about them is delivered (accepted: moved on).
            await outbox.caught_up.wait()
            for name in await trio.to_thread.run_sync(os.listdir, self.dirs[CLAIMED]):
                self._claimed[name] = 0.0
            await nursery.start(self._watch, intake)
            # Ready means scanned: every file already there is a candidate, and
            # the claimer takes them (a cold start may find thousands) from here.
            await self._rescan(must=True)
            nursery.start_soon(self._claim_forever, intake)
            nursery.start_soon(self._rescan_periodically, intake)
            log.info("spool.ready", root=str(self.root))
            task_status.started()

    def _make_dirs(self) -> None:
        for name, path in self.dirs.items():
            if not path.exists():
                path.mkdir(parents=True, exist_ok=True)
                # The modes of systemd/hostagent.tmpfiles, whatever the umask.
                path.chmod(DIR_MODES.get(name, 0o750))
            if name == CLAIMED:
                path.chmod(0o700)
        # Temporaries of ours that a crash left half-written (see write_atomically).
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
                self._incoming[name] = None
        self._wake()

    async def _watch(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        failures = 0
        while True:
            # The watches exist before started(): the start-up scan then covers
            # exactly the files that arrived before them.
            try:
                with self._new_watcher() as watcher:
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    failures = 0
                    try:
                        while True:
                            self._note_changes(await watcher.read(), intake)
                    except inotify.Overflow:
                        log.warning("spool.watch_overflow", action="rescan")
                # Events were lost: whatever they held, a rescan of both directories finds.
                await self._rescan()
                await self._scan_cancel(intake)
            except OSError as exc:  # EMFILE, ENOMEM: a new watcher later, never the end
                if task_status is not trio.TASK_STATUS_IGNORED:
                    raise  # not started: the daemon says why it cannot start
                failures += 1
                background.note_failure("spool.watch", exc)
                await trio.sleep(background.backoff(failures))
                await self._rescan()

    def _new_watcher(self) -> inotify.Inotify:
        watcher = inotify.Inotify()
        try:
            # Renames are the Maildir drop; create and close-write catch `cp` in place.
            watcher.watch(
                self.dirs["incoming"],
                inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_CLOSE_WRITE,
            )
            watcher.watch(self.dirs["cancel"], inotify.IN_MOVED_TO | inotify.IN_CREATE)
        except BaseException:
            watcher.close()
            raise
        return watcher

    def _note_changes(self, changes: list[inotify.Change], intake: TransportIntake) -> None:
        incoming = self.dirs["incoming"]
        for change in changes:
            name = change.name
            if change.directory == incoming:
                if name.startswith("."):  # a writer's temporary: skipped
                    continue
                self._incoming[name] = None
                if change.renamed_in:
                    # Arrived whole by rename: no need to peek before claiming it.
                    self._renamed.add(name)
                elif change.mask & inotify.IN_CLOSE_WRITE:
                    # Its writer closed it: look now rather than after settle_seconds.
                    self._later.pop(name, None)
            else:  # cancel/: every entry is a request, answered (or ignored) at once
                self._nursery.start_soon(self._cancel_requested, intake, name)
        if changes:
            self._wake()

    async def _scan_cancel(self, intake: JobReads) -> None:
        for name in await trio.to_thread.run_sync(os.listdir, self.dirs["cancel"]):
            self._nursery.start_soon(self._cancel_requested, intake, name)

    async def _rescan_periodically(self, intake: TransportIntake) -> None:
        failures = 0
        while True:
            await trio.sleep(
                background.backoff(failures) if failures else self.config.rescan_seconds
            )
            try:
                await self._rescan()
                await self._scan_cancel(intake)
            except OSError as exc:  # EMFILE, ENOSPC, EIO: never the end of the daemon
                failures += 1
                background.note_failure("spool.rescan", exc)
            else:
                failures = 0

    # -- claiming --

    async def _claim_forever(self, intake: TransportIntake) -> None:
        while True:
            await self._claim_available(intake)
            self._wakeup = trio.Event()
            if self._incoming and intake.accepting:
                continue
            due = min((*self._claimed.values(), *self._later.values()), default=None)
            if due is None:
                await self._wakeup.wait()
            else:
                with trio.move_on_at(due):
                    await self._wakeup.wait()

    async def _claim_available(self, intake: TransportIntake) -> None:
        # While draining for shutdown, files stay where they are for the next start.
        while intake.accepting:
            now = trio.current_time()
            for name, due in list(self._later.items()):
                if due <= now:
                    del self._later[name]
                    self._incoming[name] = None
            again = [name for name, due in self._claimed.items() if due <= now]
            # islice: a burst of thousands is not walked whole for every batch.
            fresh = (name for name in self._incoming if name not in self._later)
            names = list(islice(fresh, self.config.claim_batch))
            if not names and not again:
                return
            renamed = {name for name in names if name in self._renamed}
            for name in names:
                del self._incoming[name]
                self._renamed.discard(name)
            for name in again:
                del self._claimed[name]
            arriving, looked = await trio.to_thread.run_sync(
                self._take_and_examine, intake, names, again, renamed
            )
            for item in arriving:
                self._later[item.name] = trio.current_time() + item.retry_in
            await self._record(intake, looked)

    def _take_and_examine(
        self, intake: TransportIntake, names: list[str], claimed: list[str], renamed: set[str]
    ) -> tuple[list[claim.Unsettled], list[claim.Examined]]:
        """Claim what is complete among `names`, then examine it and the `claimed`;
        answers the files left in incoming/ for now, and what was examined."""

        def prepare(raw: object, stable_id: str | None, origin: str, owner: int) -> Any:
            return intake.prepare(
                raw,
                caller=Caller(self.name, submitter=submitter.of_uid(owner)),
                job_id=stable_id,
                origin=origin,
            )

        looked: list[claim.Examined] = []
        arriving: list[claim.Unsettled] = []
        taken = []
        for name in names:
            try:
                unsettled = claim.still_arriving(
                    self.dirs["incoming"], name, self.config, renamed=name in renamed
                )
                if unsettled is not None:
                    arriving.append(unsettled)
                elif claim.take(self.dirs["incoming"], self.dirs[CLAIMED], name):
                    taken.append(name)
            except Exception as exc:  # noqa: BLE001 (one file's trouble: it waits, the rest go on)
                background.note_failure("spool.claim", exc)
                arriving.append(claim.Unsettled(name, _TROUBLE_RETRY_SECONDS))
        for name in (*claimed, *taken):
            examined = claim.examine(self.dirs[CLAIMED], name, self.config, prepare)
            if examined is not None:
                looked.append(examined)
        return arriving, looked

    async def _record(self, intake: TransportIntake, looked: list[claim.Examined]) -> None:
        """Submit the jobs; quarantine what is refused; look again at what is unsettled."""
        ready = [item for item in looked if isinstance(item, claim.Ready)]
        refused = [item for item in looked if isinstance(item, claim.Refused)]
        for item in looked:
            if isinstance(item, claim.Unsettled):
                self._claimed[item.name] = trio.current_time() + item.retry_in
        duplicates: list[str] = []
        if ready:
            await intake.wait_for_room(len(ready))
            answers = await self._submit(intake, ready)
            for item, answer in zip(ready, answers, strict=True):
                if answer is None:  # draining, a full queue or store trouble: next time
                    self._claimed[item.name] = trio.current_time() + 1.0
                elif isinstance(answer, AgentError):
                    refused.append(claim.Refused(item.name, answer, item.document))
                elif not answer.created:
                    duplicates.append(item.name)  # the same document is a job already
        # A new job's file moves on when its "accepted" entry is delivered.
        if refused or duplicates:
            later = await trio.to_thread.run_sync(self._settle_refused, refused, duplicates)
            for name in later:
                self._claimed[name] = trio.current_time() + _TROUBLE_RETRY_SECONDS

    async def _submit(
        self, intake: TransportIntake, ready: list[claim.Ready]
    ) -> list[Submission | AgentError | None]:
        """One answer per file (None: look again later). A batch the store fails is
        submitted again file by file, so one file's fault stays its own."""
        try:
            return list(await intake.submit_many([item.job for item in ready]))
        except RefusedForNowError:
            return [None] * len(ready)
        except Exception as exc:  # noqa: BLE001 (each file alone, below)
            if len(ready) == 1:
                return [_submit_failed(ready[0], exc)]
            background.note_failure("spool.submit", exc)
        answers: list[Submission | AgentError | None] = []
        for item in ready:
            try:
                answers += await intake.submit_many([item.job])
            except RefusedForNowError:
                answers.append(None)
            except Exception as exc:  # noqa: BLE001 (refused or looked at again, never fatal)
                answers.append(_submit_failed(item, exc))
        return answers

    def _settle_refused(self, refused: list[claim.Refused], duplicates: list[str]) -> list[str]:
        """Quarantine the refused, drop the duplicates; answers the files to look at
        again (a full disk kept a report from being written)."""
        later: list[str] = []
        for item in refused:
            try:
                if claim.quarantine(self.dirs[CLAIMED], self.dirs["failed"], item):
                    self.quarantined += 1
                    QUARANTINED.inc()
            except OSError as exc:
                background.note_failure("spool.quarantine", exc)
                later.append(item.name)
        for name in duplicates:
            try:
                (self.dirs[CLAIMED] / name).unlink(missing_ok=True)
            except OSError as exc:
                background.note_failure("spool.claim", exc)
                later.append(name)
        return later

    # -- delivering outcomes --

    async def _deliver(self, entries: list[OutboxEntry]) -> None:
        await trio.to_thread.run_sync(partial(deliver, self.dirs, entries))

    async def forget_jobs(self, job_ids: list[str]) -> None:
        """Pruned by retention: their done/ files go too."""
        await trio.to_thread.run_sync(forget, self.dirs, job_ids)

    async def _cancel_requested(self, intake: JobReads, name: str) -> None:
        path = self.dirs["cancel"] / name
        try:
            owner = await trio.to_thread.run_sync(_take_cancel_file, path)
        except FileNotFoundError:
            return  # taken already (a rescan and an event for the same file)
        except OSError as exc:  # a directory, say: not a request, and no reason to stop
            background.note_failure("spool.cancel", exc)
            return
        try:
            job_id = check_job_id(name, field="cancel file name")
        except ValidationError as exc:
            shown = name.encode(errors="backslashreplace").decode()
            log.warning("spool.cancel_ignored", file=shown, reason=exc.details["reason"])
            return
        try:
            if not await trio.to_thread.run_sync(self._may_cancel_any, owner):
                await _check_own_job(intake, job_id, owner)
            state = await intake.cancel(job_id)
        except AgentError as exc:
            log.info("spool.cancel_refused", job_id=job_id, reason=exc.message, uid=owner)
            return
        except Exception:  # one request's trouble is not the transport's end
            log.exception("spool.cancel_failed", job_id=job_id)
            return
        log.info("spool.cancelled", job_id=job_id, status=state.status.value, uid=owner)

    def _may_cancel_any(self, uid: int) -> bool:
        """Root, the agent's user and the admin group (blocking: the group database)."""
        return submitter.is_admin(uid, submitter.group_id(self.config.admin_group))


def _take_cancel_file(path: Path) -> int:
    """Remove a cancel request, answering its owner's uid (the link's, never a target's)."""
    owner = os.lstat(path).st_uid
    path.unlink()
    return owner


async def _check_own_job(intake: JobReads, job_id: str, uid: int) -> None:
    """ForbiddenError unless `uid` submitted the job (an unknown job is nobody's)."""
    try:
        recorded = await intake.submitter(job_id)
    except NotFoundError:
        recorded = None
    if recorded != submitter.of_uid(uid):
        raise ForbiddenError(
            f"uid {uid} may cancel only jobs it submitted; {job_id} is not its own",
            field="job_id",
            reason="Not the job's submitter",
        )


def _submit_failed(item: claim.Ready, exc: Exception) -> AgentError | None:
    """What a file's failed submit means: None (the store's or the host's trouble:
    look again later) or the refusal it is quarantined with."""
    if isinstance(exc, StoreError | UnavailableError):
        background.note_failure("spool.submit", exc)
        return None
    log.exception("spool.submit_failed", file=claim.shown_name(item.name))
    return exc if isinstance(exc, AgentError) else claim.internal_error("recording the job", exc)
