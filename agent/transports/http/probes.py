"""The health report the API answers probes with, kept fresh in the background.

Health must answer while the job API is saturated: an orchestrator that
probes a busy agent must not see it as dead. Computing the report reads the
store (behind the job writes) and pings libvirt, so probes are answered
from a report a background task keeps fresh (every `REFRESH_SECONDS` while
probes come); the health route's Handler (job_api.health) is its only
reader, whichever path brought the probe.
"""

from __future__ import annotations

import json
from math import inf

import structlog
import trio

from agent.core import metrics
from agent.core.intake import JobReads
from agent.jobs import utc_now

log = structlog.get_logger("agent.http")

REFRESH_SECONDS = 1.0
# With no probe for this long the report is no longer refreshed, so an idle agent
# sleeps (each report pings libvirt and reads the store and the disks in threads);
# the next probe wakes the refresher and waits for a report taken after it came.
# Probes closer together than this (an overloaded agent's) are answered at once.
IDLE_AFTER_SECONDS = 3.0


class HealthReports:
    """The latest health report as the answer's bytes, refreshed while probes come."""

    def __init__(self, intake: JobReads) -> None:
        self._intake = intake
        self.body = b""
        self._reported_at = -inf
        self._probed_at = -inf
        self._reported = trio.Event()  # set by the next report
        self._probed = trio.Event()  # set by a probe while the refresher sleeps

    async def refresh(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the report fresh; a failing report is itself the answer."""
        started = False
        while True:
            try:
                report = await self._intake.health()
            except Exception as exc:  # health must answer even when a component breaks
                log.exception("http.health_report_failed")
                metrics.BACKGROUND_ERRORS.labels("health").inc()
                report = {
                    "status": "unhealthy",
                    "timestamp": utc_now(),
                    "components": {"agent": {"status": "unhealthy", "reason": repr(exc)}},
                }
            self.body = json.dumps({"success": True, "data": report}).encode()
            self._reported_at = trio.current_time()
            self._reported.set()
            self._reported = trio.Event()
            if not started:
                task_status.started()
                started = True
            if trio.current_time() - self._probed_at > IDLE_AFTER_SECONDS:
                self._probed = trio.Event()
                await self._probed.wait()
            else:
                await trio.sleep(REFRESH_SECONDS)

    async def fresh(self) -> bytes:
        """The report for a probe: if the refresher slept, wake it and wait for its next."""
        now = self._probed_at = trio.current_time()
        self._probed.set()
        if now - self._reported_at > 2 * REFRESH_SECONDS:
            reported = self._reported
            # A report that cannot be made in time is answered by the last one.
            with trio.move_on_after(REFRESH_SECONDS):
                await reported.wait()
        return self.body
