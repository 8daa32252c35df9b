"""A simulated fleet on a real broker: the host record, the map's rebuild, the
heartbeat load, and what one idle agent costs the brokers.

1. A real agent (Kafka configured) publishes its capabilities record; its size
   is the host record's bytes (target <= 2 KB).
2. For each --sizes N: N simulated hosts (the real record copied, with distinct
   worker_ids and facts; the schema set copied when the record names one by
   digest) and --beats heartbeats each go on a topic prefix of their own; fresh
   `hostagent fleet --json` processes and fresh read_fleet() programs, --runs of
   each interleaved, rebuild the map (median wall time, CPU, peak RSS, hosts it
   saw). Targets: <= 2 s at 10k, <= 15 s at 100k. Bytes on the topics.
3. The steady heartbeat rate of a 10,000-host fleet (the rule of the agent's
   heartbeat interval) for --steady seconds: broker CPU and RSS, beside the
   fixed 10-second interval of before.
4. One idle agent with Kafka (librdkafka statistics) beside one without, for
   --idle seconds: bytes/s and requests/s to the brokers (<= 100 B/s, <= 0.5
   req/s), CPU seconds of each; then a host job's produce -> running p50 (<= 50 ms).

5. --topics N (--layout: only this): N per-host job topics, the agent's layout, on
   --brokers 1 or 3 (replication factor min(brokers, 3), --heap MB each): the
   controller's answer and the time until every broker holds every replica's log,
   each broker's RSS, live heap after a full GC and open files/maps against their
   limits, an agent's metadata at start and at a refresh, all topics' metadata; on
   3 brokers, kill -9 of the active controller: a new one, and a long-lived
   producer/consumer on a topic the dead node led working again.

The load average is printed with each figure (the machine is shared). Brokers
are stopped and their directories removed however the bench ends.
Usage: python bench/fleet.py [--sizes 1000,10000,100000] [--idle 600] [--steady 60]
       python bench/fleet.py --steady 0 --idle 0      (the record and the rebuilds only)
       python bench/fleet.py --layout --topics 10000 --brokers 3 --heap 1024
       python bench/fleet.py --only idle --idle 600
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ would come first on the path and its http.py would
# shadow the standard library's `http` package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from agent.transports.kafka import KafkaConfig  # noqa: E402
from agent.transports.kafka.client import EventWatcher  # noqa: E402
from agent.transports.kafka.topics import Topics  # noqa: E402
from tests.agentproc import AgentProcess  # noqa: E402
from tests.kafka_broker import Cluster  # noqa: E402
from tests.transports.kafka.fleetkit import echo, kafka_agent, signed_headers  # noqa: E402

REBUILD_TARGETS = {10_000: 2.0, 100_000: 15.0}
RECORD_BYTES = 2048


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """key -> latest value of a topic (blocking, up to its end now)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False}
    )
    found: dict[bytes, bytes | None] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return found
        ends = {}
        for p in metadata.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        while ends:
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    continue
                found[message.key() or b""] = message.value()
                if message.offset() + 1 >= ends.get(message.partition(), 1 << 62):
                    ends.pop(message.partition(), None)
    finally:
        consumer.close()
    return found


def wait_for_record(bootstrap: str, prefix: str, worker_id: str) -> dict[str, Any]:
    topics = Topics(prefix)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            value = latest(bootstrap, topics.capabilities).get(worker_id.encode())
        except KafkaException:  # the agent's topics are new: no leader elected yet
            value = None
        if value:
            return dict(json.loads(value))
        time.sleep(1)
    raise SystemExit("the real agent published no capabilities record")


def create(bootstrap: str, prefix: str) -> None:
    """The fleet topics as an agent creates them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        from agent.transports.kafka.transport import fleet_topics  # noqa: PLC0415
    except ImportError:  # before: only the topics the map needs, as the agent made them
        topics = Topics(prefix)
        wanted = [
            NewTopic(topics.capabilities, num_partitions=1, config={"cleanup.policy": "compact"}),
            NewTopic(topics.heartbeats, num_partitions=1),
        ]
    else:
        wanted = fleet_topics(KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix))
    for future in admin.create_topics(wanted, operation_timeout=30).values():
        future.result(timeout=60)


def simulate(  # noqa: PLR0917 (a script's one call)
    bootstrap: str,
    prefix: str,
    template: dict[str, Any],
    schemas: dict[bytes, bytes | None],
    hosts: int,
    beats: int,
) -> None:
    """`hosts` copies of `template` and `beats` heartbeats each, under `prefix`."""
    topics = Topics(prefix)
    create(bootstrap, prefix)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
         "queue.buffering.max.messages": 200_000, "acks": "all"}
    )  # fmt: skip

    def produce(topic: str, key: str | bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
            except BufferError:
                producer.poll(0.1)
            else:
                return

    for digest, value in schemas.items():
        if value is not None:
            produce(f"{prefix}.schemas", digest, value)
    now = datetime.now().astimezone().isoformat()
    interval = max(10.0, hosts / 200)  # the heartbeat rule's interval (README, Fleet)
    for i in range(hosts):
        worker_id = f"sim-{i:06d}"
        record = copy.copy(template)
        record.update(
            worker_id=worker_id,
            hostname=f"hv{i:06d}.example.net",
            memory_bytes=(64 + i % 8 * 64) << 30,
            labels={"rack": f"r{i % 40}", "zone": f"z{i % 3}"},
            seq=i,
            generated_at=now,
        )
        produce(topics.capabilities, worker_id, json.dumps(record, default=str).encode())
        for _ in range(beats):
            beat = {"worker_id": worker_id, "at": now, "interval_seconds": interval,
                    "health": "healthy", "components": {"store": "healthy", "kafka": "healthy"},
                    "queue_depth": 0, "running": 0}  # fmt: skip
            produce(topics.heartbeats, worker_id, json.dumps(beat).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(300):
        raise SystemExit("the broker did not take the simulated fleet")


def topic_bytes(prefix: str) -> dict[str, int]:
    """Bytes on each of the prefix's topics, from the broker's log directories."""
    sizes: dict[str, int] = {}
    for part in Path(BROKER_DIR).glob(f"node-*/data/{prefix}.*-*"):
        topic = part.name.rsplit("-", 1)[0]
        sizes[topic] = sizes.get(topic, 0) + sum(f.stat().st_size for f in part.glob("*.log"))
    return sizes


def rebuild(bootstrap: str, prefix: str, *, cli: bool) -> tuple[float, float, float, int]:
    """A fresh `hostagent fleet --json` (or a fresh program's read_fleet()): seconds,
    CPU seconds, peak RSS MB, hosts in its answer (CPU time is what a loaded
    machine does not inflate)."""
    argv = [sys.executable, "-m", "agent", "fleet", "--bootstrap", bootstrap,
            "--topic-prefix", prefix, "--json", "--timeout", "300"]  # fmt: skip
    if not cli:
        argv = [sys.executable, "-c", READ_FLEET.format(bootstrap=bootstrap, prefix=prefix)]
    with tempfile.TemporaryFile() as out:
        began = time.monotonic()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"hostagent fleet failed: exit {process.returncode}")
        out.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, cpu, usage.ru_maxrss / 1024, len(json.load(out))


def rebuild_figures(bootstrap: str, prefix: str, hosts: int, runs: int, loaded: float) -> None:
    """`runs` fresh `hostagent fleet --json` and read_fleet() programs, interleaved (CLI,
    program, CLI, ...) so that both see the same load: medians of wall time and CPU."""
    target = REBUILD_TARGETS.get(hosts)
    figures: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(runs):
        for cli in (True, False):
            seconds, cpu, rss, seen = rebuild(bootstrap, prefix, cli=cli)
            figures[cli].append((seconds, cpu, rss))
            if seen != hosts:
                print(f"  !! the map had {seen} hosts, not {hosts}")
    for cli in (True, False):
        times = [seconds for seconds, _, _ in figures[cli]]
        median = statistics.median(times)
        mark = f"(<= {target} s)  {verdict(median <= target)}" if target else ""
        how = "hostagent fleet --json" if cli else "read_fleet() program"
        cpu = statistics.median(c for _, c, _ in figures[cli])
        rss = statistics.median(r for _, _, r in figures[cli])
        print(f"rebuild {hosts:>7} hosts, fresh {how}: median {median:6.2f} s {mark}  runs "
              f"{', '.join(f'{t:.2f}' for t in times)}; CPU {cpu:.2f} s; peak RSS {rss:.0f} MB "
              f"({load()}; loaded {loaded:.0f} s)", flush=True)  # fmt: skip


READ_FLEET = """
import json
from agent.transports.kafka import KafkaConfig, read_fleet
settings = KafkaConfig(bootstrap_servers="{bootstrap}", topic_prefix="{prefix}")
hosts = read_fleet(settings, timeout=300)
print(json.dumps([None] * len(hosts)))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def heartbeat_load(
    bootstrap: str, prefix: str, broker_pid: int, rate: float, seconds: float
) -> tuple[float, float]:
    """Heartbeats at `rate`/s for `seconds`: broker CPU (fraction of a core) and RSS MB."""
    create(bootstrap, prefix)
    topic = Topics(prefix).heartbeats
    # One message per request, as from 10,000 hosts each sending its own.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1, "acks": "all"}
    )
    cpu0 = cpu_seconds(broker_pid)
    began = time.monotonic()
    sent = 0
    rss_peak = 0.0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            worker_id = f"sim-{sent % 10_000:06d}"
            beat = {"worker_id": worker_id, "at": datetime.now().astimezone().isoformat(),
                    "interval_seconds": 10_000 / rate, "health": "healthy",
                    "components": {"store": "healthy", "kafka": "healthy"},
                    "queue_depth": 0, "running": 0}  # fmt: skip
            producer.produce(topic, key=worker_id, value=json.dumps(beat).encode())
            sent += 1
        producer.poll(0.01)
        rss_peak = max(rss_peak, rss_mb(broker_pid))
    producer.flush(30)
    cpu = (cpu_seconds(broker_pid) - cpu0) / (time.monotonic() - began)
    return cpu, rss_peak


def stats_totals(agent: AgentProcess) -> list[tuple[float, dict[str, int]]]:
    """(when, {tx, txbytes, rx, rxbytes} summed over the agent's clients) per statistics round."""
    rounds: dict[str, dict[str, dict[str, int]]] = {}
    series = []
    events = agent.events("kafka.statistics")
    # A total is a sum over every client: one client's first round arriving inside the
    # window would count all it sent since its start (the capabilities, the schemas).
    clients = {str(event["client"]) for event in events}
    for event in events:
        client = str(event["client"])
        rounds.setdefault("last", {})[client] = {
            k: int(event[k])
            for k in ("tx", "txbytes", "rx", "rxbytes")  # type: ignore[call-overload]
        }
        at = datetime.fromisoformat(str(event["timestamp"])).timestamp()
        total = {
            k: sum(c[k] for c in rounds["last"].values())
            for k in ("tx", "txbytes", "rx", "rxbytes")
        }
        if len(rounds["last"]) == len(clients):
            series.append((at, total))
    return series


def threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """tid -> (name, context switches voluntary and not, nanoseconds on a CPU) of each
    live thread: each switch is a wake-up (librdkafka names its threads rdk:*)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text().splitlines()
            ran = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue  # a thread that ended meanwhile
        switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        found[task.name] = (name, switches, ran)
    return found


def wakeups(
    pid: int, before: dict[str, tuple[str, int, int]], seconds: float
) -> tuple[float, list[tuple[str, float, float]]]:
    """Wake-ups/s of the whole process since `before`, and per thread kind (name, the
    main thread as `main`): (kind, wake-ups/s, CPU ms/min), busiest first."""
    after = threads(pid)
    kinds: dict[str, list[float]] = {}
    for tid, (name, switches, ran) in after.items():
        _, switches0, ran0 = before.get(tid, (name, 0, 0))
        kind = "main" if tid == str(pid) else name
        kind = kind.rstrip("0123456789") if kind.startswith("rdk:broker") else kind
        total = kinds.setdefault(kind, [0.0, 0.0])
        total[0] += (switches - switches0) / seconds
        total[1] += (ran - ran0) / 1e6 / seconds * 60
    rows = sorted(((k, v[0], v[1]) for k, v in kinds.items()), key=lambda r: -r[1])
    return sum(r[1] for r in rows), rows


def idle(bootstrap: str, home: Path, seconds: float) -> None:
    prefix = "bench-idle"
    # Statistics cost the agent CPU too (librdkafka's JSON, parsed and logged): about
    # four rounds per window, at least 30 s apart.
    every_ms = int(max(30.0, min(150.0, seconds / 4)) * 1000)
    extra = f'librdkafka = {{ "statistics.interval.ms" = "{every_ms}" }}'
    with_kafka = kafka_agent(home, bootstrap, prefix, "idle-k", heartbeat=10.0, extra=extra)
    plain_home = home / "plain"
    plain_home.mkdir()
    (plain_home / "agent.toml").write_text('worker_id = "idle-plain"\nlog_level = "info"\n')
    plain = AgentProcess(plain_home / "state", plain_home / "spool", "--config",
                         str(plain_home / "agent.toml"))  # fmt: skip
    with_kafka.start()
    plain.start()
    try:
        time.sleep(30)  # topics created, groups joined, first heartbeats sent
        assert with_kafka.process is not None
        assert plain.process is not None
        cpu_k0, cpu_p0 = cpu_seconds(with_kafka.process.pid), cpu_seconds(plain.process.pid)
        threads_k0, threads_p0 = threads(with_kafka.process.pid), threads(plain.process.pid)
        began = time.time()
        time.sleep(seconds)
        ended = time.time()
        cpu_k = cpu_seconds(with_kafka.process.pid) - cpu_k0
        cpu_p = cpu_seconds(plain.process.pid) - cpu_p0
        wakes_k, rows_k = wakeups(with_kafka.process.pid, threads_k0, ended - began)
        wakes_p, rows_p = wakeups(plain.process.pid, threads_p0, ended - began)
        series = [
            (at, t)
            for at, t in stats_totals(with_kafka)
            if began - every_ms / 1000 - 1 <= at <= ended + 1
        ]
        print(f"idle agent over {seconds:.0f} s ({load()}):")
        if len(series) >= 2:
            (t0, first), (t1, last) = series[0], series[-1]
            span = t1 - t0
            sent = (last["txbytes"] - first["txbytes"]) / span
            received = (last["rxbytes"] - first["rxbytes"]) / span
            requests = (last["tx"] - first["tx"]) / span
            print(f"  bytes/s to the brokers     {sent:8.1f}  (<= 100)  {verdict(sent <= 100)}"
                  f"   [received {received:.1f} B/s; statistics over {span:.0f} s]")  # fmt: skip
            ok = verdict(requests <= 0.5)
            print(f"  requests/s to the brokers  {requests:8.3f}  (<= 0.5)  {ok}")
        else:
            print("  no librdkafka statistics in the agent's log (before: no statistics hook)")
        print(
            f"  CPU s with Kafka           {cpu_k:8.3f}  beside {cpu_p:.3f} without  "
            f"(ratio {cpu_k / max(cpu_p, 1e-3):.1f}x)  {verdict(cpu_k <= cpu_p * 1.5 + 0.05)}"
        )
        for label, wakes, rows in (("with", wakes_k, rows_k), ("without", wakes_p, rows_p)):
            kinds = ", ".join(f"{kind} {w:.2f}/s {ms:.0f} ms/min" for kind, w, ms in rows if w)
            print(f"  wake-ups/s {label} Kafka     {wakes:8.2f}  [{kinds}]")
        latency(bootstrap, prefix)
    finally:
        with_kafka.kill()
        plain.kill()


def latency(bootstrap: str, prefix: str, jobs: int = 30) -> None:
    """produce -> running of host jobs sent one at a time by one long-lived producer."""
    settings = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
    topic = Topics(prefix).host("idle-k")
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    took = []
    with EventWatcher(settings) as watcher:
        producer.produce(topic, key=b"warm-up", value=b"{}", headers=[])
        producer.flush(10)
        for i in range(jobs):
            job_id = f"lat-{time.time_ns()}-{i}"
            value = json.dumps(echo(job_id)).encode()
            headers = signed_headers(topic, job_id.encode(), value)
            sent = time.time()
            producer.produce(topic, key=job_id.encode(), value=value, headers=headers)
            producer.flush(10)
            for event in watcher.until_done([job_id], timeout=30):
                if event["type"] == "running":
                    took.append(datetime.fromisoformat(event["timestamp"]).timestamp() - sent)
            time.sleep(0.5)
    p50 = statistics.median(took) * 1000
    print(
        f"  host job produce -> running p50 {p50:6.1f} ms over {len(took)} jobs (<= 50)  "
        f"{verdict(p50 <= 50)}  ({load()})"
    )


def metadata_cost(bootstrap: str, names: list[str], samples: int = 15) -> tuple[float, float]:
    """What an agent pays for metadata, median ms: a fresh client's first request for
    its own topic (connect, ApiVersions, Metadata: an agent's start), and the same
    client asking again (a refresh: librdkafka asks only for the topics it uses,
    every topic.metadata.refresh.interval.ms, 5 min by default)."""
    first, again = [], []
    for name in names[:: max(1, len(names) // samples)][:samples]:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-metadata"})
        try:
            began = time.monotonic()
            consumer.list_topics(name, timeout=30)
            first.append(time.monotonic() - began)
            began = time.monotonic()
            consumer.list_topics(name, timeout=30)
            again.append(time.monotonic() - began)
        finally:
            consumer.close()
    return statistics.median(first) * 1000, statistics.median(again) * 1000


def full_metadata_ms(bootstrap: str) -> tuple[float, int]:
    """One request for every topic's metadata (a regex subscription or an operator's
    `list_topics()` pays this; the agent names its topics and does not)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-metadata"})
    try:
        consumer.list_topics(timeout=60)  # connected
        began = time.monotonic()
        count = len(consumer.list_topics(timeout=120).topics)
        return (time.monotonic() - began) * 1000, count
    finally:
        consumer.close()


def broker_rss(cluster: Any) -> str:
    return " ".join(
        f"{n.node_id}:{rss_mb(n.pid):.0f}" if n.pid else f"{n.node_id}:-" for n in cluster.nodes
    )


def live_heap_mb(pid: int) -> float:
    """The JVM's heap still in use after a full collection (jcmd): what the broker
    needs, where RSS only shows how far a lazy collector let the heap grow."""
    subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=120, check=False)
    info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True,
                          timeout=120, check=False).stdout  # fmt: skip
    used = 0
    for line in info.splitlines():
        words = line.split()
        if "used" in words and words[0] in {"def", "tenured"}:  # SerialGC's two generations
            used += int(words[words.index("used") + 1].rstrip("K,"))
    return used / 1024


def open_files(pid: int) -> tuple[int, int, int, int]:
    """(open files, their limit, memory maps, their limit): a partition replica holds
    one file open and two maps (offset and time index)."""
    files = len(os.listdir(f"/proc/{pid}/fd"))
    limit = next(int(line.split()[3]) for line in Path(f"/proc/{pid}/limits").read_text()
                 .splitlines() if line.startswith("Max open files"))  # fmt: skip
    maps = len(Path(f"/proc/{pid}/maps").read_text().splitlines())
    return files, limit, maps, int(Path("/proc/sys/vm/max_map_count").read_text())


def replicas_on_disk(cluster: Any, prefix: str) -> list[int]:
    return [len(list((n.directory / "data").glob(f"{prefix}*"))) for n in cluster.nodes]


def create_host_topics(bootstrap: str, names: list[str], replicas: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for start in range(0, len(names), 500):
        wanted = [NewTopic(name, num_partitions=1, replication_factor=replicas)
                  for name in names[start : start + 500]]  # fmt: skip
        for future in admin.create_topics(wanted, operation_timeout=300).values():
            future.result(timeout=600)


def failover(cluster: Any, names: list[str]) -> None:
    """kill -9 the active controller; time until a new one is active (its quorum
    record), until a long-lived producer's message to a topic that node led is
    acknowledged (acks=all), and until a long-lived consumer reads it back."""
    bootstrap = cluster.bootstrap
    leader, epoch = cluster.active_controller()
    victim = next(n for n in cluster.nodes if n.node_id == leader)
    listed = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-failover"})
    topics = listed.list_topics(timeout=120).topics
    listed.close()
    led = [n for n in names if topics[n].partitions[0].leader == leader]
    topic = led[len(led) // 2] if led else names[len(names) // 2]
    quiet = {"bootstrap.servers": bootstrap, "log_level": 2}  # the kill's disconnects are expected
    producer = Producer({**quiet, "acks": "all", "enable.idempotence": True})
    consumer = Consumer({**quiet, "group.id": "bench-failover", "enable.auto.commit": False})
    try:
        producer.produce(topic, key=b"warm", value=b"before")
        if producer.flush(120):
            raise SystemExit("failover: the warm-up message was not acknowledged")
        consumer.assign([TopicPartition(topic, 0, 0)])
        while not any(m.value() == b"before" for m in consumer.consume(10, 1.0) if not m.error()):
            pass
        acked: list[float] = []

        def delivered(err: Any, _message: Any) -> None:
            if err is None:
                acked.append(time.monotonic())

        began = time.monotonic()
        cluster.kill(victim)
        producer.produce(topic, key=b"after", value=b"after", on_delivery=delivered)
        elected = read = 0.0
        while not (elected and acked and read) and time.monotonic() - began < 300:
            now_leader, now_epoch = cluster.active_controller()
            if not elected and now_epoch > epoch and now_leader not in (-1, leader):
                elected = time.monotonic() - began
            producer.poll(0)
            for message in consumer.consume(10, 0.05):
                if not message.error() and message.value() == b"after" and not read:
                    read = time.monotonic() - began
        ack = acked[0] - began if acked else 0.0
        where = "it led" if led else "(none led by it)"
        print(f"  failover (kill -9 controller {leader}, a topic {where}): new active controller "
              f"{cluster.active_controller()[0]} in {elected:.1f} s; a long-lived producer's "
              f"message acknowledged (acks=all) in {ack:.1f} s; read back by a long-lived "
              f"consumer in {read:.1f} s ({load()})")  # fmt: skip
        began = time.monotonic()
        fresh = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        fresh.produce(topic, value=b"fresh")
        left = " (NOT acknowledged)" if fresh.flush(60) else ""
        print(f"  after failover, a fresh producer (an agent starting) produces in "
              f"{time.monotonic() - began:.2f} s{left}")  # fmt: skip
    finally:
        producer.flush(5)
        consumer.close()


def host_topics(cluster: Any, count: int) -> None:
    """`count` per-host job topics (one partition each, the agent's layout, replication
    factor min(brokers, 3)): creation time, each broker's RSS, what an agent's
    metadata costs before and after, and, on 3 brokers, the controller's failover."""
    bootstrap = cluster.bootstrap
    replicas = min(len(cluster.nodes), 3)
    names = [f"bench-topics.host.sim-{i:06d}.jobs" for i in range(count)]
    create_host_topics(bootstrap, names[:20], replicas)  # the baseline's own topics
    time.sleep(5)
    print(f"{count} host topics on {len(cluster.nodes)} broker(s), replication factor "
          f"{replicas}, heap {cluster.heap_mb} MB each ({load()}):")  # fmt: skip
    rss0 = broker_rss(cluster)
    start0, again0 = metadata_cost(bootstrap, names[:20])
    full0, listed0 = full_metadata_ms(bootstrap)
    began = time.monotonic()
    create_host_topics(bootstrap, names[20:], replicas)
    accepted = time.monotonic() - began
    # The controller answers once the topics are in its metadata log; each broker then
    # creates its replicas' logs, and only then is a topic usable there.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-topics"})
    while time.monotonic() - began < 900:
        on_disk = replicas_on_disk(cluster, "bench-topics.host.")
        listed = consumer.list_topics(timeout=120).topics
        there = sum(1 for n in names if n in listed and not listed[n].error
                    and listed[n].partitions[0].leader >= 0)  # fmt: skip
        if there == count and all(d == count for d in on_disk):
            break
        time.sleep(1)
    consumer.close()
    placed = time.monotonic() - began
    if there != count or any(d != count for d in on_disk):
        print(f"  !! after {placed:.0f} s: {there} of {count} topics in the metadata, "
              f"replicas on disk per broker {on_disk}")  # fmt: skip
    print(f"  created: the controller accepted all in {accepted:.1f} s; every replica's log on "
          f"every broker after {placed:.1f} s ({(count - 20) * replicas / placed:.0f} "
          f"replicas/s) ({load()})")  # fmt: skip
    time.sleep(10)
    print(f"  broker RSS MB (node:RSS) {rss0} -> {broker_rss(cluster)} ({load()})")
    for node in cluster.nodes:
        files, files_max, maps, maps_max = open_files(node.pid)
        print(f"  node {node.node_id}: live heap after a full GC {live_heap_mb(node.pid):.0f} MB "
              f"(max {cluster.heap_mb}); open files {files} of {files_max}; memory maps "
              f"{maps} of {maps_max}")  # fmt: skip
    start1, again1 = metadata_cost(bootstrap, names)
    full1, listed1 = full_metadata_ms(bootstrap)
    print(
        f"  an agent's metadata, its own topic (median of 15): at start {start0:.1f} -> "
        f"{start1:.1f} ms, each refresh {again0:.1f} -> {again1:.1f} ms ({load()})"
    )
    print(f"  every topic's metadata in one request: {listed0} topics {full0:.0f} ms -> "
          f"{listed1} topics {full1:.0f} ms")  # fmt: skip
    if len(cluster.nodes) >= 3:
        failover(cluster, names)


BROKER_DIR = ""


def main() -> None:
    global BROKER_DIR  # noqa: PLW0603
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=3, help="rebuilds per size and reader (median)")
    parser.add_argument("--beats", type=int, default=2, help="heartbeats per simulated host")
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--topics", type=int, default=0, help="also create N host topics")
    parser.add_argument("--brokers", type=int, choices=[1, 3], default=1)
    parser.add_argument("--heap", type=int, default=128, help="each broker's maximum heap, MB")
    parser.add_argument("--layout", action="store_true", help="only the host topics (--topics)")
    parser.add_argument("--only", choices=["idle"], help="only this step (4: the idle agent)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        home = Path(tmp)
        BROKER_DIR = str(home / "kafka")
        cluster = Cluster.create(home / "kafka", args.brokers, args.heap)
        try:
            cluster.start()
            print(f"{len(cluster.nodes)} broker(s) started ({load()})", flush=True)
            if args.layout:
                host_topics(cluster, args.topics)
                return
            if args.only == "idle":
                idle(cluster.bootstrap, home, args.idle)
                return
            bootstrap = cluster.bootstrap
            broker_pid = cluster.nodes[0].pid or cluster.nodes[0].process.pid
            source = kafka_agent(home, bootstrap, "bench-src", "real-host", heartbeat=10.0)
            source.start()
            try:
                template = wait_for_record(bootstrap, "bench-src", "real-host")
                raw = latest(bootstrap, Topics("bench-src").capabilities)[b"real-host"] or b""
                schema_topic = getattr(Topics("bench-src"), "schemas", "bench-src.schemas")
                schemas = latest(bootstrap, schema_topic)
            finally:
                source.kill()
            size = len(raw)
            print(f"host record: {size} bytes (<= {RECORD_BYTES})  {verdict(size <= RECORD_BYTES)}"
                  f"  [schema sets on {schema_topic}: {len(schemas)}, "
                  f"{sum(len(v or b'') for v in schemas.values())} bytes]")  # fmt: skip
            if args.steady > 0:
                try:
                    from agent.transports.kafka.heartbeat import fleet_interval  # noqa: PLC0415
                except ImportError:  # before: every 10 s whatever the fleet's size
                    interval = 10.0
                else:
                    interval = fleet_interval(KafkaConfig(bootstrap_servers=bootstrap), 10_000)
                # The broker with nothing to do, for comparison (a JVM is never at 0).
                cpu0 = cpu_seconds(broker_pid)
                time.sleep(args.steady / 2)
                idle_cpu = (cpu_seconds(broker_pid) - cpu0) / (args.steady / 2)
                print(f"broker doing nothing: CPU {idle_cpu * 100:.1f}% of a core, "
                      f"RSS {rss_mb(broker_pid):.0f} MB ({load()})")  # fmt: skip
                for label, rate in (("rule", 10_000 / interval), ("fixed 10 s", 1000.0)):
                    cpu, rss = heartbeat_load(bootstrap, f"bench-beat-{int(rate)}", broker_pid,
                                              rate, args.steady)  # fmt: skip
                    print(f"10k hosts, heartbeats {label} ({rate:.0f}/s, "
                          f"interval {10_000 / rate:.0f} s) "
                          f"for {args.steady:.0f} s: broker CPU {cpu * 100:.1f}% of a core, "
                          f"RSS {rss:.0f} MB ({load()})")  # fmt: skip
            for hosts in [int(s) for s in args.sizes.split(",") if s]:
                prefix = f"bench-{hosts}"
                began = time.monotonic()
                simulate(bootstrap, prefix, template, schemas, hosts, args.beats)
                loaded = time.monotonic() - began
                sizes = topic_bytes(prefix)
                on_topics = ", ".join(
                    f"{t.split('.', 1)[1]} {b / 1e6:.1f} MB" for t, b in sorted(sizes.items()) if b
                )
                rebuild_figures(bootstrap, prefix, hosts, args.runs, loaded)
                print(f"  on the topics: {on_topics}")
            if args.idle > 0:
                idle(bootstrap, home, args.idle)
            if args.topics > 0:
                host_topics(cluster, args.topics)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
