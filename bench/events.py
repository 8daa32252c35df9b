"""Live events under load: 100 SSE subscribers to all events while 5,000 jobs
are batch-submitted, against the same submits with no subscriber.

Starts a real agent (HTTP, no tokens, loopback), then per phase submits
--jobs system.echo jobs as POST /api/v1/jobs/batch of 500 from one client.
The subscribers are read by one process (selectors) as fast as they come.
Rounds without and with subscribers alternate (--rounds of each); prints
the medians of submits/s, subscribers cut off, the latency of `created`
events (arrival - submitted_at), p50 and p99, and per round the agent's CPU
seconds and the reading thread's (which shares the machine).

Usage: python bench/events.py [--subscribers 100] [--jobs 5000] [--rounds 3] [--websocket]
       [--profile agent.prof]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import base64  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def document(job_id: str) -> dict[str, object]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {}},
    }


def submit_all(port: int, prefix: str, count: int, per_batch: int = 500) -> float:
    """Jobs/s of the batch submits, from the first request to the last answer."""
    bodies = [
        json.dumps({"jobs": [document(f"{prefix}-{n}") for n in range(first, first + per_batch)]})
        for first in range(0, count, per_batch)
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    began = time.perf_counter()
    for body in bodies:
        conn.request(
            "POST", "/api/v1/jobs/batch", body=body, headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"batch answered {response.status}")
    elapsed = time.perf_counter() - began
    conn.close()
    return count / elapsed


CREATED = b'"type":"created"'
CUT_OFF = b'"type":"error"'
_TAIL = len(CREATED) - 1  # the longest marker's length - 1
DECODER = json.JSONDecoder()


class Subscribers:
    """N SSE streams read in a process of their own (so the reading never holds
    the submitting client's GIL); counts `created` events and streams cut off,
    and samples latencies: per read, of the oldest `created` event in it."""

    def __init__(self, port: int, count: int, *, websocket: bool = False) -> None:
        self._websocket = websocket
        context = multiprocessing.get_context("fork")
        self._created = context.Value("q", 0, lock=False)
        self._stop = context.Event()
        self._ready = context.Event()
        self._results, child_end = context.Pipe(duplex=False)
        self._process = context.Process(target=self._run, args=(port, count, child_end))
        self._process.start()
        self._ready.wait(60)
        self.latencies: list[float] = []
        self.cut_off = 0
        self.cpu = 0.0

    @property
    def created(self) -> int:
        return int(self._created.value)

    def _run(self, port: int, count: int, results: Connection) -> None:
        selector = selectors.DefaultSelector()
        cut_off_marker = b"fell behind" if self._websocket else CUT_OFF
        # Per socket, the last bytes read (shorter than a marker): a marker split
        # between two reads is counted from them and the next read's first bytes.
        tails: dict[socket.socket, bytes] = {}
        created = 0
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            if self._websocket:
                _open_websocket(sock)
                tails[sock] = b""
            else:
                sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\n\r\n")
                # Subscribed once the stream's first line came (`retry:`): a round that
                # began before would miss the first batch's events on a busy machine.
                rest = _read_past(sock, b"retry: ")
                created += rest.count(CREATED)
                tails[sock] = rest[-_TAIL:]
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        self._created.value = created
        self._ready.set()
        latencies: list[float] = []
        cut_off = 0
        began = time.process_time()
        # Each read lands in one buffer and is scanned in place (counts in C, no copy,
        # no allocation): the reader shares the machine with the agent, and a reader
        # that allocated, joined and split every read (about 1 MB each) took CPU the
        # agent's figures then lacked.
        buffer = bytearray(1 << 20)
        while not self._stop.is_set() and tails:
            for key, _ in selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                size = sock.recv_into(buffer)
                now = time.time()
                if not size:
                    selector.unregister(sock)
                    del tails[sock]
                    continue
                tail = tails[sock]
                self._created.value += _count(CREATED, tail, buffer, size)
                cut_off += _count(cut_off_marker, tail, buffer, size)
                tails[sock] = (tail + buffer[max(0, size - _TAIL) : size])[-_TAIL:]
                # One latency sample per read: its first `created` event held whole.
                found = buffer.find(CREATED, 0, size)
                if found >= 0:
                    stamp = _submitted_at(buffer, size, found, websocket=self._websocket)
                    if stamp is not None:
                        latencies.append(now - stamp)
        results.send((latencies, cut_off, time.process_time() - began))

    def wait_for(self, events: int, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while self.created < events and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self.latencies, self.cut_off, self.cpu = self._results.recv()
        self._process.join()


def _open_websocket(sock: socket.socket) -> None:
    """Upgrade to a websocket and send subscribe_all (a masked text frame)."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/v1/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    if b" 101 " not in answer.split(b"\r\n", 1)[0]:
        raise SystemExit(f"websocket refused: {answer[:80]!r}")
    for payload in (b'{"type":"subscribe_all"}', b'{"type":"ping"}'):
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    # The pong comes after subscribe_all took effect: from here on every event is sent.
    _read_past(sock, b'"pong"')


def _read_past(sock: socket.socket, marker: bytes) -> bytes:
    """Read (blocking) until `marker` came; what follows it in the last read."""
    seen = b""
    while marker not in seen:
        data = sock.recv(65536)
        if not data:
            raise SystemExit(f"stream ended before {marker!r}")
        seen += data
    tail = seen[seen.index(marker) + len(marker) :]
    return tail[tail.find(b"\n\n") + 2 :] if b"\n\n" in tail else b""


def _count(marker: bytes, tail: bytes, buffer: bytearray, size: int) -> int:
    """How often `marker` is in the read (buffer[:size]) or begins in `tail` (the
    previous read's end)."""
    seam = len(marker) - 1
    return buffer.count(marker, 0, size) + (tail[-seam:] + buffer[: min(seam, size)]).count(marker)


def _submitted_at(buffer: bytearray, size: int, found: int, *, websocket: bool) -> float | None:
    """The submitted_at of the created event at `found`, None if the read holds only part of it."""
    if websocket:
        start, end = buffer.rfind(b"{", 0, found), min(size, found + 65536)
    else:
        start = buffer.rfind(b"data: ", 0, found)
        start, end = (start + 6 if start >= 0 else -1), buffer.find(b"\n", found, size)
    if start < 0 or end < 0:
        return None
    try:
        event, _ = DECODER.raw_decode(buffer[start:end].decode(errors="replace"))
        stamp = event["data"]["submitted_at"].replace("Z", "+00:00")
    except (ValueError, KeyError, TypeError):
        return None  # cut by the read, or (websocket) a frame header inside it
    return datetime.fromisoformat(stamp).timestamp()


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--websocket", action="store_true", help="subscribe over /api/v1/ws")
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, dump here")
    args = parser.parse_args()
    alone: list[float] = []
    watched: list[float] = []
    cpu: dict[str, list[float]] = {"alone": [], "watched": []}
    latencies: list[float] = []
    cut_off = 0
    with tempfile.TemporaryDirectory(prefix="hostagent-events-") as tmp:
        root, port = Path(tmp), free_port()
        profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        argv = [sys.executable, *profile, "-m", "agent", "run", "--state-dir", str(root / "state")]
        argv += ["--spool-dir", str(root / "spool"), "--libvirt-uri", "test:///default"]
        argv += ["--insecure-no-auth", "--http-bind", f"127.0.0.1:{port}", "--log-level", "error"]
        agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("agent did not start") from None
                    time.sleep(0.05)
            # Interleaved: alone, watched, alone, watched, ... (medians below).
            for number in range(args.rounds):
                used = cpu_seconds(agent.pid)
                alone.append(submit_all(port, f"alone{number}", args.jobs))
                time.sleep(2)  # the jobs run out
                cpu["alone"].append(cpu_seconds(agent.pid) - used)
                subscribers = Subscribers(port, args.subscribers, websocket=args.websocket)
                time.sleep(1)
                used = cpu_seconds(agent.pid)
                watched.append(submit_all(port, f"watched{number}", args.jobs))
                subscribers.wait_for(args.jobs * args.subscribers)
                delivered = subscribers.created
                cpu["watched"].append(cpu_seconds(agent.pid) - used)
                subscribers.close()
                latencies += subscribers.latencies
                cut_off += subscribers.cut_off
                print(
                    f"round {number + 1}: alone {alone[-1]:.0f} jobs/s, watched "
                    f"{watched[-1]:.0f} jobs/s; agent CPU alone {cpu['alone'][-1]:.2f} s, "
                    f"watched {cpu['watched'][-1]:.2f} s; reader CPU {subscribers.cpu:.2f} s; "
                    f"cut off {subscribers.cut_off}; created events delivered {delivered} of "
                    f"{args.jobs * args.subscribers}; load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                time.sleep(1)
        finally:
            agent.terminate()
            agent.wait(timeout=60)

    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    share = statistics.median(w / a for w, a in zip(watched, alone, strict=True))
    kind = "websocket" if args.websocket else "SSE"
    print(f"cpus={os.cpu_count()} {kind} subscribers={args.subscribers} jobs={args.jobs}")
    print(
        f"batch submits alone {statistics.median(alone):.0f} jobs/s, with subscribers "
        f"{statistics.median(watched):.0f} jobs/s (medians of {args.rounds} interleaved rounds)"
    )
    print(f"subscribers cut off: {cut_off} (target 0) {'MET' if cut_off == 0 else 'MISSED'}")
    print(f"submits with subscribers / alone: {share:.0%} (target >= 80%) ", end="")
    print("MET" if share >= 0.8 else "MISSED")
    print(
        f"created-event latency over {len(latencies)} sampled deliveries: p50 {p50 * 1000:.0f} ms "
        f"p99 {p99 * 1000:.0f} ms (target p99 <= 1000 ms) {'MET' if p99 <= 1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
