"""Per-VM usage is sampled only while someone watches: GET /api/v1/stats/vms streams
samples (rates from the second one on); with no stream open nothing is sampled, and two
watchers share one sample per interval."""

from __future__ import annotations

import pytest
import trio

from agent.service.daemon import Agent
from agent.view.reads import ResourceView
from tests.http_helpers import READ, client
from tests.ui.streams import samples

pytestmark = pytest.mark.slow  # real intervals


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
