"""Kafka end to end: 10,000 no-op jobs produced to a pool topic, until their
`completed` events are consumed, through one real broker to 1 and 3 agents.

Each agent is a real process (spool on, HTTP off, max_concurrent_jobs 2);
CPU seconds per agent come from /proc. Usage: python bench/kafka.py [--jobs N]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would come first on the path and its http.py would
# shadow the standard library's `http` package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from agent.transports.kafka import KafkaSettings  # noqa: E402
from agent.transports.kafka._client import EventWatcher, send_jobs  # noqa: E402
from agent.transports.kafka._topics import Topics  # noqa: E402
from tests.transports.kafka.fleetkit import echo, kafka_agent  # noqa: E402


def load_broker_script() -> object:
    loader = importlib.machinery.SourceFileLoader(
        "kafka_broker_script", str(ROOT / "scripts/kafka-broker")
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def run(bootstrap: str, home: Path, agents: int, jobs: int) -> None:
    prefix = f"bench{agents}"
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    procs = [
        kafka_agent(home, bootstrap, prefix, f"w{i}", pools=["bench"], max_concurrent=2)
        for i in range(agents)
    ]
    try:
        for proc in procs:
            proc.start()
        ids = [f"b{agents}-{i}" for i in range(jobs)]
        before = {proc.process.pid: cpu_seconds(proc.process.pid) for proc in procs if proc.process}
        with EventWatcher(settings) as watcher:
            began = time.monotonic()
            send_jobs(settings, Topics(prefix).pool("bench"), [echo(i) for i in ids], timeout=120)
            produced = time.monotonic() - began
            done = 0
            for event in watcher.until_done(ids, timeout=600):
                done += event["type"] == "completed"
            elapsed = time.monotonic() - began
        cpu = [cpu_seconds(pid) - start for pid, start in before.items()]
        print(
            f"kafka, {agents} agent(s): {jobs / elapsed:8.0f} jobs/s end to end "
            f"({done}/{jobs} completed in {elapsed:.1f} s; produce {produced:.1f} s); "
            f"agent CPU s: {', '.join(f'{c:.1f}' for c in cpu)}"
        )
    finally:
        for proc in procs:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    script = load_broker_script()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = script.Cluster.create(Path(tmp) / "kafka", 1)  # type: ignore[attr-defined]
        cluster.start()
        try:
            for agents in (1, 3):
                run(cluster.bootstrap, Path(tmp) / f"agents{agents}", agents, args.jobs)
        finally:
            cluster.stop()
    print("HTTP batch path on the same machine: python bench/http.py (its 'batch submits' line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
