"""From consumed records to durable jobs: parse, select, expire, validate, submit.

A batch of records becomes jobs in one store transaction; the records that are
not jobs (poison, expired, not for this agent) and the duplicates become
events. Offsets are stored only after both the jobs are durable and those
events are delivered, so nothing is lost and no partition is ever blocked by
a bad message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent.errors import AgentError, ExpiredError, NotFoundError, ValidationError
from agent.jobs import JobState, NewJob, parse_json
from agent.transports.kafka.consumer import Record
from agent.transports.kafka.events import EventType, event_value
from agent.transports.kafka.producer import Outgoing
from agent.transports.kafka.topics import Selector

if TYPE_CHECKING:
    from agent.core.intake import Submission

log = structlog.get_logger("agent.transports.kafka")

TRANSPORT = "kafka"


class JobIntake(Protocol):
    """The part of the TransportIntake this module uses."""

    def prepare(
        self, raw: object, *, transport: str, job_id: str | None = None, origin: str | None = None
    ) -> NewJob: ...

    async def wait_for_room(self, count: int = 1) -> None: ...

    # Raises DrainingError (nothing recorded) while the agent drains.
    async def submit_many(self, jobs: Sequence[NewJob]) -> list[Submission | AgentError]: ...

    async def status(self, job_id: str) -> JobState: ...


@dataclass
class Sorted:
    """One batch of records, sorted into what the agent does with each."""

    jobs: list[Any]
    events: list[Outgoing]


@dataclass(frozen=True)
class Expired:
    """A job whose not_after has passed (the intake refused it): it is never run."""

    job_id: str
    error: ExpiredError


@dataclass(frozen=True)
class Examiner:
    """Turns records into prepared jobs or events, for one agent."""

    worker_id: str
    events_topic: str
    labels: Mapping[str, str]
    operations: Collection[str]

    def event(
        self,
        type: EventType,
        record: Record,
        *,
        job_id: str | None,
        data: dict[str, Any],
        status: str | None = None,
    ) -> Outgoing:
        key = job_id or (record.key.decode(errors="replace") if record.key else None)
        origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        value = event_value(
            type=type,
            worker_id=self.worker_id,
            job_id=job_id,
            status=status,
            data={**data, "origin": origin},
            # Stable for a re-read record, so readers can drop the repeat.
            event_id=f"{self.worker_id}:{record.topic}:{record.partition}:{record.offset}",
        )
        return (self.events_topic, key, value)

    def rejected(self, record: Record, error: AgentError, job_id: str | None) -> Outgoing:
        log.warning(
            "kafka.rejected",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error.message,
            **error.details,
        )
        return self.event("rejected", record, job_id=job_id, data={"error": error.to_dict()})

    def examine(
        self, intake: JobIntake, record: Record, kind: str
    ) -> Any | Expired | Outgoing | None:
        """A prepared job, an event to send instead, or None (a broadcast not for us)."""
        key = record.key.decode(errors="replace") if record.key else None
        try:
            raw = parse_json(record.value or b"")  # as HTTP and the spool read documents
        except (ValueError, ValidationError) as exc:  # ValidationError: 10,000 deep, NaN, ...
            error = (
                exc
                if isinstance(exc, ValidationError)
                else ValidationError(
                    "The message is not a JSON document", field="document", reason=str(exc)
                )
            )
            return self.rejected(record, error, key)
        if not isinstance(raw, dict):
            error = ValidationError(
                "A job document must be a JSON object",
                field="document",
                reason="Expected a JSON object",
            )
            return self.rejected(record, error, key)
        # Kafka's addition to the document: addressing, not job data.
        selector = raw.pop("selector", None)
        job_id = raw.get("job_id") if isinstance(raw.get("job_id"), str) else key
        job_id = job_id or _record_job_id(record)
        try:
            if kind == "broadcast" and not self._selected(raw, selector):
                return None
            return intake.prepare(
                raw,
                transport=TRANSPORT,
                job_id=job_id,
                origin=f"{record.topic}/{record.partition}/{record.offset}",
            )
        except ExpiredError as exc:
            return Expired(job_id, exc)
        except AgentError as exc:
            return self.rejected(record, exc, job_id)

    def _selected(self, raw: dict[str, Any], selector: object) -> bool:
        chosen = Selector.parse(selector)
        operation = raw.get("operation")
        return chosen.matches(self.labels, self.operations) and operation in self.operations

    async def sort(self, intake: JobIntake, records: Sequence[Record], kind: str) -> Sorted:
        jobs: list[Any] = []
        events: list[Outgoing] = []
        job_records: list[Record] = []
        for record in records:
            outcome = self.examine(intake, record, kind)
            if outcome is None:
                continue
            if isinstance(outcome, Expired):
                events.append(await self._expired(intake, outcome, record))
            elif isinstance(outcome, tuple):
                events.append(outcome)
            else:
                jobs.append(outcome)
                job_records.append(record)
        if jobs:
            await intake.wait_for_room(len(jobs))
            answers = await intake.submit_many(jobs)
            for job, record, answer in zip(jobs, job_records, answers, strict=True):
                if isinstance(answer, AgentError):
                    events.append(self.rejected(record, answer, job.job_id))
                elif not answer.created:
                    events.append(
                        self.event(
                            "duplicate",
                            record,
                            job_id=job.job_id,
                            status=str(answer.state.status),
                            data={},
                        )
                    )
        return Sorted(jobs=jobs, events=events)

    async def _expired(self, intake: JobIntake, expired: Expired, record: Record) -> Outgoing:
        try:
            state = await intake.status(expired.job_id)
        except NotFoundError:
            log.info("kafka.expired", job_id=expired.job_id, error=expired.error.message)
            return self.event(
                "expired", record, job_id=expired.job_id, data={"error": expired.error.to_dict()}
            )
        # Re-read after it was taken in time: the job exists, this copy is a repeat.
        return self.event(
            "duplicate", record, job_id=expired.job_id, status=str(state.status), data={}
        )


def _record_job_id(record: Record) -> str:
    """A job id for a document that names none, the same when the record is re-read."""
    where = f"{record.topic}:{record.partition}:{record.offset}".encode()
    return "kafka-" + hashlib.sha256(where).hexdigest()[:32]
