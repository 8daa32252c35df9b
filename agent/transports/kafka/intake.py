"""From consumed records to durable jobs: parse, select, expire, validate, submit.

A batch of records becomes jobs in one store transaction; the records that are
not jobs (poison, expired, not for this agent) and the duplicates become
events. Offsets are stored only after both the jobs are durable and those
events are delivered, so nothing is lost and no partition is ever blocked by
a bad message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from agent.core import submitter
from agent.core.targets import refused_value
from agent.errors import (
    AgentError,
    ExpiredError,
    NotFoundError,
    RefusedForNowError,
    UnauthorizedError,
    ValidationError,
)
from agent.jobs import check_encodable, check_job_id, parse_json
from agent.policy.allowlist import Caller
from agent.transports.kafka.consumer import Record
from agent.transports.kafka.events import EventType, event_value
from agent.transports.kafka.producer import Outgoing
from agent.transports.kafka.signing import SIGNATURE, Signer, Verifier
from agent.transports.kafka.topics import Selector

if TYPE_CHECKING:
    from agent.core.intake import Submission, TransportIntake

log = structlog.get_logger("agent.transports.kafka")

TRANSPORT = "kafka"
# A rejected record's job_id is echoed in its event up to this many characters.
_ECHOED_ID_CHARS = 256


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
    """Turns records into prepared jobs or events, for one agent.

    Nothing one record holds can stop the transport: every failure of a record's
    steps (signature, parse, key, selector, validation, fingerprint) becomes its
    `rejected` event, and its offset commits like any other.
    """

    worker_id: str
    events_topic: str
    labels: Mapping[str, str]
    operations: Collection[str]
    # None: signatures are off (kafka.require_signatures = false) and no key is trusted.
    verifier: Verifier | None = None
    require_signatures: bool = True

    def event(
        self,
        type: EventType,
        record: Record,
        *,
        job_id: str | None,
        data: dict[str, Any],
        status: str | None = None,
    ) -> Outgoing:
        origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        value = event_value(
            type=type,
            worker_id=self.worker_id,
            # Echoed for the sender to match, bounded: it may be anything a poison message held.
            job_id=job_id[:_ECHOED_ID_CHARS] if job_id is not None else None,
            status=status,
            data={**data, "origin": origin},
            # Stable for a re-read record, so readers can drop the repeat.
            event_id=f"{self.worker_id}:{record.topic}:{record.partition}:{record.offset}",
        )
        # A valid job_id keys the event; anything else keeps the record's own key bytes.
        key: str | bytes | None = job_id if _valid_job_id(job_id) else record.key
        return (self.events_topic, key, value)

    def rejected(self, record: Record, error: AgentError, job_id: str | None) -> Outgoing:
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        # The details' own keys, unless one would collide with these (or the event's name).
        details = {k: v for k, v in error.details.items() if k not in {*where, "error", "event"}}
        # What the record gave the refused field (a secret's value redacted), as http.refused.
        field = error.details.get("field")
        if isinstance(field, str):
            details["value"] = refused_value(field, record.value or b"")
        log.warning("kafka.rejected", **where, error=error.message, **details)
        return self.event("rejected", record, job_id=job_id, data={"error": error.to_dict()})

    def examine(
        self, intake: TransportIntake, record: Record, kind: str, signed: Signed = None
    ) -> Any | Expired | Outgoing | None:
        """A prepared job, an event to send instead, or None (a broadcast not for us).

        `signed`: the record's `signatures()` answer (checked here when not given).
        """
        if signed is None:
            signed = self.signature(record)
        if isinstance(signed, AgentError):
            key = record.key.decode(errors="replace") if record.key is not None else None
            return self.rejected(record, signed, key)
        seen = _Seen()
        try:
            return self._examine(intake, record, kind, seen, signed)
        except ExpiredError as exc:
            if seen.job_id is None:  # not reached: an expired document has its id by then
                return self.rejected(record, exc, None)
            return Expired(seen.job_id, exc)
        except AgentError as exc:
            return self.rejected(record, exc, seen.job_id)
        except Exception as exc:  # contained: one record never stops the transport
            log.exception("kafka.record_failed", topic=record.topic, offset=record.offset)
            error = ValidationError(
                "The message could not be taken", field="document", reason=_describe(exc)
            )
            return self.rejected(record, error, seen.job_id)

    def signatures(self, records: Sequence[Record]) -> list[Signed]:
        """Each record's signer (or why it is refused). ~0.1-0.2 ms of CPU a record:
        called on a worker thread (by the transport, for the next batch while one is
        stored; by `sort` otherwise), so a batch never holds up the trio thread."""
        return [self.signature(record) for record in records]

    def signature(self, record: Record) -> Signer | _Unsigned | AgentError:
        try:
            return self._signer(record) or UNSIGNED
        except AgentError as exc:
            return exc
        except Exception as exc:  # contained: whatever the headers hold, one record's fault
            log.exception("kafka.signature_check_failed", topic=record.topic, offset=record.offset)
            return UnauthorizedError(
                "The job's signature could not be checked",
                field=SIGNATURE,
                reason=_describe(exc),
            )

    def _examine(
        self,
        intake: TransportIntake,
        record: Record,
        kind: str,
        seen: _Seen,
        signed: Signer | _Unsigned,
    ) -> Any:
        key = record.key.decode(errors="replace") if record.key is not None else None
        seen.job_id = key
        signer = signed if isinstance(signed, Signer) else None
        try:
            raw = parse_json(record.value or b"")  # as HTTP and the spool read documents
        except ValueError as exc:  # ValidationError (10,000 deep, NaN, ...) is an AgentError
            raise ValidationError(
                "The message is not a JSON document", field="document", reason=str(exc)
            ) from exc
        if not isinstance(raw, dict):
            raise ValidationError(
                "A job document must be a JSON object",
                field="document",
                reason="Expected a JSON object",
            )
        named = raw.get("job_id")
        if isinstance(named, str):
            seen.job_id = named
        # Text that UTF-8 cannot carry (a lone surrogate) is refused before anything
        # encodes it (the fingerprint, the store, an event).
        if _may_hold_surrogates(record.value or b""):
            check_encodable(raw)
        job_id = self._job_id(record, named, signer)
        seen.job_id = seen.job_id if named is not None else job_id
        # Kafka's addition to the document: addressing, not job data.
        selector = raw.pop("selector", None)
        if kind == "broadcast" and not self._selected(raw, selector):
            return None
        return intake.prepare(
            raw,
            caller=_caller(signer),
            job_id=job_id,
            origin=f"{record.topic}/{record.partition}/{record.offset}",
        )

    def _signer(self, record: Record) -> Signer | None:
        """Who signed the record (checked), or None when unsigned jobs are allowed."""
        signed = any(name == SIGNATURE for name, _value in record.headers)
        if self.verifier is None or not (signed or self.require_signatures):
            if self.require_signatures:
                raise UnauthorizedError(
                    "The job is not signed by a key this host trusts",
                    field="kafka.keys",
                    reason="no key configured (kafka.require_signatures is true)",
                )
            return None
        return self.verifier.verify(
            topic=record.topic, key=record.key, value=record.value or b"", headers=record.headers
        )

    @staticmethod
    def _job_id(record: Record, named: object, signer: Signer | None) -> str | None:
        """The id to use when the document names none; None: the document's own is used."""
        if named is not None:
            return None  # the document's job_id (valid or not, the document's check says)
        if record.key is not None:
            try:
                key = record.key.decode()
            except UnicodeDecodeError as exc:
                raise ValidationError(
                    "The message key is not UTF-8", field="key", reason=str(exc)
                ) from exc
            # It becomes the job's id: the contract's rules, as for the document's field.
            return check_job_id(key, field="key")
        if signer is not None:
            # A replay of the same signed message is the same job.
            signature = dict(record.headers).get(SIGNATURE) or b""
            return "kafka-" + hashlib.sha256(signature).hexdigest()[:32]
        return _record_job_id(record)

    def _selected(self, raw: dict[str, Any], selector: object) -> bool:
        chosen = Selector.parse(selector)
        operation = raw.get("operation")
        return chosen.matches(self.labels, self.operations) and operation in self.operations

    async def sort(
        self,
        intake: TransportIntake,
        records: Sequence[Record],
        kind: str,
        checked: Sequence[Signed] | None = None,
    ) -> Sorted:
        """`checked`: the records' `signatures()` answers, when the caller checked them
        already (the transport does, for the next batch, while this one is stored)."""
        jobs: list[Any] = []
        events: list[Outgoing] = []
        job_records: list[Record] = []
        if checked is None:
            checked = await trio.to_thread.run_sync(self.signatures, records)
        for record, signed in zip(records, checked, strict=True):
            outcome = self.examine(intake, record, kind, signed)
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
            answers = await self._submit(intake, jobs)
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

    async def _submit(
        self, intake: TransportIntake, jobs: Sequence[Any]
    ) -> Sequence[Submission | AgentError]:
        """One answer per job; a batch that fails as a whole is tried job by job, so
        the one job that breaks it is rejected and the others go in."""
        try:
            return await intake.submit_many(jobs)
        except RefusedForNowError:  # full queue or disk, draining
            raise  # nothing recorded: the transport waits and tries the batch again
        except Exception as exc:  # contained: the job that breaks it is found below
            if len(jobs) == 1:
                log.exception("kafka.submit_failed", job_id=jobs[0].job_id)
                return [_as_agent_error(exc)]
        answers: list[Submission | AgentError] = []
        for job in jobs:
            answers += await self._submit(intake, [job])
        return answers

    async def _expired(self, intake: TransportIntake, expired: Expired, record: Record) -> Outgoing:
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


def _caller(signer: Signer | None) -> Caller:
    """Who hands a record's job in: its signing key (the allowlist's token), if signed."""
    if signer is None:
        return Caller(TRANSPORT)
    return Caller(
        TRANSPORT,
        token=signer.key_id,
        privileged="admin" in signer.scopes,
        submitter=submitter.of_key(signer.key_id),
    )


def _record_job_id(record: Record) -> str:
    """A job id for a document that names none, the same when the record is re-read."""
    where = f"{record.topic}:{record.partition}:{record.offset}".encode()
    return "kafka-" + hashlib.sha256(where).hexdigest()[:32]


class _Unsigned:
    """An unsigned record, allowed in (kafka.require_signatures = false)."""


UNSIGNED = _Unsigned()
# What a record's signature check answered (None: not checked yet).
Signed = Signer | _Unsigned | AgentError | None


@dataclass
class _Seen:
    """The job_id a record claims, as far as it was read before a step failed."""

    job_id: str | None = None


# How a lone surrogate gets into a document read from strict UTF-8: a \\u escape
# of D800-DFFF (a false alarm, such as an escaped backslash before "ud800", only
# costs the full walk).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _may_hold_surrogates(value: bytes) -> bool:
    """False when `value` cannot parse to text holding a lone surrogate: a cheap test
    (~1 us) that spares most records check_encodable's walk of every string (~10 us).

    parse_json reads UTF-16/32 too and decodes UTF-8 with surrogatepass: only text
    in strict UTF-8 without a surrogate escape is passed."""
    if json.detect_encoding(value) != "utf-8" or _SURROGATE_ESCAPE.search(value):
        return True
    try:
        value.decode()
    except UnicodeDecodeError:
        return True
    return False


def _valid_job_id(value: str | None) -> bool:
    try:
        check_job_id(value, field="job_id")
    except ValidationError:
        return False
    return True


def _as_agent_error(exc: Exception) -> AgentError:
    if isinstance(exc, AgentError):
        return exc
    return ValidationError("The job could not be recorded", field="document", reason=_describe(exc))


def _describe(exc: Exception) -> str:
    text = str(exc).encode(errors="replace").decode()
    return f"{type(exc).__name__}: {text[:200]}"
