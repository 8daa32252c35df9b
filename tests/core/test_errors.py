"""The refusals that pass: one base, each kind its own class and contract code, and
every kind answered 503 with Retry-After."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.diskspace import storage_full
from agent.errors import (
    AgentError,
    DrainingError,
    QueueFullError,
    RefusedForNowError,
    StorageFullError,
    UnavailableError,
)
from agent.transports.http.envelope import error_answer

REFUSALS: list[tuple[RefusedForNowError, str]] = [
    (QueueFullError("The pending queue is full (1 jobs)", reason="queue full"), "queue full"),
    (
        storage_full(Path("/var/lib/hostagent"), free=0),
        "disk full: /var/lib/hostagent (0 bytes free)",
    ),
    (DrainingError(), "draining"),
]


@pytest.mark.parametrize(("refusal", "reason"), REFUSALS)
def test_each_refusal_for_now_answers_503_with_retry_after_and_its_reason(
    refusal: RefusedForNowError, reason: str
) -> None:
    answer = error_answer(refusal, retry_after=7)
    assert answer.status == 503
    assert dict(answer.headers)["Retry-After"] == "7"
    assert refusal.to_dict()["error"] == "QUEUE_FULL"  # the contract's one code for them
    assert refusal.details["reason"] == reason


def test_a_full_disk_and_a_drain_are_not_a_full_queue() -> None:
    full_disk, draining = storage_full(Path("/state")), DrainingError()
    assert not isinstance(full_disk, QueueFullError)
    assert not isinstance(draining, QueueFullError)
    assert isinstance(full_disk, RefusedForNowError)
    assert isinstance(draining, RefusedForNowError)
    for kind in (QueueFullError, StorageFullError, DrainingError):
        assert "code" in vars(kind), f"{kind.__name__} inherits its wire code"


def test_other_errors_carry_no_retry_after() -> None:
    for error in (UnavailableError("libvirt is down"), AgentError("boom")):
        assert "Retry-After" not in dict(error_answer(error, retry_after=7).headers)


def test_the_module_docstring_draws_every_error_class() -> None:
    import agent.errors

    drawn = agent.errors.__doc__ or ""
    for name, value in vars(agent.errors).items():
        if isinstance(value, type) and issubclass(value, AgentError):
            assert name in drawn, name
