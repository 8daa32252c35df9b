"""Per-VM usage is sampled only while someone watches: GET /api/v1/stats/vms streams
samples (rates from the second one on); with no stream open nothing is sampled, and two
watchers share one sample per interval."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from agent.service.daemon import Agent
from agent.view.reads import ResourceView
from tests.http_helpers import READ, client, http_of

pytestmark = pytest.mark.slow  # real intervals


async def samples(agent: Agent, count: int) -> list[dict[str, Any]]:
    """The first `count` samples of a stream, read off a plain socket (each sample is
    one chunk of the chunked answer), which is closed after them."""
    host, _, port = http_of(agent).url.removeprefix("http://").rpartition(":")
    found: list[dict[str, Any]] = []
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = (
            "GET /api/v1/stats/vms?interval_seconds=0.5 HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {READ}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        buffer = ""
        while len(found) < count:
            data = await stream.receive_some()
            assert data, "the stream ended"
            buffer += data.decode()
            *lines, buffer = buffer.split("\n")
            found += [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return found[:count]


async def test_sampled_only_while_a_stream_is_open(ui_agent: Agent) -> None:
    usage = ui_agent.services.get(ResourceView).usage
    await trio.sleep(0.6)
    assert usage.samples_taken == 0  # nobody watches: nothing sampled
    async with client(ui_agent, READ) as http:
        head = await http.get("/api/v1/stats/vms", headers={"Authorization": "Bearer x"})
        assert head.status_code == 401
    first, second = await samples(ui_agent, 2)
    assert second["sample"] > first["sample"]
    test_vm = next(vm for vm in second["vms"] if vm["name"] == "test")  # test:///default's
    assert test_vm["state"] == "running"
    assert test_vm["cpu_percent"] is not None  # a rate: two samples apart
    assert next(vm for vm in first["vms"] if vm["name"] == "test")["cpu_percent"] is None
    with trio.fail_after(5):
        while usage.watchers:
            await trio.sleep(0.05)
    taken = usage.samples_taken
    await trio.sleep(1.2)
    assert usage.samples_taken == taken  # the stream closed: sampling stopped


async def test_two_watchers_share_each_sample(ui_agent: Agent) -> None:
    usage = ui_agent.services.get(ResourceView).usage
    got: dict[str, list[int]] = {}

    async def watch(who: str) -> None:
        got[who] = [sample["sample"] for sample in await samples(ui_agent, 4)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, "a")
        nursery.start_soon(watch, "b")
    # Four samples each, from one sampler: far fewer than eight libvirt reads.
    assert usage.samples_taken <= 6
    assert set(got["a"]) & set(got["b"])
