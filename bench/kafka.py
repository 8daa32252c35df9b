"""Kafka end to end: 10,000 no-op jobs produced to a pool topic, until their
`completed` events are consumed, through one real broker to 1 and 3 agents;
beside it the HTTP batch path end to end (POST /api/v1/jobs/batch of 500,
until the agent has run them all) on the same machine.

Each agent is a real process (max_concurrent_jobs 2); CPU seconds per agent
come from /proc, and per thread for the first Kafka agent (its trio thread, librdkafka's
threads, the other Python threads: the consumer, the store's writer, workers).
`--rounds N` alternates the HTTP batch and the one-agent Kafka run N times
(interleaved, on one broker) and prints the medians and their ratio;
`--baseline DIR` adds, in each round, a one-agent run of the agent in DIR (another
checkout: a before/after comparison on the same machine load).
Usage: python bench/kafka.py [--jobs N] [--rounds N] [--no-three] [--baseline DIR]
                             [--profile FILE] [--py-spy FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
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
            threads_before = thread_cpu(agent.pid)
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
            threads = {k: v - threads_before.get(k, 0.0) for k, v in thread_cpu(agent.pid).items()}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    rate = jobs / elapsed
    split = ", ".join(f"{k} {v:.1f}" for k, v in sorted(threads.items()))
    print(f"http batch, 1 agent: {rate:8.0f} jobs/s end to end ({elapsed:.1f} s); "
          f"agent CPU s: {cpu:.1f} ({split})")  # fmt: skip
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


def _seconds(timestamp: object) -> float:
    """Unix seconds of an event's RFC 3339 timestamp (0 when it has none)."""
    if not isinstance(timestamp, str):
        return 0.0
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per kind of thread: the main (trio) thread, librdkafka's, the rest."""
    found: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        kind = "rdkafka" if name.startswith("rdk:") else "other"
        kind = "trio" if task.name == str(pid) else kind
        found[kind] = found.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def run(
    bootstrap: str,
    home: Path,
    agents: int,
    jobs: int,
    *,
    profile: Path | None = None,
    spy: Path | None = None,
    prefix: str | None = None,
    root: Path = ROOT,
) -> float:
    prefix = prefix or f"bench{agents}"
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
        # `-m agent` imports the package from the working directory first.
        procs.append(subprocess.Popen(command, cwd=root))
    try:
        # Every agent holds pool partitions before the clock starts (a member that
        # joins later takes its share only after a rebalance).
        wait_for_group(settings, Topics(prefix).pool_group("bench"), agents)
        if spy is not None:
            # Every thread's stacks, sampled, until the agent exits (collapsed stacks).
            spy_argv = ["py-spy", "record", "--threads", "-r", "250", "-f", "raw"]
            spy_argv += ["-o", str(spy), "-p", str(procs[0].pid)]
            spying = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL)
        ids = [f"b{agents}-{i}" for i in range(jobs)]
        before = {proc.pid: cpu_seconds(proc.pid) for proc in procs}
        threads_before = thread_cpu(procs[0].pid)
        with EventWatcher(settings) as watcher:
            began = time.monotonic()
            began_wall = time.time()
            send_jobs(
                settings,
                Topics(prefix).pool("bench"),
                [echo(i) for i in ids],
                timeout=120,
                signer=SIGNER,
            )
            produced = time.monotonic() - began
            done = 0
            # When the agent accepted / finished its last job (its own timestamps),
            # against when the last event arrived: which side the time went to.
            last: dict[str, float] = {}
            for event in watcher.until_done(ids, timeout=600):
                done += event["type"] == "completed"
                moment = _seconds(event.get("timestamp")) - began_wall
                last[event["type"]] = max(last.get(event["type"], 0.0), moment)
            elapsed = time.monotonic() - began
        cpu = [cpu_seconds(pid) - start for pid, start in before.items()]
        threads = {k: v - threads_before.get(k, 0.0) for k, v in thread_cpu(procs[0].pid).items()}
        print(
            f"kafka{'' if root == ROOT else ' (' + str(root) + ')'}, {agents} agent(s): "
            f"{jobs / elapsed:8.0f} jobs/s end to end "
            f"({done}/{jobs} completed in {elapsed:.1f} s; produce {produced:.1f} s; last "
            f"accepted {last.get('accepted', 0):.1f} s, "
            f"completed {last.get('completed', 0):.1f} s); "
            f"agent CPU s: {', '.join(f'{c:.1f}' for c in cpu)} "
            f"(first agent: {', '.join(f'{k} {v:.1f}' for k, v in sorted(threads.items()))})"
        )
        return jobs / elapsed
    finally:
        for proc in procs:
            # SIGTERM: a profiled agent writes its profile on the way out.
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        if spy is not None:
            spying.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--profile", type=Path, help="profile the single Kafka agent into this file"
    )
    parser.add_argument(
        "--py-spy", type=Path, help="sample the first Kafka agent's threads (py-spy on PATH)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved HTTP/Kafka rounds")
    parser.add_argument("--baseline", type=Path, help="also run the agent of this checkout")
    parser.add_argument("--no-three", action="store_true", help="skip the three-agent run")
    args = parser.parse_args()
    https: list[float] = []
    ones: list[float] = []
    bases: list[float] = []
    three = None
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster.create(Path(tmp) / "kafka", 1)
        cluster.start()
        try:
            for n in range(args.rounds):
                https.append(http_end_to_end(Path(tmp) / f"http{n}", args.jobs))
                ones.append(
                    run(cluster.bootstrap, Path(tmp) / f"agents1-{n}", 1, args.jobs,
                        profile=args.profile if n == 0 else None,
                        spy=args.py_spy if n == 0 else None, prefix=f"bench1r{n}")
                )  # fmt: skip
                if args.baseline is not None:
                    bases.append(
                        run(cluster.bootstrap, Path(tmp) / f"base1-{n}", 1, args.jobs,
                            prefix=f"base1r{n}", root=args.baseline.resolve())
                    )  # fmt: skip
                    print(f"round {n}: this / baseline {ones[-1] / bases[-1]:.2f}")
                print(f"round {n}: kafka / http {ones[-1] / https[-1]:.2f}; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            if not args.no_three:
                three = run(cluster.bootstrap, Path(tmp) / "agents3", 3, args.jobs)
        finally:
            cluster.stop()
    one, http_rate = statistics.median(ones), statistics.median(https)
    # Each round's ratio, then their median: the load moves between rounds, and a
    # ratio of medians would pair a busy round's figure with a quiet one's.
    ratios = sorted(o / h for o, h in zip(ones, https, strict=True))
    share = statistics.median(ratios)
    print(
        f"medians of {args.rounds}: kafka {one:.0f}, http {http_rate:.0f} jobs/s; "
        f"one agent / http batch {share:4.0%} (rounds {' '.join(f'{r:.2f}' for r in ratios)}; "
        f">= 80% {'MET' if share >= 0.8 else 'MISSED'}); load {os.getloadavg()[0]:.1f}"
    )
    if bases:
        versus = sorted(o / b for o, b in zip(ones, bases, strict=True))
        base_share = statistics.median(b / h for b, h in zip(bases, https, strict=True))
        print(
            f"baseline {args.baseline}: median {statistics.median(bases):.0f} jobs/s, "
            f"/ http {base_share:4.0%}; this / baseline {statistics.median(versus):.2f} "
            f"(rounds {' '.join(f'{r:.2f}' for r in versus)})"
        )
    if three is not None:
        print(f"three / one {three / one:4.2f} (>= 1 {'MET' if three >= one else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
