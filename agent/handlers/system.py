"""system.*: echo, sleep (for timeouts and cancellation), host facts."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import time
from dataclasses import replace
from typing import Any

import trio
from pydantic import BaseModel, ConfigDict, Field

from agent.core.context import JobContext
from agent.core.registry import handler


class EchoPayload(BaseModel):
    # Echo returns whatever it was given, as existing clients expect.
    model_config = ConfigDict(extra="allow", defer_build=True)


@handler("system.echo", payload=EchoPayload, rerun_safe=True)
async def echo(payload: EchoPayload, ctx: JobContext) -> dict[str, Any]:
    """Return the payload data unchanged."""
    return payload.model_dump()


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    seconds: float = Field(ge=0, le=7 * 24 * 3600)
    child_process: bool = Field(
        default=False,
        description="Sleep in a child process (`sleep`), to test that "
        "timeouts and cancellation stop processes a handler started",
    )


@handler("system.sleep", payload=SleepPayload, rerun_safe=True)
async def sleep(payload: SleepPayload, ctx: JobContext) -> dict[str, Any]:
    """Sleep N seconds, reporting progress each second."""
    started = trio.current_time()

    async def report_each_second() -> None:
        while (elapsed := trio.current_time() - started) < payload.seconds:
            await ctx.progress(
                100 * elapsed / payload.seconds if payload.seconds else 100,
                elapsed_seconds=round(elapsed, 3),
            )
            await trio.sleep(min(1.0, payload.seconds - elapsed))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_each_second)
        if payload.child_process:
            await ctx.run_process(["sleep", f"{abs(payload.seconds):f}"])
        else:
            await trio.sleep(payload.seconds)
        nursery.cancel_scope.cancel()
    await ctx.progress(100)
    return {"slept_seconds": round(trio.current_time() - started, 3)}


class InfoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


def _meminfo() -> dict[str, int]:
    facts: dict[str, int] = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "SwapTotal"):
                facts[key] = int(rest.split()[0]) * 1024
    return facts


def _disks() -> list[dict[str, Any]]:
    disks = []
    seen: set[int] = set()
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, mountpoint, fstype = line.split()[:3]
            if not device.startswith("/dev/"):
                continue
            try:
                dev = os.stat(mountpoint).st_dev
                usage = shutil.disk_usage(mountpoint)
            except OSError:
                continue
            if dev in seen:
                continue
            seen.add(dev)
            disks.append(
                {
                    "device": device,
                    "mountpoint": mountpoint,
                    "fstype": fstype,
                    "total_bytes": usage.total,
                    "free_bytes": usage.free,
                }
            )
    return disks


def host_facts() -> dict[str, Any]:
    """Facts about this host; blocking (reads /proc), so call it in a thread."""
    memory = _meminfo()
    with open("/proc/uptime") as uptime:
        uptime_seconds = float(uptime.read().split()[0])
    os_release: dict[str, str] = {}
    with contextlib.suppress(OSError):  # not every system has one; kernel facts still stand
        os_release = platform.freedesktop_os_release()
    return {
        "hostname": socket.gethostname(),
        "os": os_release.get("PRETTY_NAME", platform.system()),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_total_bytes": memory.get("MemTotal"),
        "memory_available_bytes": memory.get("MemAvailable"),
        "disks": _disks(),
        "uptime_seconds": uptime_seconds,
        "load_average": list(os.getloadavg()),
        "boot_time": time.time() - uptime_seconds,
    }


@handler("system.info", payload=InfoPayload, rerun_safe=True)
async def info(payload: InfoPayload, ctx: JobContext) -> dict[str, Any]:
    """Host facts: hostname, OS, kernel, arch, CPUs, memory, disks, uptime, load."""
    return await trio.to_thread.run_sync(host_facts)


# The guestkit worker advertises both names; clients use either.
test_echo = replace(echo, operation="test.echo")

HANDLERS = (echo, test_echo, sleep, info)
