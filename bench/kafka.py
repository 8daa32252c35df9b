"""Kafka end to end: 10,000 no-op jobs produced to a pool topic, until their
`completed` events are consumed, through one real broker to 1 and 3 agents;
beside it the HTTP batch path end to end (POST /api/v1/jobs/batch of 500,
until the agent has run them all) on the same machine.

Each agent is a real process (max_concurrent_jobs 2); CPU seconds per agent
come from /proc. Usage: python bench/kafka.py [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would come first on the path and its http.py would
# shadow the standard library's `http` package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402
from confluent_kafka import KafkaException  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from agent.transports.http.auth import create_token  # noqa: E402
from agent.transports.kafka import KafkaConfig  # noqa: E402
from agent.transports.kafka.client import EventWatcher, send_jobs  # noqa: E402
from agent.transports.kafka.topics import Topics  # noqa: E402
from tests.kafka_broker import Cluster  # noqa: E402
from tests.transports.kafka.fleetkit import SIGNER, echo, kafka_toml  # noqa: E402


def http_end_to_end(home: Path, jobs: int, batch: int = 500) -> float:
    """jobs/s from the first POST until the agent ran every job (one connection)."""
    token, entry = create_token("bench", ["admin"])
    auth = {"Authorization": f"Bearer {token}"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([entry.model_dump()]),
        "HOSTAGENT_MAX_PENDING_JOBS": "1000000",
        "HOSTAGENT_MAX_CONCURRENT_JOBS": "2",
        "HOSTAGENT_LIBVIRT__URI": "test:///default",
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--state-dir", str(home / "state"),
         "--spool-dir", str(home / "spool"), "--http-bind", f"127.0.0.1:{port}",
         "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(headers=auth, timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
            start_cpu = cpu_seconds(agent.pid)
            began = time.monotonic()
            for first in range(0, jobs, batch):
                body = {"jobs": [echo(f"h-{n}") for n in range(first, min(first + batch, jobs))]}
                client.post(f"{url}/jobs/batch", json=body).raise_for_status()
            while True:
                store = client.get(f"{url}/health").json()["data"]["components"]["store"]
                if store["queue_depth"] == 0 and store["running"] == 0:
                    break
                time.sleep(0.02)
            elapsed = time.monotonic() - began
            cpu = cpu_seconds(agent.pid) - start_cpu
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    rate = jobs / elapsed
    print(f"http batch, 1 agent: {rate:8.0f} jobs/s end to end ({elapsed:.1f} s); "
          f"agent CPU s: {cpu:.1f}")  # fmt: skip
    return rate


def wait_for_group(settings: KafkaConfig, group: str, members: int) -> None:
    admin = AdminClient(settings.client_config())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except KafkaException:
            described = None
        if (
            described is not None
            and len(described.members) == members
            and all(member.assignment.topic_partitions for member in described.members)
        ):
            return
        time.sleep(0.2)
    raise SystemExit(f"group {group} did not settle with {members} members")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(bootstrap: str, home: Path, agents: int, jobs: int, profile: Path | None = None) -> float:
    prefix = f"bench{agents}"
    settings = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
    procs = []
    for i in range(agents):
        agent_home = home / f"w{i}"
        agent_home.mkdir(parents=True)
        (agent_home / "agent.toml").write_text(
            kafka_toml(
                bootstrap,
                prefix,
                worker_id=f"w{i}",
                pools=["bench"],
                log_level="warning",
                heartbeat=10.0,
            )
        )
        argv = ["--config", agent_home / "agent.toml", "--state-dir", agent_home / "state",
                "--spool-dir", agent_home / "spool", "--no-http",
                "--libvirt-uri", "test:///default"]  # fmt: skip
        wrap = ["-m", "cProfile", "-o", str(profile)] if profile and i == 0 else []
        command = [sys.executable, *wrap, "-m", "agent", "run", *map(str, argv)]
        procs.append(subprocess.Popen(command, cwd=ROOT))
    try:
        # Every agent holds pool partitions before the clock starts (a member that
        # joins later takes its share only after a rebalance).
        wait_for_group(settings, Topics(prefix).pool_group("bench"), agents)
        ids = [f"b{agents}-{i}" for i in range(jobs)]
        before = {proc.pid: cpu_seconds(proc.pid) for proc in procs}
        with EventWatcher(settings) as watcher:
            began = time.monotonic()
            send_jobs(
                settings,
                Topics(prefix).pool("bench"),
                [echo(i) for i in ids],
                timeout=120,
                signer=SIGNER,
            )
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
        return jobs / elapsed
    finally:
        for proc in procs:
            # SIGTERM: a profiled agent writes its profile on the way out.
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--profile", type=Path, help="profile the single Kafka agent into this file"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        http_rate = http_end_to_end(Path(tmp) / "http", args.jobs)
        cluster = Cluster.create(Path(tmp) / "kafka", 1)
        cluster.start()
        try:
            one = run(cluster.bootstrap, Path(tmp) / "agents1", 1, args.jobs, args.profile)
            three = run(cluster.bootstrap, Path(tmp) / "agents3", 3, args.jobs)
        finally:
            cluster.stop()
    share = one / http_rate
    print(
        f"one agent / http batch {share:4.0%} (>= 80% {'ok' if share >= 0.8 else 'MISSED'}); "
        f"three / one {three / one:4.2f} (>= 1 {'ok' if three >= one else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
