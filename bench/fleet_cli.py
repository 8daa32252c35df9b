"""The fleet commands on a real broker, each a fresh `hostagent` process as a user runs it:

- `submit --host H --wait --wait-timeout T` for a host in the map whose agent is
  stopped: wall time of each of --tries runs (target: every one <= T + 1 s, exit 4);
- a `--broadcast --wait` whose selector matches only a stale host: time to its
  refusal (exit 69; nothing is sent);
- `fleet jobs --since 1h` over --jobs jobs x --hosts hosts x 3 events (accepted,
  running, completed) written as agents write them: wall, CPU and peak RSS.

Usage: python bench/fleet_cli.py [--tries 10] [--wait-timeout 5] [--jobs 10000] [--hosts 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would come first on the path and shadow standard modules.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from agent.transports.kafka.events import event_value  # noqa: E402
from agent.transports.kafka.topics import Topics  # noqa: E402
from tests.kafka_broker import Cluster  # noqa: E402

PREFIX = "bench"


def hostagent(*args: str) -> tuple[int, float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False
    )
    return done.returncode, time.monotonic() - started, done.stderr


def seed(bootstrap: str, jobs: int, hosts: int) -> int:
    """A stale host 'gone' in the map, and the events of `jobs` broadcast jobs."""
    topics = Topics(PREFIX)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [topics.events, topics.capabilities, topics.heartbeats, topics.host("gone")]
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=6, replication_factor=1) for name in wanted]
    ).values():
        future.result()
    time.sleep(2)  # leaders elected
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    record = {"worker_id": "gone", "labels": {"rack": "r9"}, "pools": [],
              "operations": ["system.echo"], "features": ["kafka"]}  # fmt: skip
    beat = {"worker_id": "gone", "interval_seconds": 10,
            "at": (datetime.now(UTC) - timedelta(seconds=45)).isoformat()}  # fmt: skip
    producer.produce(topics.capabilities, key="gone", value=json.dumps(record).encode())
    producer.produce(topics.heartbeats, key="gone", value=json.dumps(beat).encode())
    count = 0
    steps = (("accepted", "Pending", {"origin": f"{topics.broadcast}/0/1"}),
             ("running", "Running", {}), ("completed", "Completed", {"result": {}}))  # fmt: skip
    for job in range(jobs):
        job_id = f"job-{job}"
        for host in range(hosts):
            worker = f"host-{(job + host) % 1000:04d}"
            for seq, (kind, status, data) in enumerate(steps):
                value = event_value(type=kind, worker_id=worker, job_id=job_id, status=status,  # type: ignore[arg-type]
                                    data=data, event_id=f"{worker}:{job * 3 + seq}",
                                    operation="system.echo")  # fmt: skip
                while True:
                    try:
                        producer.produce(topics.events, key=job_id, value=value)
                        break
                    except BufferError:
                        producer.poll(0.1)
                count += 1
    producer.flush(60)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--wait-timeout", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster.create(Path(tmp) / "kafka", 1)
        cluster.start()
        try:
            connect = ["--topic-prefix", PREFIX]
            events = seed(cluster.bootstrap, args.jobs, args.hosts)
            timeout = args.wait_timeout
            took, codes = [], set()
            for _ in range(args.tries):
                code, seconds, _err = hostagent(
                    "submit", "--kafka", cluster.bootstrap, *connect, "--host", "gone",
                    "--op", "system.echo", "--wait", "--wait-timeout", str(timeout),
                )  # fmt: skip
                took.append(seconds)
                codes.add(code)
            met = "MET" if max(took) <= timeout + 1 and codes == {4} else "MISSED"
            print(f"wait on a stopped host, --wait-timeout {timeout:g}: "
                  f"{', '.join(f'{s:.2f}' for s in took)} s, exit {sorted(codes)} "
                  f"(every one <= {timeout + 1:g} s with exit 4: {met})")  # fmt: skip
            code, seconds, _err = hostagent(
                "submit", "--kafka", cluster.bootstrap, *connect, "--broadcast",
                "--selector", "rack=r9", "--op", "system.echo", "--wait",
            )  # fmt: skip
            print(f"broadcast matching only a stale host: exit {code} after {seconds:.2f} s "
                  f"(exit 69 before any wait: {'MET' if code == 69 else 'MISSED'})")  # fmt: skip
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            code, seconds, err = hostagent(
                "fleet", "jobs", "--bootstrap", cluster.bootstrap, *connect, "--limit", "5"
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            print(f"fleet jobs over {events:,} events ({args.jobs:,} jobs x {args.hosts} hosts): "
                  f"exit {code}, {seconds:.2f} s wall, {cpu:.2f} s CPU, "
                  f"peak RSS of the bench's children {after.ru_maxrss / 1024:.0f} MiB; "
                  f"{err.strip()}")  # fmt: skip
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
