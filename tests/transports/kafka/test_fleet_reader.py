"""The fleet map's reader without a broker: how a record is kept, and what `hostagent
fleet` loads to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.transports.kafka.cli import load_kafka_config
from agent.transports.kafka.fleet import _RecordDecoder


def record(worker_id: str, **extra: object) -> bytes:
    document = {
        "worker_id": worker_id,
        "labels": {"rack": "r1"},
        "pools": ["p1"],
        "operations": ["system.echo", "vm.start"],
        "operation_schemas": {"system.echo": {"type": "object"}},
        **extra,
    }
    return json.dumps(document).encode()


def test_hosts_alike_share_one_copy_of_their_lists_of_names() -> None:
    decode = _RecordDecoder(keep_record=True, keep_schemas=True)
    one, two = decode(record("a")), decode(record("b"))
    assert one.operations == ["system.echo", "vm.start"]
    assert one.operations is two.operations
    assert one.pools is two.pools
    # A list of objects is kept as it is (nothing to share, and no failure).
    odd = decode(record("c", features=[{"name": "kafka"}]))
    assert odd.features == [{"name": "kafka"}]


def test_a_listing_keeps_each_hosts_fields_without_its_record() -> None:
    listing = _RecordDecoder(keep_record=False, keep_schemas=False)(record("a"))
    assert listing.capabilities == {}
    assert listing.schemas is None
    assert (listing.labels, listing.pools) == ({"rack": "r1"}, ["p1"])
    # With schemas asked for, an old record's inline schemas stay.
    inline = _RecordDecoder(keep_record=False, keep_schemas=True)(record("a"))
    assert inline.schemas == {"system.echo": {"type": "object"}}
    # A record that is JSON but no object is a host with nothing known.
    assert _RecordDecoder(keep_record=True, keep_schemas=True)(b"[1]").operations == []


def test_fleet_reads_only_the_kafka_section_of_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    # Another section the daemon would refuse does not stop a fleet read.
    config.write_text(
        '[kafka]\nbootstrap_servers = "b1:9092"\ntopic_prefix = "ops"\n[http]\nbind = 12\n'
    )
    kafka = load_kafka_config(config)
    assert (kafka.bootstrap_servers, kafka.topic_prefix) == ("b1:9092", "ops")
    monkeypatch.setenv("HOSTAGENT_KAFKA__TOPIC_PREFIX", "from-env")
    assert load_kafka_config(config).topic_prefix == "from-env"
    config.write_text("[kafka]\nno_such_key = 1\n")
    with pytest.raises(ConfigError) as refused:
        load_kafka_config(config)
    assert "kafka.no_such_key" in str(refused.value)


@pytest.mark.slow
def test_hostagent_fleet_loads_no_daemon_trio_or_libvirt(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from agent.cli.command import main\n"
        "code = main(['fleet', '--bootstrap', '127.0.0.1:1', '--timeout', '0.5', '--json'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'libvirt', 'quart', 'hypercorn') or m.startswith(('agent.core', "
        "'agent.service', 'agent.handlers', 'agent.hypervisor', 'agent.transports.http')))\n"
        "print(code, loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    code, loaded = done.stdout.splitlines()[-1].split(" ", 1)
    assert code != "0"  # no broker there: the command failed, having loaded what it uses
    assert loaded.strip() == "[]"
