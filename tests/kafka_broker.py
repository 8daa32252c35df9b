"""Real Kafka brokers for the tests, started by scripts/kafka-broker.

`kafka_broker`: one node for the whole session (its bootstrap string); tests
keep apart by using their own topic prefix (`kafka_prefix`).
`kafka_cluster`: a factory of private clusters (1 or 3 nodes) a test may kill
and restart, stopped when the test ends.
Import the fixtures into a conftest.py to use them.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka-broker"
_prefixes = itertools.count(1)


def _load_script() -> ModuleType:
    # The script has no .py suffix (it is a command): load it by path.
    loader = importlib.machinery.SourceFileLoader("kafka_broker_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is built.
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


broker_script = _load_script()
Cluster: Any = broker_script.Cluster


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap string of one real broker shared by the session."""
    cluster = Cluster.create(tmp_path_factory.mktemp("kafka"), 1)
    cluster.start()
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture
def kafka_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses on the shared broker."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"t{next(_prefixes)}-{request.node.name[:40]}")


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[Callable[[int], Any]]:
    """Start private clusters with `kafka_cluster(nodes)`; all are stopped at the end."""
    started: list[Any] = []

    def start(nodes: int = 1) -> Any:
        cluster = Cluster.create(tmp_path / f"kafka-{len(started)}", nodes)
        started.append(cluster)
        cluster.start()
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop()
