"""Live events under load: 100 SSE subscribers to all events while 5,000 jobs
are batch-submitted, against the same submits with no subscriber.

Starts a real agent (HTTP, no tokens, loopback), then per phase submits
--jobs system.echo jobs as POST /api/v1/jobs/batch of 500 from one client.
The subscribers are read by one thread (selectors) as fast as they come.
Prints submits/s with and without subscribers, subscribers cut off, and the
latency of `created` events (arrival - submitted_at), p50 and p99.

Usage: python bench/events.py [--subscribers 100] [--jobs 5000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402


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


class Subscribers:
    """N SSE streams read by one thread; latencies of `created` events, streams cut off."""

    def __init__(self, port: int, count: int) -> None:
        self.latencies: list[float] = []
        self.created = 0
        self.cut_off = 0
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[socket.socket, bytes] = {}
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\n\r\n")
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self._buffers[sock] = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set() and self._buffers:
            for key, _ in self._selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                now = time.time()
                if not data:
                    self._drop(sock)
                    continue
                buffer = self._buffers[sock] + data
                *frames, self._buffers[sock] = buffer.split(b"\n\n")
                for frame in frames:
                    self._frame(frame, now)

    def _frame(self, frame: bytes, now: float) -> None:
        # Only what the figures need is parsed: the reader must not be the laggard.
        if b'"type":"created"' in frame:
            self.created += 1
            if self.created % 10:
                return  # latency sampled on every tenth delivery
        elif b'"type":"error"' in frame:
            self.cut_off += 1
            return
        else:
            return
        start = frame.find(b"data: ")
        try:
            event = json.loads(frame[start + 6 :].split(b"\r\n", 1)[0])
        except ValueError:
            return
        stamp = event["data"]["submitted_at"].replace("Z", "+00:00")
        self.latencies.append(now - datetime.fromisoformat(stamp).timestamp())

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._buffers[sock]
        sock.close()

    def wait_for(self, events: int, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while self.created < events and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in list(self._buffers):
            self._drop(sock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostagent-events-") as tmp:
        root, port = Path(tmp), free_port()
        argv = [sys.executable, "-m", "agent", "run", "--state-dir", str(root / "state")]
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
            alone = submit_all(port, "alone", args.jobs)
            time.sleep(2)  # the jobs of the first phase run out
            subscribers = Subscribers(port, args.subscribers)
            time.sleep(1)
            watched = submit_all(port, "watched", args.jobs)
            subscribers.wait_for(args.jobs * args.subscribers)
            subscribers.close()
        finally:
            agent.terminate()
            agent.wait(timeout=60)

    latencies = sorted(subscribers.latencies)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    share = watched / alone
    print(f"cpus={os.cpu_count()} subscribers={args.subscribers} jobs={args.jobs}")
    print(f"batch submits alone {alone:.0f} jobs/s, with subscribers {watched:.0f} jobs/s")
    print(
        f"subscribers cut off: {subscribers.cut_off} (target 0) "
        f"{'MET' if subscribers.cut_off == 0 else 'MISSED'}"
    )
    print(f"submits with subscribers / alone: {share:.0%} (target >= 80%) ", end="")
    print("MET" if share >= 0.8 else "MISSED")
    print(
        f"created-event latency over {len(latencies)} sampled deliveries: p50 {p50 * 1000:.0f} ms "
        f"p99 {p99 * 1000:.0f} ms (target p99 <= 1000 ms) {'MET' if p99 <= 1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
