"""A real agent process whose only transport is a job feed that acknowledges
its outbox slowly, one entry at a time, and logs each delivery to a file.
Run as `python -m tests.outbox_agent STATE_DIR JOBS DELIVERY_LOG`; the outbox
soak test kills it with SIGKILL at random moments and starts it again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from agent.config import Config, LibvirtConfig, Section
from agent.core.health import Status
from agent.core.intake import TransportIntake
from agent.core.outbox import OutboxInterest
from agent.core.services import Services
from agent.service.daemon import Agent
from agent.service.logs import configure_logging
from agent.transports.base import Transport, TransportSpec

BATCH = 500


class SlowFeed:
    """Submits job-0 .. job-(N-1) (again after every restart: the same ids are
    the same jobs) and delivers its outbox to a log, one acknowledged entry at a time."""

    name = "feed"
    outbox = OutboxInterest()

    def __init__(self, jobs: int, log: Path) -> None:
        self._jobs = jobs
        self._log = log

    def features(self) -> list[str]:
        return ["feed"]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        return "healthy", "feeding", {}

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, intake)
            task_status.started()
            for start in range(0, self._jobs, BATCH):
                count = min(BATCH, self._jobs - start)
                await intake.wait_for_room(count)
                jobs = [
                    intake.prepare(_document(f"job-{n}"), transport=self.name)
                    for n in range(start, start + count)
                ]
                await intake.submit_many(jobs)

    async def _deliver(self, intake: TransportIntake) -> None:
        outbox = intake.outbox(self.name)
        with self._log.open("a") as log:
            async for batch in outbox:
                for entry in batch:
                    record = {"id": entry.id, "job_id": entry.job_id, "event": entry.event}
                    log.write(json.dumps(record) + "\n")
                    log.flush()  # in the page cache: a SIGKILL does not lose it
                    await trio.sleep(0.0002)  # slow on purpose: kills land mid-delivery
                    await outbox.ack(entry.id)


def _document(job_id: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"id": job_id}},
    }


async def _run(config: Config, feed: SlowFeed) -> None:
    def build(_: Section, __: Services) -> Transport:
        return feed

    agent = Agent(config, transports=(TransportSpec("feed", None, build),))
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await trio.sleep_forever()


def main() -> None:
    state, jobs, log = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    configure_logging("json", "info")
    config = Config(
        state_dir=state,
        spool_dir=state / "spool",
        max_concurrent_jobs=2,
        libvirt=LibvirtConfig(uri="test:///default"),
    )
    trio.run(_run, config, SlowFeed(jobs, log))


if __name__ == "__main__":
    main()
