"""The settings: TOML file, then HOSTAGENT_* environment, then flags; errors name the key.

agent.config knows no transport; the composition root (agent.service.settings) puts
the core and each transport's section together, a transport from outside the
shipped table included."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

from agent.cli.command import main
from agent.config import Config, Section, load_config
from agent.errors import ConfigError
from agent.service.settings import Settings, load_settings, settings_model
from agent.transports import TRANSPORTS
from agent.transports.base import TransportSpec


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
    config = load_settings(path, environ=environ, overrides={"max_concurrent_jobs": 7})
    assert config.max_concurrent_jobs == 7  # flag over file
    assert config.log_level == "warning"  # environment over file
    assert config.spool.max_file_bytes == 20  # nested key from the environment
    assert config.spool.settle_seconds == 1.5  # file over default
    assert config.labels == {"rack": "r12"}


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        ("max_concurrent_jobs = 0\n", {}, "max_concurrent_jobs"),
        ("[spool]\nmax_file_bytes = 'big'\n", {}, "spool.max_file_bytes"),
        ("surprise = 1\n", {}, "surprise"),
        ("[http]\nbnid = '127.0.0.1:1'\n", {}, "http.bnid"),
        ("", {"HOSTAGENT_KAFKA__PARTITIONS": "0"}, "kafka.partitions"),
        ("", {"HOSTAGENT_LOG_FORMAT": "xml"}, "log_format"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    assert caught.value.details["field"] == key
    assert caught.value.message.startswith(f"config: {key}: ")


def test_an_unknown_key_is_named_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[spool]\nsettle = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.message == "config: spool.settle: Extra inputs are not permitted"
    assert caught.value.details["reason"] == "Unknown key"


def test_the_core_model_alone_knows_no_transport_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("max_pending_jobs = 5\n[http]\nenabled = false\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, model=Config, environ={})
    assert caught.value.details["field"] == "http"
    path.write_text("max_pending_jobs = 5\n")
    assert load_config(path, model=Config, environ={}).max_pending_jobs == 5


class ListConfig(Section):
    """A transport's own section, declared outside the shipped table."""

    url: str = "file:///dev/null"
    batch: int = 10


def _no_transport(settings: ListConfig, services: object) -> None:
    return None


LIST = TransportSpec("list", ListConfig, _no_transport)


def test_a_transport_outside_the_table_brings_its_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[list]\nurl = 'https://example.invalid/'\n[http]\nenabled = false\n")
    environ = {"HOSTAGENT_LIST__BATCH": "25"}
    settings = load_settings(path, transports=(*TRANSPORTS, LIST), environ=environ)
    assert isinstance(settings, Settings)
    assert settings.http.enabled is False  # the shipped sections are still there
    section = getattr(settings, "list")  # noqa: B009 (declared at run time)
    assert section == ListConfig(url="https://example.invalid/", batch=25)
    assert load_settings(None, transports=(LIST,), environ={}).list == ListConfig()  # type: ignore[attr-defined]
    # Without the transport in the table its section is a mistake, named as such.
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    assert caught.value.details == {"field": "list", "reason": "Unknown key"}
    path.write_text("[list]\nbatch = 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, transports=(LIST,), environ={})
    assert caught.value.details["field"] == "list.batch"


def test_a_transport_may_not_take_a_core_settings_name() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_model((TransportSpec("libvirt", ListConfig, _no_transport),))
    assert caught.value.details["field"] == "libvirt"


def test_the_settings_declare_each_shipped_transports_section() -> None:
    declared = {name: Settings.model_fields[name].annotation for name in ("spool", "http", "kafka")}
    assert declared == {spec.name: spec.settings for spec in TRANSPORTS}
    assert settings_model(TRANSPORTS) is Settings  # nothing to add: mypy sees every section


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
        load_settings(tmp_path / "nope.toml", environ={})


def test_the_core_config_is_a_leaf() -> None:
    """agent/config.py imports nothing of the agent but its errors (no transport)."""
    source = Path(__file__).resolve().parents[2] / "agent" / "config.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert {name for name in imported if name.split(".")[0] == "agent"} == {"agent.errors"}
