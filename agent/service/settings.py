"""The agent's full settings, composed here: the core (agent.config) and each
transport's own section, loaded from one file and one environment.

agent.config knows no transport; each transport declares its `Section`
(agent.transports.*.settings). `Settings` declares the shipped ones, so the
type checker sees `settings.http`; a transport handed to the agent beside them
brings its section through `settings_model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from pydantic import Field

from agent.config import Config, Section, load_config
from agent.errors import ConfigError
from agent.transports import TRANSPORTS, TransportSpec
from agent.transports.http.settings import HttpConfig
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.spool.settings import SpoolConfig

SettingsT = TypeVar("SettingsT", bound="Settings")


class Settings(Config):
    """Everything agent.toml holds: the core settings and a section per shipped transport."""

    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)


def settings_model(transports: Iterable[TransportSpec[Any]] = TRANSPORTS) -> type[Settings]:
    """`Settings` with the section of each transport in `transports` it lacks.

    A transport named like a shipped one with another model replaces that
    section; one named like a core setting is refused.
    """
    return _model(tuple((spec.name, spec.settings) for spec in transports))


@cache
def _model(sections: tuple[tuple[str, type[Section] | None], ...]) -> type[Settings]:
    added: dict[str, Any] = {}
    for name, model in sections:
        if model is None:
            continue
        if name in Config.model_fields:
            raise ConfigError(
                f"transport {name}: its section would hide the core setting {name}",
                field=name,
                reason="A transport's name is its section's: it must not be a core setting",
            )
        declared = Settings.model_fields.get(name)
        if declared is None or declared.annotation is not model:
            added[name] = (model, Field(default_factory=model))
    if not added:
        return Settings
    return pydantic.create_model("Settings", __base__=Settings, **added)


def as_settings(config: Config, model: type[SettingsT]) -> SettingsT:
    """`config` as `model`: its values kept, the sections it lacks at their defaults.

    (A core `Config`, as tests build one, becomes the full settings this way.)
    """
    if type(config) is model:
        return config
    given = {name: getattr(config, name) for name in type(config).model_fields}
    return model.model_validate(
        {name: value for name, value in given.items() if name in model.model_fields}
    )


def section_of(settings: Config, spec: TransportSpec[Any]) -> Section:
    """The transport's own section of `settings` (an empty one when it has no settings)."""
    if spec.settings is None:
        return Section()
    model: type[Section] = spec.settings
    found = getattr(settings, spec.name, None)
    if not isinstance(found, model):
        raise ConfigError(f"config: no [{spec.name}] section", field=spec.name)
    return found


def load_settings(
    path: Path | None = None,
    *,
    transports: Iterable[TransportSpec[Any]] = TRANSPORTS,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings for an agent with `transports`, from file, environment and flags
    (see agent.config.load_config); ConfigError names the key on anything wrong."""
    model = settings_model(transports)
    return load_config(path, model=model, environ=environ, overrides=overrides)
