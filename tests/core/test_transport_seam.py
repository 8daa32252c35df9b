"""A transport written only against the public seam (agent.transports.base and
agent.core.intake.TransportIntake), registered in the daemon's transport table: it
gets its jobs run, its outcomes through its outbox, and its health and
features reported, with no core module knowing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from agent.config import Config, LibvirtConfig
from agent.core.health import Status
from agent.core.intake import TransportIntake
from agent.core.outbox import OutboxInterest
from agent.jobs import OutboxEntry
from agent.service.daemon import Agent
from agent.transports import TRANSPORTS
from agent.transports.base import Transport, TransportSpec
from agent.transports.http.settings import HttpConfig


class ListTransport:
    """Takes jobs from a list; hands every outbox entry to `delivered`."""

    name = "list"
    outbox = OutboxInterest(progress=True)

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self._documents = documents
        self.delivered: list[OutboxEntry] = []
        self.all_delivered = trio.Event()

    def features(self) -> list[str]:
        return ["list-feed"]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        return "degraded", "a list is all it has", {"jobs": len(self._documents)}

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        outbox = intake.outbox(self.name)
        async with trio.open_nursery() as nursery:
            task_status.started()
            jobs = [intake.prepare(raw, transport=self.name) for raw in self._documents]
            await intake.wait_for_room(len(jobs))
            await intake.submit_many(jobs)
            async for batch in outbox:
                self.delivered.extend(batch)
                await outbox.ack(batch[-1].id)
                finals = {e.job_id for e in self.delivered if e.state.status.terminal}
                if len(finals) == len(self._documents):
                    self.all_delivered.set()
            nursery.cancel_scope.cancel()


def document(job_id: str, operation: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data},
    }


async def test_a_transport_from_the_table_gets_jobs_outcomes_health_and_features(
    tmp_path: Path,
) -> None:
    feed = ListTransport(
        [
            document("one", "system.echo", {"n": 1}),
            document("two", "system.sleep", {"seconds": 1.2}),
            {**document("late", "system.sleep", {"seconds": 30}), "timeout_seconds": 0.2},
        ]
    )

    def build(_: Config) -> Transport:
        return feed

    config = Config(
        state_dir=tmp_path / "state",
        spool_dir=tmp_path / "spool",
        libvirt=LibvirtConfig(uri="test:///default"),
    )
    table = (*TRANSPORTS, TransportSpec("list", None, build))
    config = config.model_copy(update={"http": HttpConfig(enabled=False)})
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config, transports=table).run)
        with trio.fail_after(30):
            await feed.all_delivered.wait()
        health = await agent.intake.health()
        capabilities = await agent.intake.capabilities()
        nursery.cancel_scope.cancel()

    by_job: dict[str, list[str]] = {}
    for entry in feed.delivered:
        by_job.setdefault(entry.job_id, []).append(entry.event)
    assert by_job["one"] == ["accepted", "running", "completed"]
    assert by_job["two"][:2] == ["accepted", "running"]
    assert "progress" in by_job["two"]  # it asked for progress entries
    assert by_job["two"][-1] == "completed"
    assert by_job["late"][:2] == ["accepted", "running"]
    assert by_job["late"][-1] == "failed"
    [one] = [e for e in feed.delivered if e.job_id == "one" and e.event == "completed"]
    assert one.data == {"result": {"n": 1}}
    assert one.state.transport == "list"
    assert health["components"]["list"] == {
        "status": "degraded",
        "reason": "a list is all it has",
        "jobs": 3,
    }
    assert health["status"] == "degraded"
    assert "list-feed" in capabilities["features"]
    assert "spool" in capabilities["features"]
    assert "http" not in capabilities["features"]  # turned off: not built, not advertised
