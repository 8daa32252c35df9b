"""GET /api/v1/stats/vms: every VM's state and usage as Server-Sent Events, one event
per sample (about every `interval_seconds`) for as long as the client stays.

The stream is the subscription: VMs are sampled only while one is open
(agent.view.live_stats). It ends when the agent drains, so it never holds a
shutdown up.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response

from agent.errors import AgentError
from agent.transports.http.api import state
from agent.transports.http.resource_kit import add_read, parse_query, resource_view
from agent.view.models import LiveQuery


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _vm_usage() -> Response:
    api = state()
    usage = resource_view().usage
    interval = parse_query(LiveQuery).interval_seconds
    usage.interval = min(usage.interval, interval) if usage.watchers else interval

    async def generate() -> AsyncIterator[bytes]:
        seq = 0
        with usage.watching():
            yield b"retry: 2000\n\n"
            while api.intake.accepting:
                try:
                    seq, rows = await usage.next_sample(seq)
                except AgentError as exc:  # libvirt away: say so, and try again
                    yield _frame("error", exc.to_dict())
                    await trio.sleep(usage.interval)
                    continue
                yield _frame("vms", {"sample": seq, "vms": rows})

    response = Response(
        generate(),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.timeout = None
    return response


add_read(
    "/stats/vms",
    "vm_usage_stream",
    _vm_usage,
    "Every VM's state, CPU %, memory, disk and network throughput as Server-Sent Events "
    "(event `vms`, one per sample); VMs are sampled only while such a stream is open",
    query=LiveQuery,
    raw="text/event-stream",
    token_in_query=True,
    errors=(400, 401, 403, 503),
)
