"""A small closed/open-loop HTTP/1.1 load generator (one thread, selectors, keep-alive).

Run as its own process by bench/http.py so the load never shares the
server's interpreter. It is deliberately minimal (no TLS, no chunked
responses, Content-Length bodies only), which keeps its own CPU cost a small
fraction of the server's: the figures measure the server, not the client.

    python bench/_load.py --port P --path /x --conns 32 --seconds 5 [--rate R]
                          [--method POST --body-template FILE] [--header 'K: V']

Prints one JSON object: requests, seconds, rate, p50/p90/p99/max latency (ms)
and the count of each status code. With --rate, requests are scheduled at
fixed intervals and latency is measured from the scheduled time (so a stall
is not hidden by the client waiting: no coordinated omission).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `inspect`
# (bench/inspect.py), which dataclasses imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402


@dataclass
class _Conn:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    busy: bool = False


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _response_length(buffer: bytearray) -> int | None:
    """Total length of the first complete response in buffer, or None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    start = head.find(b"content-length:")
    length = 0
    if start >= 0:
        stop = head.find(b"\r\n", start)
        length = int(head[start + 15 : stop if stop >= 0 else len(head)])
    total = end + 4 + length
    return total if len(buffer) >= total else None


def run(args: argparse.Namespace) -> dict[str, object]:  # noqa: PLR0912 (one event loop)
    headers = "".join(f"{line}\r\n" for line in args.header)
    template = ""
    if args.body_template:
        with open(args.body_template) as handle:
            template = handle.read()
    counter = 0
    run_id = f"{time.time_ns():x}"

    def request() -> bytes:
        nonlocal counter
        counter += 1
        if not template:
            return (
                f"{args.method} {args.path} HTTP/1.1\r\nHost: {args.host}\r\n{headers}\r\n"
            ).encode()
        body = template.replace("{n}", f"{run_id}-{counter}").encode()
        return (
            f"{args.method} {args.path} HTTP/1.1\r\nHost: {args.host}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    selector = selectors.DefaultSelector()
    conns: list[_Conn] = []

    def connect() -> _Conn:
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock)
        selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    for _ in range(args.conns):
        conns.append(connect())

    latencies: list[float] = []
    codes: Counter[str] = Counter()
    interval = 1.0 / args.rate if args.rate else 0.0
    begin = time.perf_counter()
    stop_at = begin + args.seconds
    next_due = begin
    done = 0
    reconnects = 0

    def send(conn: _Conn, due: float) -> None:
        conn.started = due
        conn.busy = True
        conn.sock.sendall(request())

    while True:
        now = time.perf_counter()
        if now >= stop_at and not any(c.busy for c in conns):
            break
        if now < stop_at:
            for conn in conns:
                if conn.busy:
                    continue
                if interval:
                    if next_due > now:
                        break
                    send(conn, next_due)
                    next_due += interval
                else:
                    send(conn, now)
        timeout = max(0.0, min(next_due - time.perf_counter(), 0.05)) if interval else 0.05
        for key, _ in selector.select(timeout):
            conn = key.data
            try:
                chunk = conn.sock.recv(262144)
            except ConnectionError:
                chunk = b""
            if not chunk:
                # The server closed the connection (keep-alive limit): reopen it.
                selector.unregister(conn.sock)
                conn.sock.close()
                replacement = connect()
                reconnects += 1
                conns[conns.index(conn)] = replacement
                if conn.busy and time.perf_counter() < stop_at:
                    send(replacement, conn.started)
                continue
            conn.buffer += chunk
            total = _response_length(conn.buffer)
            if total is None:
                continue
            status = bytes(conn.buffer[9:12]).decode()
            del conn.buffer[:total]
            conn.busy = False
            finished = time.perf_counter()
            codes[status] += 1
            if finished <= stop_at:
                latencies.append((finished - conn.started) * 1000)
                done += 1
    elapsed = min(time.perf_counter(), stop_at) - begin
    for conn in conns:
        conn.sock.close()
    return {
        "requests": done,
        "seconds": round(elapsed, 3),
        "rate": round(done / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p90_ms": round(percentile(latencies, 0.90), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies, default=0.0), 3),
        "codes": dict(codes),
        "reconnects": reconnects,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body-template", help="file; {n} is replaced by a unique number")
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, help="open loop: requests per second in total")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
