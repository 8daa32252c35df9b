"""The single door transports use: validate -> durable insert -> queue.

It is also the transports' view of jobs (status, result, logs, cancel, live
events, the durable outbox), so a transport never touches the store or the
dispatcher itself. Transports are written against `TransportIntake`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from agent.core import metrics
from agent.core.capabilities import Capabilities
from agent.core.diskspace import SpaceFloor
from agent.core.dispatcher import Dispatcher
from agent.core.events import EventBus, Subscription
from agent.core.health import Health
from agent.core.jobstore import JobStore
from agent.core.outbox import Outbox
from agent.core.registry import Registry
from agent.core.withheld import WITHHELD_LABEL, Held, withhold
from agent.errors import AgentError, DrainingError, ExpiredError, QueueFullError
from agent.jobs import (
    JobState,
    NewJob,
    check_job_id,
    fingerprint,
    format_timestamp,
    new_job_id,
    parse_document,
    utc_now,
)
from agent.policy.allowlist import Caller

if TYPE_CHECKING:
    from agent.config import Config


@dataclass(frozen=True)
class Submission:
    state: JobState
    created: bool  # False: the same document was already accepted under this job_id


class IntakeDoor(Protocol):
    """The one door a job comes in by: prepare, submit, wait for room, and the outbox
    of what became of the jobs a transport brought."""

    @property
    def accepting(self) -> bool:
        """False while the agent drains for shutdown: take no new jobs."""

    def prepare(
        self,
        raw: object,
        *,
        caller: Caller | None = None,
        transport: str | None = None,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
        submitter: str | None = None,
    ) -> NewJob:
        """Validate a document completely; raises the ValidationError naming the field.

        `caller`: who hands it in (the door, its token or groups, whether it holds
        admin, the submitter recorded with the job, see agent.core.submitter); without
        one, `transport`, `privileged` and `submitter` say it (a caller with no token
        or groups). The operation allowlist is checked here (ForbiddenError). The host
        policy's check opens files, so it runs in a worker thread at submit: its
        ForbiddenError is that job's answer."""

    async def submit(
        self,
        raw: object,
        *,
        caller: Caller | None = None,
        transport: str | None = None,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
        submitter: str | None = None,
    ) -> Submission:
        """Accept one job; returns once it is durable. Raises the AgentError for it."""

    async def submit_many(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        """Check prepared jobs against the host policy, then record those it admits in
        one transaction; one answer per job."""

    async def wait_for_room(self, count: int = 1) -> None:
        """Return once `count` more jobs fit in the pending queue (back-pressure)."""

    def outbox(self, consumer: str) -> Outbox:
        """The durable feed of changes to the consumer's jobs (see agent.core.outbox)."""


class JobReads(Protocol):
    """What a transport may ask about jobs already in: state, result, logs, events,
    cancel, and the host's capabilities and health."""

    async def status(self, job_id: str) -> JobState: ...
    async def result(self, job_id: str) -> Any: ...

    async def submitter(self, job_id: str) -> str | None:
        """Who submitted the job (None: not recorded); NotFoundError when there is none."""

    async def logs(self, job_id: str) -> list[dict[str, Any]]: ...
    async def cancel(self, job_id: str) -> JobState: ...
    async def capabilities(self) -> dict[str, Any]: ...

    async def capabilities_changed(self, since: str | None) -> str:
        """Waits until the capabilities' fingerprint is known and differs from `since`."""

    async def health(self) -> dict[str, Any]: ...

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        newest_first: bool = False,
    ) -> tuple[list[JobState], int, int | None]: ...

    async def events_after(
        self, after_id: int, job_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Progress and log events from the durable log after `after_id` (resumable streams)."""

    def events(self, *, buffer: int = 1024) -> AbstractContextManager[Subscription]:
        """Live job events from now on: best effort, for watchers (not durable)."""


class TransportIntake(IntakeDoor, JobReads, Protocol):
    """Everything a transport may ask of the core: the door and the reads."""


@dataclass(frozen=True)
class PreparedJob(NewJob):
    """A validated job. `admission` is its host-policy check, still to run: the check
    opens and stats files, so the intake runs it off the trio thread, at submit, for
    every transport alike (`admit_now` runs it in the caller's thread)."""

    admission: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    # The payload as submitted when the recorded one is redacted (agent.core.withheld).
    withheld: Held | None = field(default=None, compare=False, repr=False)


def admit_now(job: NewJob) -> None:
    """Run a prepared job's host-policy check here (blocking: offline or in a worker thread)."""
    if isinstance(job, PreparedJob) and job.admission is not None:
        job.admission()


def _admit_all(checks: list[tuple[int, Callable[[], None]]]) -> dict[int, AgentError]:
    """Run the policy checks (in a worker thread); the refusal of each refused index."""
    refused: dict[int, AgentError] = {}
    for index, check in checks:
        try:
            check()
        except AgentError as exc:
            refused[index] = exc
    return refused


def prepare_job(
    registry: Registry,
    raw: object,
    *,
    caller: Caller | None = None,
    transport: str | None = None,
    job_id: str | None = None,
    origin: str | None = None,
    max_timeout: float,
    privileged: bool = False,
    submitter: str | None = None,
) -> PreparedJob:
    """Validate a document completely (envelope and handler payload) and check it
    against the operation allowlist for `caller` (see IntakeDoor.prepare); its
    host-policy check is left in `admission` (see PreparedJob).

    `job_id` is the id to use when the document has none (a transport that
    can derive a stable one passes it, so a retry is not a new job).
    """
    caller = caller_of(caller, transport, privileged=privileged, submitter=submitter)
    # First: text UTF-8 cannot encode (a lone surrogate) would raise out of every
    # later step that writes or opens it (the policy's paths, the store), and the
    # error reports below must not echo it. The document's own job_id is checked
    # by parse_document; an id the transport derived (a key, a header) here.
    identity = fingerprint(raw) if isinstance(raw, dict) else ""
    if job_id is not None:
        check_job_id(job_id, field="job_id")
    document = parse_document(raw)
    payload = registry.validate_payload(document)
    # The host policy (what this caller may run; paths, domain definitions) refuses
    # before anything is recorded.
    registry.check_allowed(caller, document.operation, payload)
    admission = registry.admission(document, payload, caller=caller)
    assert isinstance(raw, dict)
    if document.not_after is not None and document.not_after <= datetime.now(UTC):
        raise ExpiredError(
            f"The job arrived after its not_after ({format_timestamp(document.not_after)})",
            field="not_after",
            reason="The job arrived too late to be run",
        )
    normalized = document.model_dump(mode="json")
    normalized["job_id"] = document.job_id or job_id or new_job_id()
    normalized["created_at"] = (
        format_timestamp(document.created_at) if document.created_at else utc_now()
    )
    held: Held | None = None
    if WITHHELD_LABEL in document.labels:  # the agent's own mark, never the submitter's
        del normalized["labels"][WITHHELD_LABEL]
    secrets = registry.secrets(document.operation, payload)
    if secrets:
        normalized, held = withhold(normalized, secrets)
    timeout = document.timeout_seconds
    return PreparedJob(
        job_id=normalized["job_id"],
        operation=document.operation,
        priority=document.priority,
        transport=caller.transport,
        document=normalized,
        fingerprint=identity,
        timeout_seconds=None if timeout is None else min(timeout, max_timeout),
        origin=origin,
        submitter=caller.submitter,
        admission=admission,
        withheld=held,
    )


def caller_of(
    caller: Caller | None,
    transport: str | None,
    *,
    privileged: bool = False,
    submitter: str | None = None,
) -> Caller:
    """The caller a job is prepared for: `caller`, or one made of the short form."""
    if caller is not None:
        return caller
    if transport is None:
        raise TypeError("prepare needs a caller (or at least its transport)")
    return Caller(transport, privileged=privileged, submitter=submitter)


class Intake:
    """The daemon's TransportIntake."""

    def __init__(
        self,
        registry: Registry,
        store: JobStore,
        dispatcher: Dispatcher,
        bus: EventBus,
        *,
        max_pending: int,
        max_timeout: float,
        capabilities: Capabilities,
        health: Health,
        space: SpaceFloor | None = None,
    ) -> None:
        self.registry = registry
        self._store = store
        self._dispatcher = dispatcher
        self._bus = bus
        self._max_pending = max_pending
        self._max_timeout = max_timeout
        self._capabilities = capabilities
        self._health = health
        self._accepting = True
        # Refuses new jobs (503) while the state disk is below its free-space floor.
        self._space = space

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """Drain for shutdown: every transport's intake answers DrainingError from now on."""
        self._accepting = False

    def reload(self, config: Config) -> None:
        """Apply the queue bound and timeout cap of a reloaded config."""
        self._max_pending = config.max_pending_jobs
        self._max_timeout = config.max_timeout_seconds

    def prepare(
        self,
        raw: object,
        *,
        caller: Caller | None = None,
        transport: str | None = None,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
        submitter: str | None = None,
    ) -> NewJob:
        return prepare_job(
            self.registry,
            raw,
            caller=caller,
            transport=transport,
            job_id=job_id,
            origin=origin,
            max_timeout=self._max_timeout,
            privileged=privileged,
            submitter=submitter,
        )

    async def submit(
        self,
        raw: object,
        *,
        caller: Caller | None = None,
        transport: str | None = None,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
        submitter: str | None = None,
    ) -> Submission:
        prepared = self.prepare(
            raw,
            caller=caller,
            transport=transport,
            job_id=job_id,
            origin=origin,
            privileged=privileged,
            submitter=submitter,
        )
        outcome = (await self.submit_many([prepared]))[0]
        if isinstance(outcome, AgentError):
            raise outcome
        return outcome

    async def submit_many(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        if not self._accepting:
            raise DrainingError
        checks = [
            (index, job.admission)
            for index, job in enumerate(jobs)
            if isinstance(job, PreparedJob) and job.admission is not None
        ]
        if not checks:
            return await self._record(jobs)
        refused = await trio.to_thread.run_sync(_admit_all, checks)
        admitted = [job for index, job in enumerate(jobs) if index not in refused]
        recorded = iter(await self._record(admitted) if admitted else [])
        return [
            refused[index] if index in refused else next(recorded) for index in range(len(jobs))
        ]

    async def _record(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        """Record admitted jobs in one transaction and queue the new ones."""
        if self._dispatcher.queue_depth + len(jobs) > self._max_pending:
            raise QueueFullError(
                f"The pending queue is full ({self._max_pending} jobs)",
                field="max_pending_jobs",
                reason=f"queue full: {self._max_pending} jobs pending",
                details={"queue_depth": self._dispatcher.queue_depth},
            )
        if self._space is not None:
            self._space.check()
        outcomes = await self._store.insert_jobs(jobs)
        answers: list[Submission | AgentError] = []
        listening = self._bus.listening
        enqueue = self._dispatcher.enqueue
        accepted: Counter[str] = Counter()  # new jobs per transport, counted once
        for outcome in outcomes:
            if isinstance(outcome, AgentError):
                answers.append(outcome)
                continue
            state, pending = outcome
            if pending is not None:
                job = jobs[len(answers)]
                if isinstance(job, PreparedJob) and job.withheld is not None:
                    self._dispatcher.hold(state.job_id, job.withheld)
                if listening:
                    self._bus.publish(
                        {
                            "type": "created",
                            "job_id": state.job_id,
                            "data": state.model_dump(mode="json"),
                        }
                    )
                enqueue(pending)
                accepted[state.transport] += 1
            answers.append(Submission(state=state, created=pending is not None))
        for transport, count in accepted.items():
            metrics.record_accepted(transport, count)
        return answers

    async def wait_for_room(self, count: int = 1) -> None:
        await self._dispatcher.wait_for_room(count, self._max_pending)

    def outbox(self, consumer: str) -> Outbox:
        return Outbox(self._store, consumer)

    async def status(self, job_id: str) -> JobState:
        return await self._store.get_job(job_id)

    async def result(self, job_id: str) -> Any:
        return await self._store.get_result(job_id)

    async def submitter(self, job_id: str) -> str | None:
        return await self._store.get_submitter(job_id)

    async def logs(self, job_id: str) -> list[dict[str, Any]]:
        return await self._store.get_events(job_id)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        newest_first: bool = False,
    ) -> tuple[list[JobState], int, int | None]:
        return await self._store.list_jobs(
            status=status,
            operation=operation,
            limit=limit,
            after_seq=after_seq,
            newest_first=newest_first,
        )

    async def events_after(
        self, after_id: int, job_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Progress and log events from the durable log after `after_id` (resumable streams)."""
        return await self._store.get_events_after(after_id, job_ids)

    async def cancel(self, job_id: str) -> JobState:
        return await self._dispatcher.cancel(job_id)

    async def capabilities(self) -> dict[str, Any]:
        return await self._capabilities.describe()

    async def capabilities_changed(self, since: str | None) -> str:
        return await self._capabilities.changed(since)

    async def health(self) -> dict[str, Any]:
        return await self._health.report()

    @contextmanager
    def events(self, *, buffer: int = 1024) -> Iterator[Subscription]:
        with self._bus.subscribe(buffer=buffer) as subscription:
            yield subscription
