"""Child jobs: a job (a runbook's) that runs others as ordinary jobs naming it as
their parent, through the one intake, so their checks, queue, locks, timeouts,
events and outbox are every job's."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import trio

from agent.core.dispatcher import Dispatcher
from agent.core.intake import Intake, PreparedJob
from agent.core.submitter import group_names, groups_of
from agent.core.withheld import withhold
from agent.errors import AgentError, ConflictError, DrainingError, NotFoundError, QueueFullError
from agent.jobs import JobState
from agent.policy.allowlist import Caller


def caller_of_parent(transport: str, submitter: str | None) -> Caller:
    """The caller a child is checked for (the allowlist; blocking: group lookups): its
    parent's, as recorded with it. Not recorded: admin (a step never gets passthrough
    the intake did not check), and the groups a socket peer had then (read again)."""
    token: str | None = None
    groups: frozenset[str] = frozenset()
    kind, _, name = (submitter or "").partition(":")
    if kind in ("token", "key"):  # an HTTP token, a Kafka signing key
        token = name
    elif kind == "uid" and transport == "socket" and name.isdigit():
        groups = group_names(groups_of(int(name)))
    return Caller(transport, token=token, groups=groups, submitter=submitter)


class Children:
    """The daemon's ChildJobs (agent.core.context), registered as a service."""

    def __init__(self, intake: Intake, dispatcher: Dispatcher) -> None:
        self._intake = intake
        self._dispatcher = dispatcher

    async def submit(
        self, parent: str, document: dict[str, Any], secrets: Sequence[Any] = ()
    ) -> JobState:
        # The parent's transport (its outbox hears of the child) and submitter (who
        # may cancel it); the parent's own checks were made at its intake.
        state = await self._intake.status(parent)
        submitter = await self._intake.submitter(parent)
        caller = await trio.to_thread.run_sync(caller_of_parent, state.transport, submitter)
        prepared = self._intake.prepare(document, caller=caller)
        prepared = replace(prepared, parent=parent)
        if secrets and isinstance(prepared, PreparedJob):
            stored, held = withhold(prepared.document, secrets)
            prepared = replace(prepared, document=stored, withheld=held)
        while True:
            try:
                outcome = (await self._intake.submit_many([prepared]))[0]
                break
            except DrainingError:
                # Shutting down: the parent is interrupted now and left Running, and
                # resumes (submitting this child) after the restart.
                self._dispatcher.interrupt_now(parent)
                await trio.sleep_forever()
            except QueueFullError:
                await self._intake.wait_for_room()  # back-pressure, as a transport waits
        if isinstance(outcome, AgentError):
            raise outcome
        return outcome.state

    async def find(self, job_id: str) -> JobState | None:
        try:
            return await self._intake.status(job_id)
        except NotFoundError:
            return None

    async def wait(self, job_id: str) -> JobState:
        ended = self._dispatcher.awaited(job_id)  # before the read: see Dispatcher.awaited
        state = await self._intake.status(job_id)
        if state.status.terminal:
            return state
        async with self._dispatcher.lend_slot():
            try:
                await ended.wait()
            except trio.Cancelled:
                if not self._dispatcher.draining:
                    with trio.CancelScope(shield=True), suppress(ConflictError, NotFoundError):
                        await self._dispatcher.cancel(job_id)
                raise
        return await self._intake.status(job_id)

    async def result(self, job_id: str) -> Any:
        return await self._intake.result(job_id)
