"""`hostagent health` (the human view) says why a component is not healthy."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.commands import health_summary
from agent.core.health import Health, Status


async def test_the_health_view_shows_each_components_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    health = Health()

    async def store() -> tuple[Status, str, dict[str, Any]]:
        return "healthy", "", {"pending": 0}

    async def libvirt() -> tuple[Status, str, dict[str, Any]]:
        return "degraded", "round trip took 900 ms", {}

    async def broken() -> tuple[Status, str, dict[str, Any]]:
        raise OSError("no descriptors left")

    health.add("store", store)
    health.add("libvirt", libvirt)
    health.add("spool", broken)
    report = await health.report()
    capsys.readouterr()  # the failing check's log line
    health_summary(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "status: unhealthy"
    assert "round trip took 900 ms" in next(line for line in lines if "libvirt" in line)
    assert "no descriptors left" in next(line for line in lines if "spool" in line)
    assert next(line for line in lines if "store" in line).split() == ["store", "healthy"]
