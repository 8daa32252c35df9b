"""etc/hostagent/agent.toml documents every option with its default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.service.settings import Settings, load_settings

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "hostagent" / "agent.toml"
# Defaults computed on the host (its name, its CPUs): the sample shows an example.
HOST_DEPENDENT = {"worker_id", "max_concurrent_jobs"}
# Options whose default is "unset" (TOML has no null): the sample shows an example.
UNSET_BY_DEFAULT = {"http.tls_cert", "http.tls_key", "http.tls_client_ca", "http.socket"}
_COMMENTED_OPTION = re.compile(r"^# ([a-z_]+ = .*)$")


def uncommented() -> str:
    """The sample with every commented-out option switched on."""
    return "\n".join(
        match.group(1) if (match := _COMMENTED_OPTION.match(line)) else line
        for line in SAMPLE.read_text().splitlines()
    )


def options(model: type[BaseModel], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= options(kind, f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "labels":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def test_the_sample_as_shipped_is_all_defaults() -> None:
    assert load_settings(SAMPLE, environ={}) == Settings()


def test_every_option_is_in_the_sample_with_its_default() -> None:
    documented = flatten(tomllib.loads(uncommented()))
    assert set(documented) == options(Settings)  # the core and each transport's section
    defaults = flatten(Settings().model_dump(mode="json"))
    for key, value in documented.items():
        if key not in HOST_DEPENDENT | UNSET_BY_DEFAULT:
            assert value == defaults[key], key
    Settings.model_validate(tomllib.loads(uncommented()))
