"""The single door transports use: validate -> durable insert -> queue.

It is also the transports' view of jobs (status, result, logs, cancel,
live events), so a transport never touches the store or dispatcher itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent import metrics
from agent.capabilities import Capabilities
from agent.dispatcher import Dispatcher
from agent.errors import AgentError, QueueFullError
from agent.events import EventBus, Subscription
from agent.health import Health
from agent.jobs import JobState, fingerprint, format_timestamp, new_job_id, parse_document, utc_now
from agent.registry import Registry
from agent.store import (
    NewJob,
    Store,
    get_events,
    get_job,
    get_outcomes,
    get_result,
    list_jobs,
)

if TYPE_CHECKING:
    from agent.config import Config


@dataclass(frozen=True)
class Submission:
    state: JobState
    created: bool  # False: the same document was already accepted under this job_id


def prepare_job(
    registry: Registry,
    raw: object,
    *,
    transport: str,
    job_id: str | None = None,
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
    )


class Intake:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        dispatcher: Dispatcher,
        bus: EventBus,
        *,
        max_pending: int,
        max_timeout: float,
        capabilities: Capabilities,
        health: Health,
    ) -> None:
        self.registry = registry
        self._store = store
        self._dispatcher = dispatcher
        self._bus = bus
        self._max_pending = max_pending
        self._max_timeout = max_timeout
        self._capabilities = capabilities
        self._health = health
        # False while the agent drains for shutdown: transports stop taking jobs.
        self.accepting = True

    def reload(self, config: Config) -> None:
        """Apply the queue bound and timeout cap of a reloaded config."""
        self._max_pending = config.max_pending_jobs
        self._max_timeout = config.max_timeout_seconds

    def prepare(
        self, raw: object, *, transport: str, job_id: str | None = None, privileged: bool = False
    ) -> NewJob:
        return prepare_job(
            self.registry,
            raw,
            transport=transport,
            job_id=job_id,
            max_timeout=self._max_timeout,
            privileged=privileged,
        )

    async def submit(
        self, raw: object, *, transport: str, job_id: str | None = None, privileged: bool = False
    ) -> Submission:
        """Accept one job; returns once it is durable. Raises the AgentError for it."""
        prepared = self.prepare(raw, transport=transport, job_id=job_id, privileged=privileged)
        outcome = (await self.submit_prepared([prepared]))[0]
        if isinstance(outcome, AgentError):
            raise outcome
        return outcome

    async def submit_prepared(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]:
        """Record prepared jobs in one transaction, then queue the new ones."""
        if not self.accepting:
            # Same answer as a full queue: nothing recorded, try again later (elsewhere).
            raise QueueFullError(
                "The agent is shutting down and takes no new jobs",
                details={"reason": "draining"},
            )
        if self._dispatcher.queue_depth + len(jobs) > self._max_pending:
            raise QueueFullError(
                f"The pending queue is full ({self._max_pending} jobs)",
                details={"queue_depth": self._dispatcher.queue_depth},
            )
        outcomes = await self._store.insert_jobs(jobs)
        answers: list[Submission | AgentError] = []
        for outcome in outcomes:
            if isinstance(outcome, AgentError):
                answers.append(outcome)
                continue
            state, pending = outcome
            if pending is not None:
                self._bus.publish(
                    {
                        "type": "created",
                        "job_id": state.job_id,
                        "data": state.model_dump(mode="json"),
                    }
                )
                self._dispatcher.enqueue(pending)
                metrics.record_accepted(state.transport)
            answers.append(Submission(state=state, created=pending is not None))
        return answers

    async def status(self, job_id: str) -> JobState:
        return await self._store.read(get_job, job_id)

    async def result(self, job_id: str) -> Any:
        return await self._store.read(get_result, job_id)

    async def outcomes(self, job_ids: Sequence[str]) -> list[tuple[JobState, Any]]:
        """Status and result of several jobs in one read (missing ids are left out)."""
        return await self._store.read(get_outcomes, job_ids)

    async def logs(self, job_id: str) -> list[dict[str, Any]]:
        return await self._store.read(get_events, job_id)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
    ) -> tuple[list[JobState], int, int | None]:
        return await self._store.read(
            list_jobs, status=status, operation=operation, limit=limit, after_seq=after_seq
        )

    async def cancel(self, job_id: str) -> JobState:
        return await self._dispatcher.cancel(job_id)

    async def capabilities(self) -> dict[str, Any]:
        return await self._capabilities.describe()

    async def health(self) -> dict[str, Any]:
        return await self._health.report()

    @contextmanager
    def events(self, *, buffer: int = 1024) -> Iterator[Subscription]:
        """Live job events from now on (see EventBus)."""
        with self._bus.subscribe(buffer=buffer) as subscription:
            yield subscription
