"""agent.core.withheld: what the store, events and results see of a secret."""

from __future__ import annotations

from agent.core.withheld import REDACTED, WITHHELD_LABEL, redact, withhold


def test_equal_values_and_occurrences_in_text_are_redacted() -> None:
    value = {"a": "hunter22", "b": ["x hunter22 y", 5], "c": {"n": 1234}, "d": True}
    assert redact(value, ["hunter22", 1234]) == {
        "a": REDACTED,
        "b": [f"x {REDACTED} y", 5],
        "c": {"n": REDACTED},
        "d": True,
    }


def test_a_short_secret_is_redacted_only_where_it_is_the_whole_value() -> None:
    assert redact({"s": "ab", "t": "Completed abc"}, ["ab"]) == {
        "s": REDACTED,
        "t": "Completed abc",
    }
    assert redact({"one": 1, "yes": True}, [True]) == {"one": 1, "yes": REDACTED}  # 1 is no True


def test_withhold_labels_the_record_and_keeps_the_payload_in_memory() -> None:
    document = {"payload": {"type": "x.y.v1", "data": {"p": "s3cret!"}}, "labels": {"a": "b"}}
    stored, held = withhold(document, ["s3cret!"])
    assert stored["payload"]["data"] == {"p": REDACTED}
    assert stored["labels"] == {"a": "b", WITHHELD_LABEL: "true"}
    assert held.data == {"p": "s3cret!"}
    assert document["payload"]["data"] == {"p": "s3cret!"}  # the caller's copy untouched
