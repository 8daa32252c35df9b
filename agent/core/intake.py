"""The single door transports use: validate -> durable insert -> queue.

It is also the transports' view of jobs (status, result, logs, cancel, live
events, the durable outbox), so a transport never touches the store or the
dispatcher itself. Transports are written against `TransportIntake`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.core import metrics
from agent.core.capabilities import Capabilities
from agent.core.diskspace import SpaceFloor
from agent.core.dispatcher import Dispatcher
from agent.core.events import EventBus, Subscription
from agent.core.health import Health
from agent.core.jobstore import JobStore
from agent.core.outbox import Outbox
from agent.core.registry import Registry
from agent.errors import AgentError, DrainingError, ExpiredError, QueueFullError
from agent.jobs import (
    JobState,
    NewJob,
    fingerprint,
    format_timestamp,
    new_job_id,
    parse_document,
    utc_now,
)

if TYPE_CHECKING:
    from agent.config import Config


@dataclass(frozen=True)
class Submission:
    state: JobState
    created: bool  # False: the same document was already accepted under this job_id


class TransportIntake(Protocol):
    """Everything a transport may ask of the core."""

    @property
    def accepting(self) -> bool:
        """False while the agent drains for shutdown: take no new jobs."""

    def prepare(
        self,
        raw: object,
        *,
        transport: str,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
    ) -> NewJob:
        """Validate a document completely; raises the ValidationError naming the field,
        or the host policy's ForbiddenError (`privileged`: the caller holds admin)."""

    async def submit(
        self,
        raw: object,
        *,
        transport: str,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
    ) -> Submission:
        """Accept one job; returns once it is durable. Raises the AgentError for it."""

    async def submit_many(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        """Record prepared jobs in one transaction; one answer per job."""

    async def wait_for_room(self, count: int = 1) -> None:
        """Return once `count` more jobs fit in the pending queue (back-pressure)."""

    def outbox(self, consumer: str) -> Outbox:
        """The durable feed of changes to the consumer's jobs (see agent.core.outbox)."""

    async def status(self, job_id: str) -> JobState: ...
    async def result(self, job_id: str) -> Any: ...
    async def outcomes(self, job_ids: Sequence[str]) -> list[tuple[JobState, Any]]: ...
    async def logs(self, job_id: str) -> list[dict[str, Any]]: ...
    async def cancel(self, job_id: str) -> JobState: ...
    async def capabilities(self) -> dict[str, Any]: ...
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


def prepare_job(
    registry: Registry,
    raw: object,
    *,
    transport: str,
    job_id: str | None = None,
    origin: str | None = None,
    max_timeout: float,
    privileged: bool = False,
) -> NewJob:
    """Validate a document completely (envelope and handler payload).

    `job_id` is the id to use when the document has none (a transport that
    can derive a stable one passes it, so a retry is not a new job).
    """
    document = parse_document(raw)
    # The host policy (paths, domain definitions) refuses here, before anything is recorded.
    registry.admit(document, registry.validate_payload(document), privileged=privileged)
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
    timeout = document.timeout_seconds
    return NewJob(
        job_id=normalized["job_id"],
        operation=document.operation,
        priority=document.priority,
        transport=transport,
        document=normalized,
        fingerprint=fingerprint(raw),
        timeout_seconds=None if timeout is None else min(timeout, max_timeout),
        origin=origin,
    )


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
        transport: str,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
    ) -> NewJob:
        return prepare_job(
            self.registry,
            raw,
            transport=transport,
            job_id=job_id,
            origin=origin,
            max_timeout=self._max_timeout,
            privileged=privileged,
        )

    async def submit(
        self,
        raw: object,
        *,
        transport: str,
        job_id: str | None = None,
        origin: str | None = None,
        privileged: bool = False,
    ) -> Submission:
        prepared = self.prepare(
            raw, transport=transport, job_id=job_id, origin=origin, privileged=privileged
        )
        outcome = (await self.submit_many([prepared]))[0]
        if isinstance(outcome, AgentError):
            raise outcome
        return outcome

    async def submit_many(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        if not self._accepting:
            raise DrainingError
        if self._dispatcher.queue_depth + len(jobs) > self._max_pending:
            raise QueueFullError(
                f"The pending queue is full ({self._max_pending} jobs)",
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

    async def outcomes(self, job_ids: Sequence[str]) -> list[tuple[JobState, Any]]:
        """Status and result of several jobs in one read (missing ids are left out)."""
        return await self._store.get_outcomes(job_ids)

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

    async def health(self) -> dict[str, Any]:
        return await self._health.report()

    @contextmanager
    def events(self, *, buffer: int = 1024) -> Iterator[Subscription]:
        with self._bus.subscribe(buffer=buffer) as subscription:
            yield subscription
