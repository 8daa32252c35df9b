"""Per-VM usage (CPU %, memory, disk and network throughput) of every domain, sampled
only while someone watches.

There is no background task: a watcher (the UI's stream, an API client) asks
for the next sample, and the first watcher to ask after `interval` has passed
takes one (one libvirt call for all domains) while the others wait for it and
share it. So an agent nobody watches samples nothing (bench/idle.py's figures
stay), and a hundred watchers cost what one does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from agent.hypervisor import DOMAIN_STATES, LibvirtConnection


@dataclass(frozen=True)
class _Counters:
    at: float
    cpu_ns: int
    disk_read: int
    disk_write: int
    net_rx: int
    net_tx: int


def _total(stats: dict[str, Any], group: str, key: str) -> int:
    count = int(stats.get(f"{group}.count", 0))
    return sum(int(stats.get(f"{group}.{index}.{key}", 0)) for index in range(count))


# VIR_DOMAIN_STATS_STATE | CPU_TOTAL | BALLOON | VCPU | INTERFACE | BLOCK: what a row
# needs, and not the costlier groups (perf, dirty rate) "all stats" (0) would add.
_STATS = 1 | 2 | 4 | 8 | 16 | 32
_SHUTOFF = 5  # VIR_DOMAIN_SHUTOFF


def _read_all(conn: Any) -> list[tuple[dict[str, Any], _Counters | None]]:
    """Every domain's summary and (while it runs) its counters: one stats call for all
    (a domain's info is asked for only where the driver's stats leave a field out, as
    the test driver's hold only the state)."""
    now = time.monotonic()
    found = []
    for dom, stats in conn.getAllDomainStats(_STATS, 0):
        try:
            state = stats.get("state.state")
            vcpus = stats.get("vcpu.current")
            memory = stats.get("balloon.current")
            maximum = stats.get("balloon.maximum")
            cpu = stats.get("cpu.time")
            if None in (state, vcpus, memory, maximum) or (state != _SHUTOFF and cpu is None):
                info = dom.info()
                state = info[0] if state is None else state
                maximum = info[1] if maximum is None else maximum
                memory = info[2] if memory is None else memory
                vcpus = info[3] if vcpus is None else vcpus
                cpu = info[4] if cpu is None else cpu
            row = {
                "name": dom.name(),
                "uuid": dom.UUIDString(),
                "state": DOMAIN_STATES.get(state, "unknown"),
                "vcpus": int(vcpus),
                "memory_kib": int(memory),
                "max_memory_kib": int(maximum),
            }
        except Exception:  # noqa: BLE001, S112 (libvirtError: undefined meanwhile, not listed)
            continue
        counters = None
        if state != _SHUTOFF:
            counters = _Counters(
                now,
                int(cpu),
                _total(stats, "block", "rd.bytes"),
                _total(stats, "block", "wr.bytes"),
                _total(stats, "net", "rx.bytes"),
                _total(stats, "net", "tx.bytes"),
            )
        found.append((row, counters))
    return found


def _rates(row: dict[str, Any], before: _Counters | None, after: _Counters | None) -> None:
    keys = ("cpu_percent", "disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps")
    if before is None or after is None or after.at <= before.at:
        row.update(dict.fromkeys(keys))
        return
    seconds = after.at - before.at

    def rate(later: int, earlier: int) -> float:
        return round(max(later - earlier, 0) / seconds, 1)

    share = (after.cpu_ns - before.cpu_ns) / (seconds * 1e9 * max(row["vcpus"], 1)) * 100
    row.update(
        cpu_percent=round(min(max(share, 0.0), 100.0), 1),
        disk_read_bps=rate(after.disk_read, before.disk_read),
        disk_write_bps=rate(after.disk_write, before.disk_write),
        net_rx_bps=rate(after.net_rx, before.net_rx),
        net_tx_bps=rate(after.net_tx, before.net_tx),
    )


class VmUsage:
    """The sampler: `watching()` while someone watches, `next_sample(after)` to wait for one."""

    def __init__(self, hv: LibvirtConnection, *, interval: float = 1.0) -> None:
        self.hv = hv
        self.interval = interval
        self.watchers = 0
        self.samples_taken = 0  # for tests and /metrics: sampling happens only when watched
        self._lock = trio.Lock()
        self._seq = 0
        self._at = -float("inf")
        self._rows: list[dict[str, Any]] = []
        self._counters: dict[str, _Counters] = {}

    @contextmanager
    def watching(self) -> Iterator[None]:
        self.watchers += 1
        try:
            yield
        finally:
            self.watchers -= 1
            if not self.watchers:
                self._counters.clear()  # rates start afresh for the next watcher

    async def next_sample(self, after: int) -> tuple[int, list[dict[str, Any]]]:
        """The first sample newer than `after` (its number, its rows), taken when due."""
        async with self._lock:
            if self._seq <= after:
                due = self._at + self.interval - trio.current_time()
                if due > 0 and self._seq > 0:
                    await trio.sleep(due)
                await self._take()
            return self._seq, self._rows

    async def _take(self) -> None:
        found = await self.hv.call(_read_all)
        rows = []
        counters = {}
        for row, now in found:
            _rates(row, self._counters.get(row["uuid"]), now)
            if now is not None:
                counters[row["uuid"]] = now
            rows.append(row)
        self._counters = counters
        self._rows = rows
        self._at = trio.current_time()
        self._seq += 1
        self.samples_taken += 1
