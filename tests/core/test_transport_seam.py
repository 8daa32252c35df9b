"""A transport written only against the public seam (agent.transports.base and
agent.core.intake.TransportIntake), registered in the daemon's transport table: it
gets its jobs run, its outcomes through its outbox, and its health and
features reported, with no core module knowing it; its own settings section
loads from the agent's file and environment, and reaches it, and only it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config, LibvirtConfig, Section
from agent.core.health import Status
from agent.core.intake import TransportIntake
from agent.core.outbox import OutboxInterest
from agent.core.services import Services
from agent.jobs import OutboxEntry
from agent.service.daemon import Agent
from agent.service.settings import Settings, load_settings
from agent.transports import TRANSPORTS
from agent.transports.base import Transport, TransportSpec
from agent.transports.http.settings import HttpConfig
from agent.view.reads import ResourceView


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


@pytest.mark.slow
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

    def build(_: Section, __: Services) -> Transport:
        return feed

    config = Settings(
        state_dir=tmp_path / "state",
        spool_dir=tmp_path / "spool",
        libvirt=LibvirtConfig(uri="test:///default"),
        http=HttpConfig(enabled=False),
    )
    table = (*TRANSPORTS, TransportSpec("list", None, build))
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


class FeedConfig(Section):
    """The [feed] section of a transport the shipped table does not know."""

    source: str = "nowhere"
    batch: int = 1


class FeedTransport:
    """Keeps what it was built and reloaded with."""

    name = "feed"
    outbox = None

    def __init__(self, settings: FeedConfig, *, worker_id: str, view: ResourceView) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.view = view
        self.reloaded: list[FeedConfig] = []

    def features(self) -> list[str]:
        return ["feed"]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        return "healthy", "fed", {}

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    def reload(self, settings: FeedConfig) -> None:
        self.reloaded.append(settings)


def build_feed(settings: FeedConfig, services: Services) -> Transport | None:
    if settings.source == "off":
        return None
    core = services.get(Config)
    return FeedTransport(settings, worker_id=core.worker_id, view=services.get(ResourceView))


FEED = TransportSpec("feed", FeedConfig, build_feed)


async def test_a_transport_beside_the_table_gets_its_own_section_from_file_and_env(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"worker_id = 'w7'\nstate_dir = '{tmp_path / 'state'}'\nspool_dir = '{tmp_path}/spool'\n"
        "[libvirt]\nuri = 'test:///default'\n[http]\nenabled = false\n"
        "[feed]\nsource = 'kafka://elsewhere'\n"
    )
    table = (*TRANSPORTS, FEED)
    settings = load_settings(path, transports=table, environ={"HOSTAGENT_FEED__BATCH": "9"})
    agent = Agent(settings, transports=table)
    feed = agent.transport("feed")
    assert isinstance(feed, FeedTransport)
    assert feed.settings == FeedConfig(source="kafka://elsewhere", batch=9)
    assert feed.worker_id == "w7"  # what it needs of the core, passed explicitly
    assert feed.view is agent.services.get(ResourceView)  # from the services registry
    # A reload hands each transport its own section, not the whole settings.
    renewed = agent.config.model_copy(update={"feed": FeedConfig(source="x", batch=2)})
    await agent.reload(renewed)
    assert feed.reloaded == [FeedConfig(source="x", batch=2)]
    spool = agent.transport("spool")
    assert getattr(spool, "config") == agent.config.spool  # noqa: B009 (SpoolTransport's)
    # Its section turns it off like any shipped transport's.
    off = load_settings(path, transports=table, environ={"HOSTAGENT_FEED__SOURCE": "off"})
    with pytest.raises(KeyError):
        Agent(off, transports=table).transport("feed")
