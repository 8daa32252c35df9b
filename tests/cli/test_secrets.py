"""`hostagent config show` prints no secret, from the file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.command import main

CONFIG = """
[kafka]
bootstrap_servers = "127.0.0.1:9"
sasl_password = "file-secret-7f3a"

[kafka.librdkafka]
"ssl.key.password" = "key-secret-91c2"
"client.id" = "shown-as-is"

[[http.tokens]]
name = "ci"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
scopes = ["read"]
"""


def test_config_show_hides_every_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "file-secret-7f3a" not in shown
    assert "key-secret-91c2" not in shown
    assert "0" * 64 not in shown
    assert "shown-as-is" in shown
    assert shown.count("<redacted>") == 3
    # The environment's value wins, and is hidden the same way.
    monkeypatch.setenv("HOSTAGENT_KAFKA__SASL_PASSWORD", "env-secret-55d0")
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "env-secret-55d0" not in shown
    assert "file-secret-7f3a" not in shown
