"""Invalid runbook.run documents for the property tests: a valid base runbook and
parameter set, broken one way each (wrong types, unknown operations, paths outside
the image roots, bad substitutions, unknown schema versions, broken fields)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.jobs import job

_ids = itertools.count()


def base_runbook(images: Path) -> dict[str, Any]:
    """A runbook every check accepts (tests/runbooks/test_fuzz_intake.py proves it)."""
    return {
        "schema_version": 1,
        "name": "fuzz",
        "version": 1,
        "parameters": {
            "size": {"type": "integer", "min": 1, "max": 100},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "label": {"type": "string", "pattern": "[a-z]+"},
            "flag": {"type": "boolean", "default": False},
        },
        "steps": [
            {"name": "one", "operation": "system.echo", "payload": {"s": {"$param": "size"}}},
            {
                "name": "two",
                "operation": "image.create",
                "payload": {"path": str(images / "new.qcow2"), "size_bytes": 1048576},
            },
            {
                "name": "three",
                "operation": "system.sleep",
                "payload": {"seconds": 0},
                "when": {"equals": [{"$step": "one.status"}, "Completed"]},
            },
        ],
    }


# The agents of the property tests allow every caller only these operations.
ALLOW_ONLY = [{"operations": ["system.*", "image.*", "runbook.run"]}]
BASE_PARAMETERS: dict[str, Any] = {"size": 5, "mode": "a", "label": "ok"}
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)
_NOT_INT = _JSON.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool)))
_OUTSIDE = st.sampled_from(
    ["/etc/passwd", "/tmp/x.qcow2", "relative.qcow2", "/var/lib/hostagent/x.img", "/"]
) | st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=20).map(
    lambda tail: "/nowhere/" + tail
)
_OPERATIONS = st.from_regex(r"\A[a-z]{1,8}\.[a-z]{1,8}\Z").filter(
    lambda op: (
        not op.startswith(
            ("system.", "test.", "vm.", "image.", "storage.", "network.", "guestkit.")
        )
    )
) | st.sampled_from(["runbook.run", "nodots", "Vm.Start", "vm..start", ""])


def _set(document: dict[str, Any], path: list[Any], value: Any) -> None:
    target: Any = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


@st.composite
def invalid_case(draw: st.DrawFn, images: Path) -> tuple[str, dict[str, Any]]:  # noqa: PLR0912 (a branch per kind of breakage, read as a list)
    """(what was broken, the runbook.run job document)."""
    runbook = copy.deepcopy(base_runbook(images))
    params = dict(BASE_PARAMETERS)
    kind = draw(
        st.sampled_from(
            [
                "param-type",
                "param-range",
                "param-enum",
                "param-pattern",
                "param-unknown",
                "param-missing",
                "schema-version",
                "operation",
                "path",
                "substitution",
                "step-field",
                "step-payload",
                "document-field",
                "installed",
                "allowlist",
            ]
        )
    )
    data: dict[str, Any] = {"runbook": runbook}
    if kind == "param-type":
        name = draw(st.sampled_from(["size", "mode", "label", "flag"]))
        wrong = {
            "size": _NOT_INT,
            "mode": _JSON.filter(lambda v: not isinstance(v, str)),
            "label": _JSON.filter(lambda v: not isinstance(v, str)),
            "flag": _JSON.filter(lambda v: not isinstance(v, bool)),
        }[name]
        params[name] = draw(wrong)
    elif kind == "param-range":
        params["size"] = draw(st.integers(max_value=0) | st.integers(min_value=101))
    elif kind == "param-enum":
        params["mode"] = draw(st.text(max_size=6).filter(lambda v: v not in ("a", "b")))
    elif kind == "param-pattern":
        params["label"] = draw(
            st.text(max_size=8).filter(
                lambda v: not v.isascii() or not v.isalpha() or not v.islower()
            )
        )
    elif kind == "param-unknown":
        params[
            draw(
                st.from_regex(r"\A[a-z_]{1,10}\Z").filter(lambda n: n not in runbook["parameters"])
            )
        ] = 1
    elif kind == "param-missing":
        del params[draw(st.sampled_from(["size", "mode", "label"]))]
    elif kind == "schema-version":
        runbook["schema_version"] = draw(
            _JSON.filter(lambda v: v != 1 or isinstance(v, bool | float))
        )
    elif kind == "operation":
        runbook["steps"][draw(st.integers(0, 2))]["operation"] = draw(_OPERATIONS)
    elif kind == "path":
        runbook["steps"][1]["payload"]["path"] = draw(_OUTSIDE)
    elif kind == "substitution":
        ref = draw(
            st.sampled_from(
                [
                    {"$param": "nope"},
                    {"$step": "three.result"},  # a later step
                    {"$step": "one.result"},  # itself: not an earlier step
                    {"$step": "ghost.status"},
                    {"$step": "one"},
                    {"$step": "one.bogus.x"},
                    {"$bogus": "size"},
                    {"$param": "size", "extra": 1},
                    {"$fact": "password"},
                    {"$param": 5},
                ]
            )
        )
        if ref == {"$param": 5}:
            ref = {"$param": 5, "$x": 1}
        runbook["steps"][0]["payload"]["s"] = ref
    elif kind == "step-field":
        index = draw(st.integers(0, 2))
        field, value = draw(
            st.sampled_from(
                [
                    ("max_attempts", 0),
                    ("max_attempts", 11),
                    ("max_attempts", "2"),
                    ("on_failure", "maybe"),
                    ("timeout_seconds", -1),
                    ("name", "Upper"),
                    ("name", "two" if index != 1 else "one"),  # a duplicate
                    ("when", {"maybe": True}),
                    ("when", "yes"),
                    ("outputs", {"x": "status"}),
                    ("surprise", 1),
                ]
            )
        )
        runbook["steps"][index][field] = value
    elif kind == "step-payload":
        step, field, value = draw(
            st.sampled_from(
                [
                    (2, "seconds", -1),
                    (2, "secs", 1),
                    (2, "seconds", "soon"),
                    (1, "size_bytes", 0),
                    (1, "format", "vmdk-ish"),
                    (1, "path", 42),
                ]
            )
        )
        runbook["steps"][step]["payload"][field] = value
    elif kind == "document-field":
        field, value = draw(
            st.sampled_from(
                [
                    ("name", "Bad Name"),
                    ("version", 0),
                    ("version", "1"),
                    ("steps", []),
                    ("parameters", {"x": {"type": "complex"}}),
                    ("parameters", {"x": {"type": "integer", "pattern": "a"}}),
                    ("parameters", {"x": {"type": "string", "default": 5}}),
                    ("extra", True),
                ]
            )
        )
        runbook[field] = value
    elif kind == "allowlist":  # ALLOW_ONLY lets every caller run only these
        operation, payload = draw(
            st.sampled_from(
                [
                    ("vm.destroy", {"name": "web-1"}),
                    ("storage.volume.wipe", {"pool": "default", "name": "v1"}),
                    ("network.delete", {"name": "n1"}),
                ]
            )
        )
        step = runbook["steps"][draw(st.integers(0, 2))]
        step["operation"], step["payload"] = operation, payload
    else:  # an installed runbook by name: unknown name, version, or a bad parameter
        data = draw(
            st.sampled_from(
                [
                    {"runbook": "no-such-runbook"},
                    {"runbook": "fuzz-installed", "version": 99},
                    {"runbook": "fuzz-installed", "parameters": {"size": "big"}},
                    {"runbook": "fuzz-installed", "parameters": {}},
                ]
            )
        )
    if kind != "installed":
        data["parameters"] = params
    return kind, job(f"fuzz-{next(_ids)}", "runbook.run", data)
