"""An idle agent stops refreshing its health report; the next probe gets a fresh one.

The report pings libvirt and reads the store and the disks in worker threads:
refreshed every second for ever, it was most of an idle agent's CPU. The
intake here is a stand-in that only counts reports (HealthReports' scheduling,
through the front, is what is tested), on trio's autojump clock.
"""

from __future__ import annotations

import json
from typing import Any, cast

import trio

from agent.core.intake import TransportIntake
from agent.transports.http import job_api
from agent.transports.http.auth import TokenTable
from agent.transports.http.front import Front
from agent.transports.http.probes import IDLE_AFTER_SECONDS, REFRESH_SECONDS
from agent.transports.http.routes import ApiState
from agent.transports.http.settings import HttpConfig


class _CountingIntake:
    def __init__(self) -> None:
        self.reports = 0

    async def health(self) -> dict[str, Any]:
        self.reports += 1
        return {"status": "healthy", "timestamp": str(self.reports), "components": {}}


async def _probe(front: Front) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/api/v1/health", "headers": []}
    await front(scope, receive, send)
    assert sent[0]["status"] == 200
    return cast(dict[str, Any], json.loads(sent[1]["body"])["data"])


async def test_an_unprobed_agent_stops_refreshing_and_a_probe_gets_a_fresh_report(
    autojump_clock: trio.abc.Clock,
) -> None:
    intake = _CountingIntake()
    api = ApiState(cast(TransportIntake, intake), HttpConfig(), TokenTable([], required=False))
    front = Front(None, api, job_api.ROUTES)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.health.refresh)
        # Probed: refreshed every REFRESH_SECONDS.
        for _ in range(5):
            await _probe(front)
            await trio.sleep(REFRESH_SECONDS)
        assert intake.reports >= 5
        # Unprobed for an hour: it stops once IDLE_AFTER_SECONDS have passed.
        await trio.sleep(3600)
        idle_reports = intake.reports
        assert idle_reports <= 5 + IDLE_AFTER_SECONDS / REFRESH_SECONDS + 2
        await trio.sleep(3600)
        assert intake.reports == idle_reports
        # The next probe wakes it and is answered by a report taken after it came.
        report = await _probe(front)
        assert intake.reports == idle_reports + 1
        assert report["timestamp"] == str(intake.reports)
        nursery.cancel_scope.cancel()
