"""Health.report: a check that raises is reported unhealthy with its reason and
logged with context, once per change of state."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from agent.core.health import Health, Status


class FlakyCheck:
    """A check whose next answer the test sets: an exception to raise, or a status."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    async def __call__(self) -> tuple[Status, str, dict[str, Any]]:
        if self.failure is not None:
            raise self.failure
        return "healthy", "fine", {"figure": 1}


async def test_a_failing_check_is_reported_unhealthy_and_logged_once_per_change() -> None:
    health = Health()
    check = FlakyCheck()
    health.add("disk", check)
    health.add("other", FlakyCheck())

    with capture_logs() as logs:
        check.failure = OSError("EIO on statvfs")
        for _ in range(3):
            report = await health.report()
            assert report["status"] == "unhealthy"
            assert report["components"]["disk"] == {
                "status": "unhealthy",
                "reason": "check failed: EIO on statvfs",
            }
            assert report["components"]["other"]["status"] == "healthy"
        check.failure = OSError("ENOSPC")  # a different failure is a change of state
        await health.report()
        check.failure = None
        recovered = await health.report()
        await health.report()

    assert recovered["status"] == "healthy"
    assert recovered["components"]["disk"] == {"status": "healthy", "reason": "fine", "figure": 1}
    events = [(e["event"], e["component"], e.get("error"), e.get("reason")) for e in logs]
    assert events == [
        ("health.check_failed", "disk", "OSError", "check failed: EIO on statvfs"),
        ("health.check_failed", "disk", "OSError", "check failed: ENOSPC"),
        ("health.check_recovered", "disk", None, None),
    ]
    assert logs[0]["log_level"] == "error"
    assert isinstance(logs[0]["exc_info"], OSError)
