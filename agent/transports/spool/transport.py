"""The spool transport: watches incoming/ and cancel/, claims files as jobs,
and delivers its outbox as files (see layout.py for the directories).

Events from inotify only say where to look: the directory is also
rescanned at start, periodically and after very large bursts, and the job
store's job_id idempotency makes a second look at the same file harmless, so
every file is taken exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import Counter

from agent.core import metrics
from agent.core import periodic as background
from agent.core.health import Status
from agent.core.intake import TransportIntake
from agent.core.outbox import Outbox, OutboxInterest
from agent.errors import AgentError, QueueFullError
from agent.jobs import JOB_ID_PATTERN
from agent.transports.spool import claim, inotify
from agent.transports.spool.delivery import deliver, forget
from agent.transports.spool.layout import CLAIMED, DIR_MODES, spool_dirs
from agent.transports.spool.settings import SpoolConfig

log = structlog.get_logger("agent.spool")

QUARANTINED = Counter(
    "hostagent_spool_quarantined",
    "Spool files refused and moved to failed/",
    registry=metrics.REGISTRY,
)
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
# Delivery retries after a failed write (a full disk) back off up to this.
_RETRY_MAX_SECONDS = 30.0


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

    def reload(self, config: SpoolConfig) -> None:
        """Apply a reloaded [spool] section's limits (size, owners, settle, rescan)."""
        self.config = config

    def features(self) -> list[str]:
        return ["spool"]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        incoming = self.dirs["incoming"]
        if not os.access(incoming, os.W_OK | os.X_OK):
            return "unhealthy", f"{incoming} is missing or not writable", {}
        usage = await trio.to_thread.run_sync(shutil.disk_usage, self.root)
        figures = {"free_bytes": usage.free, "total_bytes": usage.total}
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
            nursery.start_soon(self._deliver_forever, outbox)
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
        while True:
            # The watches exist before started(): the start-up scan then covers
            # exactly the files that arrived before them.
            with self._new_watcher() as watcher:
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                try:
                    while True:
                        self._note_changes(await watcher.read(), intake)
                except inotify.Overflow:
                    log.warning("spool.watch_overflow", action="rescan")
            # Events were lost: whatever they held, a rescan of both directories finds.
            await self._rescan()
            await self._scan_cancel(intake)

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
            if name.startswith("."):
                continue
            if change.directory == incoming:
                self._incoming[name] = None
                if change.renamed_in:
                    # Arrived whole by rename: no need to peek before claiming it.
                    self._renamed.add(name)
                elif change.mask & inotify.IN_CLOSE_WRITE:
                    # Its writer closed it: look now rather than after settle_seconds.
                    self._later.pop(name, None)
            else:
                self._nursery.start_soon(self._cancel_requested, intake, name)
        if changes:
            self._wake()

    async def _scan_cancel(self, intake: TransportIntake) -> None:
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

        def prepare(raw: object, stable_id: str | None, origin: str) -> Any:
            return intake.prepare(raw, transport=self.name, job_id=stable_id, origin=origin)

        looked: list[claim.Examined] = []
        arriving: list[claim.Unsettled] = []
        taken = []
        for name in names:
            unsettled = claim.still_arriving(
                self.dirs["incoming"], name, self.config, renamed=name in renamed
            )
            if unsettled is not None:
                arriving.append(unsettled)
            elif claim.take(self.dirs["incoming"], self.dirs[CLAIMED], name):
                taken.append(name)
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
            try:
                answers = await intake.submit_many([item.job for item in ready])
            except QueueFullError:  # draining (or the queue filled meanwhile): next time
                for item in ready:
                    self._claimed[item.name] = trio.current_time() + 1.0
                answers = []
            for item, answer in zip(ready, answers, strict=False):
                if isinstance(answer, AgentError):
                    refused.append(claim.Refused(item.name, answer))
                elif not answer.created:
                    duplicates.append(item.name)  # the same document is a job already
        # A new job's file moves on when its "accepted" entry is delivered.
        if refused or duplicates:
            await trio.to_thread.run_sync(self._settle_refused, refused, duplicates)

    def _settle_refused(self, refused: list[claim.Refused], duplicates: list[str]) -> None:
        for item in refused:
            if claim.quarantine(self.dirs[CLAIMED], self.dirs["failed"], item):
                self.quarantined += 1
                QUARANTINED.inc()
        for name in duplicates:
            (self.dirs[CLAIMED] / name).unlink(missing_ok=True)

    # -- delivering outcomes --

    async def _deliver_forever(self, outbox: Outbox) -> None:
        async for batch in outbox:
            retry_in = 0.5
            while True:
                try:
                    await trio.to_thread.run_sync(partial(deliver, self.dirs, batch))
                    break
                except OSError as exc:
                    # e.g. a full disk: the entries stay in the outbox; try again.
                    log.warning("spool.delivery_failed", error=str(exc), retry_in=retry_in)
                    await trio.sleep(retry_in)
                    retry_in = min(retry_in * 2, _RETRY_MAX_SECONDS)
            await outbox.ack(batch[-1].id)

    async def forget_jobs(self, job_ids: list[str]) -> None:
        """Pruned by retention: their done/ files go too."""
        await trio.to_thread.run_sync(forget, self.dirs, job_ids)

    async def _cancel_requested(self, intake: TransportIntake, name: str) -> None:
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
