"""The one config: TOML file, then HOSTAGENT_* environment, then flags; errors name the key."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from agent.cli.command import main
from agent.config import load_config
from agent.errors import ConfigError
from agent.transports.spool.settings import SpoolConfig


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'max_concurrent_jobs = 3\nlog_level = "debug"\n[spool]\nmax_file_bytes = 10\n'
        "settle_seconds = 1.5\n"
    )
    environ = {
        "HOSTAGENT_LOG_LEVEL": "warning",
        "HOSTAGENT_SPOOL__MAX_FILE_BYTES": "20",
        "HOSTAGENT_LABELS": '{"rack": "r12"}',
        "UNRELATED": "x",
    }
    config = load_config(path, environ=environ, overrides={"max_concurrent_jobs": 7})
    assert config.max_concurrent_jobs == 7  # flag over file
    assert config.log_level == "warning"  # environment over file
    assert config.section(SpoolConfig).max_file_bytes == 20  # nested key from the environment
    assert config.section(SpoolConfig).settle_seconds == 1.5  # file over default
    assert config.labels == {"rack": "r12"}


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        ("max_concurrent_jobs = 0\n", {}, "max_concurrent_jobs"),
        ("[spool]\nmax_file_bytes = 'big'\n", {}, "spool.max_file_bytes"),
        ("surprise = 1\n", {}, "surprise"),
        ("", {"HOSTAGENT_LOG_FORMAT": "xml"}, "log_format"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    assert caught.value.details["field"] == key
    assert caught.value.message.startswith(f"config: {key}: ")


def test_run_with_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[spool]\nsettle_seconds = -1\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "config: spool.settle_seconds" in capsys.readouterr().err
    assert gc.isenabled()  # `run` turned the collector off for its start-up only


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
