"""This host's own figures, read from /proc and statvfs: CPU busy share over a
window, load, memory and the filesystems the agent writes to."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

import trio

from agent.view.models import DirectoryUsage, HostStats, Memory

PROC = Path("/proc")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    fields = [int(value) for value in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return total - idle, total


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return round(100.0 * busy / total, 2) if total > 0 else 0.0


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def memory() -> Memory:
    info = meminfo()
    total = info["MemTotal"]
    available = info.get("MemAvailable", info.get("MemFree", 0))
    return Memory(
        total_bytes=total,
        available_bytes=available,
        used_bytes=total - available,
        percent=round(100.0 * (total - available) / total, 2) if total else 0.0,
        swap_total_bytes=info.get("SwapTotal", 0),
        swap_free_bytes=info.get("SwapFree", 0),
    )


def directory_usage(role: str, path: Path) -> DirectoryUsage | None:
    """Usage of the filesystem holding `path` (None if it does not exist yet)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DirectoryUsage(
        role=role,  # type: ignore[arg-type]  # callers pass one of the roles
        path=str(path),
        total_bytes=usage.total,
        used_bytes=usage.used,
        free_bytes=usage.free,
        percent=round(100.0 * usage.used / usage.total, 2) if usage.total else 0.0,
    )


async def measure(window: float, directories: Iterable[tuple[str, Path]]) -> HostStats:
    """CPU share over `window` seconds, and load, memory and disk usage at its end."""
    before = await trio.to_thread.run_sync(cpu_times)
    await trio.sleep(window)
    after = await trio.to_thread.run_sync(cpu_times)

    def rest() -> tuple[Memory, list[DirectoryUsage]]:
        seen: set[str] = set()
        disks = []
        for role, path in directories:
            found = directory_usage(role, path) if str(path) not in seen else None
            seen.add(str(path))
            if found is not None:
                disks.append(found)
        return memory(), disks

    mem, disks = await trio.to_thread.run_sync(rest)
    return HostStats(
        window_seconds=window,
        cpus=os.cpu_count() or 1,
        cpu_percent=cpu_percent(before, after),
        load_average=[round(value, 2) for value in os.getloadavg()],
        memory=mem,
        disks=disks,
    )


def static_facts() -> dict[str, object]:
    """What /proc and uname say about the machine (blocking: reads small files)."""
    cpu_model, mhz = None, None
    for line in (PROC / "cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and cpu_model is None:
            cpu_model = value
        elif key == "cpu MHz" and mhz is None:
            mhz = round(float(value))
    os_name = None
    os_release = Path("/etc/os-release")
    if os_release.exists():
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.partition("=")[2].strip().strip('"')
    return {
        "hostname": socket.gethostname(),
        "os": os_name,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count() or 1,
        "cpu_mhz": mhz,
        "memory_bytes": meminfo()["MemTotal"],
        "uptime_seconds": float((PROC / "uptime").read_text().split()[0]),
    }
